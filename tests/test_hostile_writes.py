"""The write path against what a hostile or careless client can do: raw messages on the events
subjects never decide the next version, and ``NewEvent`` refuses what JSON cannot carry.

Real parts only: a real nats-server, raw publishes with a plain nats-py client, a real
projection runner folding into a real SQLite file.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import (
    AppendResult,
    EventStore,
    InvalidEvent,
    InvalidTransition,
    MachineTable,
    NewEvent,
    Rules,
    StreamSettings,
    Transition,
)
from eventstore.events import Envelope, decode_event, encode_envelope, utcnow
from projections import EntitiesProjection, ProjectionDB, Runner, list_quarantine

# -- helpers -----------------------------------------------------------------------------------


def raw_envelope(agg_type: str, agg_id: str, version: int, **extra: Any) -> bytes:
    """A body that is a valid event in every respect, as any raw client could publish it."""
    env = Envelope(
        id=f"raw-{agg_id}-{version}-{utcnow().timestamp()}",
        type="Raw",
        aggregate_type=agg_type,
        aggregate_id=agg_id,
        version=version,
        occurred_at=utcnow(),
        producer="raw-client",
        vclock={"raw-client": version},
        **extra,
    )
    return encode_envelope(env)


async def raw_publish(store: EventStore, agg_type: str, agg_id: str, body: bytes) -> int:
    """Publish ``body`` on the aggregate's subject with no expectation header; its seq."""
    ack = await store.js.publish(store.subject(agg_type, agg_id), body)
    return int(ack.seq)


async def fold(store: EventStore, db_path: Path) -> tuple[dict[str, Any], list[Any]]:
    """Catch a real runner up; (the aggregate states by id, the quarantine records)."""
    async with await ProjectionDB.open(db_path) as db:
        runner = Runner(store, db, [EntitiesProjection()])
        await runner.catch_up()
        quarantined = await list_quarantine(db, "entities")
    import sqlite3

    con = sqlite3.connect(db_path)
    try:
        rows = con.execute(
            "SELECT aggregate_id, version, seq FROM states WHERE projection = 'entities'"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: {"version": r[1], "seq": r[2]} for r in rows}, quarantined


def assert_all_applied(results: list[AppendResult], quarantined: list[Any]) -> None:
    """No acknowledged append of the product ended up in quarantine."""
    acked = {i for r in results for i in r.ids}
    assert not [q for q in quarantined if q.event_id in acked], quarantined


# -- item 3: invalid events in the log never decide the next version ------------------------


@pytest.mark.parametrize("cold", [False, True], ids=["warm-cache", "fresh-producer"])
@pytest.mark.parametrize(
    ("case", "body_of", "real_version"),
    [
        ("stale", lambda: raw_envelope("agent", "a", 1), 2),
        ("gap", lambda: raw_envelope("agent", "a", 7), 2),
        ("garbage", lambda: b"{garbage", 2),
        ("not-an-object", lambda: b"[1, 2, 3]", 2),
        # undecodable, but its body says version 3: it occupies version 3 (the fold's rule)
        ("malformed-next", lambda: b'{"version": 3, "type": "no good"}', 3),
        ("bool-version", lambda: b'{"version": true}', 2),
    ],
)
async def test_a_raw_message_never_decides_the_next_version(
    nats_url: str,
    settings: StreamSettings,
    tmp_path: Path,
    cold: bool,
    case: str,
    body_of: Any,
    real_version: int,
) -> None:
    """After a raw stale, gap or malformed message, append goes to the aggregate's real
    version + 1 (by the fold's rule), an explicit expectation of the real version holds, and a
    runner applies every acknowledged append."""
    async with await EventStore.connect(nats_url, producer="p1", stream=settings) as store:
        results = [await store.append("agent", "a", NewEvent("Step", {"i": i})) for i in (1, 2)]
        await raw_publish(store, "agent", "a", body_of())
        writer_cm = (
            await EventStore.connect(nats_url, producer="p2", stream=settings) if cold else None
        )
        writer = writer_cm or store
        try:
            assert await writer.version("agent", "a") == real_version
            r = await writer.append("agent", "a", NewEvent("Step", {"i": 3}))
            assert r.version == real_version + 1, case
            results.append(r)
            r = await writer.append(
                "agent", "a", NewEvent("Step", {"i": 4}), expected_version=real_version + 1
            )
            assert r.version == real_version + 2
            results.append(r)
        finally:
            if writer_cm is not None:
                await writer_cm.close()
        states, quarantined = await fold(store, tmp_path / "p.db")
    assert states["a"]["version"] == real_version + 2
    assert states["a"]["seq"] == results[-1].last_seq
    assert len(quarantined) == 1
    assert_all_applied(results, quarantined)


async def test_raw_messages_between_batched_appends(store: EventStore, tmp_path: Path) -> None:
    """Raw stale and gap events arriving between group-committed appends of many writers
    never make the producer write a second version N."""
    results: list[AppendResult] = []
    for round_ in range(4):
        got = await __import__("asyncio").gather(
            *(store.append("agent", f"b{k}", NewEvent("Step", {"r": round_})) for k in range(5))
        )
        results.extend(got)
        for k in range(5):
            await raw_publish(store, "agent", f"b{k}", raw_envelope("agent", f"b{k}", 1))
            await raw_publish(store, "agent", f"b{k}", raw_envelope("agent", f"b{k}", 99))
    states, quarantined = await fold(store, tmp_path / "p.db")
    assert {k: v["version"] for k, v in states.items()} == {f"b{k}": 4 for k in range(5)}
    assert len(quarantined) == 40
    assert_all_applied(results, quarantined)


async def test_a_stale_raw_transition_does_not_move_the_state_machine(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A raw duplicate version carrying a transition is not part of the history: the producer
    checks the next transition against the state the fold knows."""
    machine = MachineTable("Queued", [("Queued", "Routed"), ("Routed", "Done")])
    async with await EventStore.connect(nats_url, producer="p1", stream=settings) as store:
        await store.set_rules(Rules(machines={"request": machine}))
        first = await store.append("request", "r", NewEvent("Routed", transition="Queued:Routed"))
        await raw_publish(
            store, "request", "r",
            raw_envelope("request", "r", 1, transition=Transition("Routed", "Done")),
        )  # fmt: skip
        async with await EventStore.connect(nats_url, producer="p2", stream=settings) as fresh:
            done = await fresh.append("request", "r", NewEvent("Done", transition="Routed:Done"))
            assert done.version == 2
            with pytest.raises(InvalidTransition):
                await fresh.append("request", "r", NewEvent("Again", transition="Routed:Done"))
        states, quarantined = await fold(store, tmp_path / "p.db")
    assert states["r"]["version"] == 2
    assert_all_applied([first, done], quarantined)


async def test_a_retried_id_found_only_outside_the_history_is_not_acknowledged(
    store: EventStore, tmp_path: Path
) -> None:
    """An explicit id that the log holds only in a quarantined (stale) raw copy is refused,
    never reported as an already stored append."""
    await store.append("agent", "c", NewEvent("Step"))
    await store.append("agent", "c", NewEvent("Step"))
    stale = msgspec.json.decode(raw_envelope("agent", "c", 1))
    stale["id"] = "req-42"
    await raw_publish(store, "agent", "c", msgspec.json.encode(stale))
    with pytest.raises(InvalidEvent, match="req-42"):
        await store.append("agent", "c", NewEvent("Step", id="req-42"))


# -- item 5: values JSON cannot carry are refused, never changed --------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"score": math.nan}, "data.score: NaN is not JSON"),
        ({"score": math.inf}, "data.score: inf is not JSON"),
        ({"x": {"y": [1, -math.inf]}}, "data.x.y[1]: -inf is not JSON"),
        ({"blob": b"ab"}, "data.blob: bytes is not JSON"),
        ({"blob": bytearray(b"ab")}, "data.blob: bytearray is not JSON"),
        ({"at": datetime(2026, 1, 1, tzinfo=UTC)}, "data.at: datetime is not JSON"),
        ({"day": date(2026, 1, 1)}, "data.day: date is not JSON"),
        ({"price": Decimal("1.5")}, "data.price: Decimal is not JSON"),
        ({"tags": {"a", "b"}}, "data.tags: set is not JSON"),
        ({"tags": frozenset({"a"})}, "data.tags: frozenset is not JSON"),
        ({"point": (1, 2)}, "data.point: tuple is not JSON"),
        ({1: "one"}, "data: key 1 (int) is not a string"),
        ({"n": {2: "two"}}, "data.n: key 2 (int) is not a string"),
        ({"big": 2**64}, "data.big: 18446744073709551616 is outside the 64-bit"),
        ({"big": -(2**63) - 1}, "data.big: -9223372036854775809 is outside the 64-bit"),
        ({"s": "\ud800"}, "data.s: string is not valid UTF-8"),
        ({"\udfff": 1}, "data: key '\\udfff' is not valid UTF-8"),
        ({"odd key.x": object()}, "data['odd key.x']: object is not JSON"),
    ],
)
def test_values_json_cannot_carry_are_refused_naming_the_path(
    data: dict[Any, Any], fragment: str
) -> None:
    """NaN, infinities, bytes, datetimes, Decimals, sets, tuples, non-string keys, integers
    outside 64 bits and unencodable strings raise InvalidEvent naming where they are."""
    with pytest.raises(InvalidEvent) as err:
        NewEvent("Changed", data)
    assert fragment in str(err.value)
    with pytest.raises(InvalidEvent) as err:
        NewEvent("Changed", metadata=data)
    assert fragment.replace("data", "metadata", 1) in str(err.value)


def test_nesting_too_deep_and_cycles_are_refused() -> None:
    """Nesting deeper than every JSON reader accepts (and a cycle) is refused, not a crash."""
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(300):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidEvent, match="nested deeper than"):
        NewEvent("Changed", deep)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidEvent, match="nested deeper than"):
        NewEvent("Changed", {"x": loop})


def test_the_edges_of_what_json_carries_are_kept_exactly() -> None:
    """64-bit extremes, -0.0, unicode, empty containers and null values round-trip unchanged."""
    data = {
        "min": -(2**63),
        "max": 2**63 - 1,
        "zero": -0.0,
        "tiny": 5e-324,
        "huge": 1.7976931348623157e308,
        "text": "żółw 🐢 \u2028",
        "nested": {"list": [[], {}, None, True, False, 0]},
        "drop": None,
    }
    ev = NewEvent("Changed", data, metadata={"actor": "me", "n": [1.5]})
    back = decode_event(encode_envelope(_envelope_of(ev)))
    assert back.data == data and back.metadata == {"actor": "me", "n": [1.5]}
    assert math.copysign(1, back.data["zero"]) == -1


# -- item 15: every wrong-typed argument is an InvalidEvent ----------------------------------------


def _envelope_of(ev: NewEvent) -> Envelope:
    """The envelope a producer would build of ``ev`` (as the committer does)."""
    return Envelope(
        id=ev.with_id().id or "",
        type=ev.type,
        aggregate_type="agent",
        aggregate_id="a",
        version=1,
        schema=ev.schema,
        occurred_at=utcnow(),
        producer="p",
        lamport=1,
        vclock={"p": 1},
        transition=ev.step,
        data=ev.data,
        causation_id=ev.causation_id,
        correlation_id=ev.correlation_id,
        metadata=ev.metadata,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transition": 5},
        {"transition": ("A",)},
        {"transition": ("A", 5)},
        {"transition": ["A", "B", "C"]},
        {"transition": Transition(5, 6)},  # type: ignore[arg-type]
        {"transition": Transition("A", "\x00")},
        {"transition": "A:\ud800"},
        {"schema": True},
        {"schema": 2**63},
        {"schema": 1.0},
        {"id": 5},
        {"id": "\ud800"},
        {"causation_id": 5},
        {"correlation_id": b"x"},
        {"correlation_id": "\ud800"},
        {"data": [1]},
        {"metadata": "x"},
    ],
)
def test_wrong_typed_arguments_are_invalid_events(kwargs: dict[str, Any]) -> None:
    """Each wrong-typed or unencodable NewEvent argument raises InvalidEvent, nothing else."""
    with pytest.raises(InvalidEvent):
        NewEvent("Changed", **kwargs)
    with pytest.raises(InvalidEvent):
        NewEvent(5)  # type: ignore[arg-type]


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(max_size=8),
    st.datetimes(),
    st.decimals(allow_nan=True),
    st.just(object()),
    st.builds(Transition, st.text(max_size=3), st.text(min_size=1, max_size=3)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.frozensets(st.integers(), max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_names = st.text(min_size=1, max_size=3)
_plausible = {  # values of the right type (most of them valid), each mixed with anything
    "data": st.dictionaries(st.text(max_size=4), _json, max_size=4),
    "metadata": st.dictionaries(st.text(max_size=4), _json, max_size=4),
    "transition": st.one_of(st.none(), st.tuples(_names, _names), _names.map(lambda n: f"{n}:B")),
    "id": st.one_of(st.none(), st.text(min_size=1, max_size=12)),
    "schema": st.integers(min_value=-2, max_value=2**64),
    "causation_id": st.one_of(st.none(), st.text(max_size=8)),
    "correlation_id": st.one_of(st.none(), st.text(max_size=8)),
}
_arguments = st.fixed_dictionaries(
    {}, optional={name: st.one_of(good, good, good, _values) for name, good in _plausible.items()}
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_type=st.one_of(st.just("Changed"), st.just("Changed"), _values), kwargs=_arguments)
def test_any_arguments_give_an_invalid_event_or_a_lossless_event(
    event_type: Any, kwargs: dict[str, Any]
) -> None:
    """Whatever the arguments, NewEvent raises InvalidEvent or builds an event whose wire
    encoding decodes to exactly the values given (so the projection can read it back)."""
    try:
        ev = NewEvent(event_type, **kwargs)
    except InvalidEvent:
        return
    back = decode_event(encode_envelope(_envelope_of(ev)))
    assert back.type == event_type
    assert back.data == ev.data and back.metadata == ev.metadata
    assert (back.causation_id, back.correlation_id, back.schema) == (
        ev.causation_id,
        ev.correlation_id,
        ev.schema,
    )
    assert back.transition == ev.step


# -- the rest of the write path: what else would make an acknowledged event unreadable -------


@pytest.mark.parametrize(
    "context",
    [{"a": True}, {"a": 2**64}, {"a": -1}, {"a": 1.5}, {1: 2}, {"\ud800": 1}, "a:1", [("a", 1)]],
)
async def test_a_context_that_is_not_a_vector_clock_is_an_invalid_event(
    store: EventStore, context: Any
) -> None:
    """A causal context must be {producer: counter} with 64-bit counters; anything else is
    refused before anything is written (it would make the event unreadable)."""
    with pytest.raises(InvalidEvent, match="context"):
        await store.append("agent", "ctx", NewEvent("Step"), context=context)
    assert await store.head() == 0


async def test_a_lamport_time_at_the_limit_does_not_stop_the_producer(
    store: EventStore, tmp_path: Path
) -> None:
    """A raw event with the largest Lamport time is not taken into the producer's clock (it
    is above the observable ceiling): later appends are written with a clock every reader
    accepts, and every one is applied."""
    first = await store.append("agent", "l", NewEvent("Step"))
    await raw_publish(store, "agent", "l", raw_envelope("agent", "l", 2, lamport=2**63 - 1))
    same = await store.append("agent", "l", NewEvent("Step"), expected_version=2)
    other = await store.append("agent", "other", NewEvent("Step"))
    assert same.version == 3 and same.lamport < 2**62 and other.lamport < 2**62
    states, quarantined = await fold(store, tmp_path / "p.db")
    assert states["l"]["version"] == 3 and quarantined == []
    assert_all_applied([first, same, other], quarantined)


_tokens = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b'"version"', b"1", b"2", b"-0", b"1e5",
     b"true", b"null", b" ", b"\\ud800", b"\\u00e9", b"\xff", b"\xc3\xa9", b"\x00", b"a", b"01"]
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(body=st.one_of(st.binary(max_size=40), st.lists(_tokens, max_size=14).map(b"".join)))
def test_the_version_rule_reads_a_body_as_a_full_json_parse_does(body: bytes) -> None:
    """The producer's cheap version claim equals what a full parse of the body says (the
    projection's reading of a quarantined body), for any bytes."""
    from eventstore.versions import claimed_version
    from projections.fold import loose_body

    parsed = loose_body(body)
    version = parsed.get("version") if isinstance(parsed, dict) else None
    assert claimed_version(body) == (version if type(version) is int else None)
