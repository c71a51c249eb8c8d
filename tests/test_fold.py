"""The fold rules every reader shares: versions, quarantine, state machines, clocks, conflicts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from eventstore import Envelope, Event, Machines, Transition
from eventstore.events import encode_envelope
from eventstore.reader import StoredMessage
from projections import (
    ConflictContext,
    ConflictRecord,
    EntitiesProjection,
    Folder,
    FunctionResolver,
    LastWriterWins,
    Projection,
    Resolution,
    SourcePriority,
)
from projections.fold import MessageDecoder, Rejected, concurrent, merge_clock

PREFIX = "ev"
KEY = ("agent", "a1")
T0 = datetime(2025, 1, 13, 10, 30, tzinfo=UTC)


def body(
    version: int,
    producer: str = "p",
    vclock: dict[str, int] | None = None,
    data: dict[str, Any] | None = None,
    transition: tuple[str, str] | None = None,
    lamport: int | None = None,
    agg_id: str = "a1",
) -> bytes:
    return encode_envelope(
        Envelope(
            id=f"{producer}-{version}-{agg_id}",
            type="Changed",
            aggregate_type="agent",
            aggregate_id=agg_id,
            version=version,
            occurred_at=T0,
            producer=producer,
            lamport=lamport if lamport is not None else version,
            vclock=vclock if vclock is not None else {producer: version},
            transition=Transition(*transition) if transition else None,
            data=data or {},
        )
    )


def msg(seq: int, data: bytes, subject: str = f"{PREFIX}.agent.a1") -> StoredMessage:
    return StoredMessage(seq, subject, data, T0, None)


def feed(folder: Folder, messages: list[StoredMessage]) -> tuple[Any, list[Any]]:
    decoder = MessageDecoder(PREFIX)
    agg = folder.new(KEY)
    outs = [folder.feed(agg, m, KEY, decoder) for m in messages]
    return agg, outs


def test_clean_history_applies_every_event_and_merges_clocks() -> None:
    """Data merges, a transition sets status, the clock is the merge of every event's clock."""
    agg, outs = feed(
        Folder(EntitiesProjection()),
        [
            msg(1, body(1, data={"a": 1, "n": {"x": 1}}, vclock={"p": 1, "q": 4}, lamport=7)),
            msg(
                5,
                body(
                    2,
                    data={"n": {"y": 2}},
                    transition=("Created", "Running"),
                    vclock={"p": 2, "q": 4},
                    lamport=3,
                ),
            ),
        ],
    )
    assert outs == [None, None]
    assert (agg.version, agg.seq, agg.lamport) == (2, 5, 7)
    assert agg.state == {"a": 1, "n": {"x": 1, "y": 2}, "status": "Running"}
    assert agg.clock() == {"p": 2, "q": 4}


def test_gaps_and_duplicates_are_quarantined_and_never_applied() -> None:
    """A version that is not N+1 is quarantined (gap or duplicate) and the aggregate stays."""
    agg, outs = feed(
        Folder(EntitiesProjection()),
        [
            msg(1, body(1, data={"a": 1})),
            msg(2, body(3, data={"a": 3})),
            msg(3, body(1, data={"a": 99})),
            msg(4, body(2, data={"a": 2})),
        ],
    )
    assert [o.kind if o else None for o in outs] == [None, "gap", "duplicate", None]
    assert "versions 2..2 are missing" in outs[1].reason
    assert (agg.version, agg.state) == (2, {"a": 2})


def test_undecodable_messages_take_their_version_only_if_they_say_so() -> None:
    """Garbage keeps the aggregate where it is; an invalid body that says version N+1 moves it."""
    invalid_but_versioned = msgspec.json.encode({"version": 2, "type": "bad type!"})
    agg, outs = feed(
        Folder(EntitiesProjection()),
        [
            msg(1, body(1, data={"a": 1})),
            msg(2, b"\x00garbage"),
            msg(3, invalid_but_versioned),
            msg(4, body(3, data={"b": 1})),
            msg(5, body(4, agg_id="other")),
        ],
    )
    assert [o.kind if o else None for o in outs] == [
        None,
        "undecodable",
        "undecodable",
        None,
        "undecodable",
    ]
    assert "stored on the subject of agent/a1" in outs[4].reason
    # The last one is not a1's event, but it sits on a1's subject saying version 4.
    assert (agg.version, agg.seq, agg.state) == (4, 5, {"a": 1, "b": 1})


def test_state_machine_violations_are_quarantined_and_the_machine_state_kept() -> None:
    """A refused transition is quarantined; the next valid one is checked from the old state."""
    machines = Machines()
    machines.declare("agent", "Created", [("Created", "Running"), ("Running", "Done")])
    agg, outs = feed(
        Folder(EntitiesProjection(), machines),
        [
            msg(1, body(1, transition=("Created", "Done"))),
            msg(2, body(2, transition=("Created", "Running"))),
            msg(3, body(3, transition=("Running", "Done"))),
        ],
    )
    assert [o.kind if o else None for o in outs] == ["transition", None, None]
    assert (agg.version, agg.state, agg.machine_state) == (3, {"status": "Done"}, "Done")


class Fussy(Projection[dict[str, Any]]):
    name = "fussy"

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        if event.data.get("boom"):
            raise ValueError("no booms")
        return {**state, **event.data}


def test_apply_raising_quarantines_the_event_and_leaves_the_state() -> None:
    """An exception in ``apply`` quarantines the event; the state and clock stay as they were."""
    agg, outs = feed(
        Folder(Fussy()),
        [
            msg(1, body(1, data={"a": 1})),
            msg(2, body(2, data={"boom": True}, lamport=50)),
            msg(3, body(3, data={"b": 2})),
        ],
    )
    assert outs[1] == Rejected("apply", "apply failed: ValueError: no booms")
    assert (agg.version, agg.state, agg.lamport) == (3, {"a": 1, "b": 2}, 3)
    assert agg.clock() == {"p": 3}


def _conflicting() -> list[StoredMessage]:
    # v1 by alice; v2 by bob, who never saw v1 (concurrent, both write owner); v3 by alice
    # again, concurrent too (both write b).
    return [
        msg(1, body(1, "alice", {"alice": 1}, {"owner": "alice", "a": 1}, lamport=5)),
        msg(2, body(2, "bob", {"bob": 1}, {"owner": "bob", "b": 1}, lamport=2)),
        msg(3, body(3, "alice", {"alice": 2}, {"b": 2, "c": 1}, lamport=6)),
    ]


def test_log_order_resolution_records_both_events_and_clocks() -> None:
    """By default the later event in the log wins; the conflict names both events and clocks."""
    agg, outs = feed(Folder(EntitiesProjection()), _conflicting())
    assert outs[0] is None
    first = outs[1]
    assert isinstance(first, ConflictRecord)
    assert (first.event_id, first.previous_id) == ("bob-2-a1", "alice-1-a1")
    assert (first.event_vclock, first.previous_vclock) == ({"bob": 1}, {"alice": 1})
    assert (first.resolver, first.winner) == ("log-order", "event")
    assert isinstance(outs[2], ConflictRecord)
    assert agg.state == {"owner": "bob", "a": 1, "b": 2, "c": 1}
    assert agg.clock() == {"alice": 2, "bob": 1}


def test_last_writer_wins_by_lamport_then_producer() -> None:
    """LWW refolds so that the larger (Lamport, producer) takes effect last."""
    agg, outs = feed(Folder(EntitiesProjection(resolver=LastWriterWins())), _conflicting())
    assert [o.winner for o in outs[1:]] == ["previous", "event"]
    assert agg.state["owner"] == "alice"  # alice's Lamport 5 beats bob's 2
    assert agg.state == {"owner": "alice", "a": 1, "b": 2, "c": 1}


def test_source_priority_prefers_the_listed_producer() -> None:
    """Source priority makes bob's change win over alice's whatever the log order."""
    agg, outs = feed(Folder(EntitiesProjection(resolver=SourcePriority(["bob"]))), _conflicting())
    assert [o.winner for o in outs[1:]] == ["event", "previous"]
    assert agg.state["owner"] == "bob"


def test_user_function_resolver_decides_and_its_name_is_recorded() -> None:
    """A user function may build the resolved state itself; its decision is recorded."""

    def keep_both(ctx: ConflictContext) -> Resolution:
        owners = sorted({ctx.current.get("owner", ""), ctx.event.data.get("owner", "")} - {""})
        return ctx.merged({**ctx.apply(ctx.current, ctx.event), "owner": "+".join(owners)})

    resolver = FunctionResolver(keep_both, name="keep-both")
    agg, outs = feed(Folder(EntitiesProjection(resolver=resolver)), _conflicting())
    assert [(o.resolver, o.winner) for o in outs[1:]] == [("keep-both", "merged")] * 2
    assert agg.state["owner"] == "alice+bob"


def test_a_failing_resolver_quarantines_the_event() -> None:
    """A resolver that raises quarantines the conflicting event as a conflict failure."""

    def bad(ctx: ConflictContext) -> str:
        return "neither"

    agg, outs = feed(Folder(EntitiesProjection(resolver=FunctionResolver(bad))), _conflicting())
    assert isinstance(outs[1], Rejected) and outs[1].kind == "conflict"
    assert "returned 'neither'" in outs[1].reason
    # bob's change never took effect, so alice's next one follows her own: no conflict.
    assert outs[2] is None
    assert agg.version == 3 and agg.state == {"owner": "alice", "a": 1, "b": 2, "c": 1}


def test_a_writer_that_read_the_previous_event_does_not_conflict() -> None:
    """An event whose clock dominates the previous event's clock is no conflict."""
    agg, outs = feed(
        Folder(EntitiesProjection()),
        [msg(1, body(1, "alice", {"alice": 1})), msg(2, body(2, "bob", {"alice": 1, "bob": 1}))],
    )
    assert outs == [None, None]
    assert agg.clock() == {"alice": 1, "bob": 1}


def test_clock_helpers() -> None:
    """Concurrency needs entries both ways; merging never mutates and keeps the max."""
    assert concurrent({"a": 1}, {"b": 1})
    assert not concurrent({"a": 1}, {"a": 2, "b": 1})
    assert not concurrent({"a": 2}, {"a": 2})
    assert not concurrent({"a": 2, "b": 0}, {"a": 1})
    a = {"a": 1}
    assert merge_clock(a, {"a": 3, "b": 1}) == {"a": 3, "b": 1} and a == {"a": 1}
    assert merge_clock(a, {"a": 1}) is a
    assert merge_clock(None, {"z": 0, "y": 2}) == {"y": 2}


def test_a_projection_needs_a_usable_name() -> None:
    """A projection without a storable name is refused when it is made."""
    from eventstore import ConfigError

    class Nameless(Projection[dict[str, Any]]):
        pass

    with pytest.raises(ConfigError, match="needs a name"):
        Nameless()
