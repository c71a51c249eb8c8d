"""Wire format v1: encoding, validation of what arrives from any publisher, UUIDv7 ids."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from eventstore import Envelope, InvalidEvent, NewEvent, Transition, uuid7
from eventstore.events import decode_event, encode_envelope
from eventstore.ids import is_uuid7


def _envelope(**over: object) -> Envelope:
    base: dict[str, object] = {
        "id": uuid7(),
        "type": "Started",
        "aggregate_type": "agent",
        "aggregate_id": "asst_qa",
        "version": 1,
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "producer": "agent-1",
        "lamport": 3,
        "vclock": {"agent-1": 3},
        "transition": Transition("Created", "Starting"),
        "data": {"model": "gpt-4"},
    }
    base.update(over)
    return Envelope(**base)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_takes_seq_from_the_log() -> None:
    """An encoded envelope decodes to the same fields; seq and recorded_at come from the log."""
    env = _envelope(causation_id="c1", correlation_id="r1", metadata={"actor": "kitenga"})
    body = encode_envelope(env)
    wire = msgspec.json.decode(body)
    assert wire["transition"] == {"from": "Created", "to": "Starting"}
    assert wire["occurred_at"] == "2026-01-01T00:00:00Z"
    at = datetime(2026, 2, 2, tzinfo=UTC)
    ev = decode_event(body, seq=42, recorded_at=at)
    assert (ev.seq, ev.recorded_at) == (42, at)
    assert msgspec.structs.asdict(ev) | {"seq": 0, "recorded_at": None} == msgspec.structs.asdict(
        env
    ) | {"seq": 0, "recorded_at": None}


def test_body_seq_is_never_trusted() -> None:
    """A seq written into the body by a publisher is replaced by the log's."""
    body = msgspec.json.encode(msgspec.json.decode(encode_envelope(_envelope())) | {"seq": 999})
    assert decode_event(body, seq=7).seq == 7


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"version": 0}, "version"),
        ({"aggregate_type": "Bad Type"}, "aggregate_type"),
        ({"type": "has space"}, "type"),
        ({"producer": ""}, "producer"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "occurred_at"),
        ({"vclock": {"a": -1}}, "vclock"),
        ({"data": [1, 2]}, "data"),
        ({"transition": {"from": "A"}}, "transition"),
    ],
)
def test_malformed_bodies_raise_invalid_event(patch: dict[str, object], fragment: str) -> None:
    """Each malformed field is refused with an InvalidEvent naming it."""
    body = msgspec.json.decode(encode_envelope(_envelope()))
    body.update(patch)
    with pytest.raises(InvalidEvent, match=fragment):
        decode_event(msgspec.json.encode(body))


def test_garbage_is_invalid_event() -> None:
    """Bytes that are not JSON are an InvalidEvent, not a crash."""
    with pytest.raises(InvalidEvent, match="malformed"):
        decode_event(b"\xff not json", seq=5)


def test_new_event_validation() -> None:
    """NewEvent refuses bad types, non-object data, bad ids and malformed transitions."""
    with pytest.raises(InvalidEvent, match="event type"):
        NewEvent("no spaces allowed")
    with pytest.raises(InvalidEvent, match="JSON object"):
        NewEvent("Ok", [1])  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="whitespace"):
        NewEvent("Ok", id="a b")
    with pytest.raises(InvalidEvent, match="FROM:TO"):
        NewEvent("Ok", transition="Created")
    assert NewEvent("Ok", transition=("A", "B")).step == Transition("A", "B")
    assert NewEvent("Ok", transition="A:B").step == Transition("A", "B")


def test_uuid7_ids_are_valid_unique_and_increasing() -> None:
    """Ids are RFC 9562 version 7 and strictly increase within a process."""
    ids = [uuid7() for _ in range(5000)]
    assert all(is_uuid7(i) for i in ids)
    assert all(uuid.UUID(i).variant == uuid.RFC_4122 for i in ids[:10])
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aggregate_type", "agent\n"),
        ("type", "Started\n"),
        ("producer", "agent-1\n"),
        ("aggregate_type", "Agent"),
        ("producer", ".hidden"),
        ("type", "x" * 129),
    ],
)
def test_names_are_matched_whole_every_time(field: str, value: str) -> None:
    """Type, aggregate type and producer must match their patterns entirely (a trailing
    newline too is refused), also after valid names were seen and remembered."""
    body = msgspec.json.decode(encode_envelope(_envelope()))
    decode_event(msgspec.json.encode(body))  # the valid names, now remembered
    body[field] = value
    with pytest.raises(InvalidEvent, match=field):
        decode_event(msgspec.json.encode(body))
    with pytest.raises(InvalidEvent, match=field):
        decode_event(msgspec.json.encode(body))  # never remembered as valid


def test_a_forked_child_never_reuses_its_parents_random_bits() -> None:
    """uuid7 draws OS randomness in blocks; a forked child starts a block of its own, so its
    next id never repeats the random bits of the parent's next id."""
    uuid7()  # the parent holds a block of random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next id and leave at once
        os.write(write, uuid7().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    parent = uuid7()
    assert is_uuid7(child)
    assert child[-12:] != parent[-12:]
