"""Upcasting and typed events against a real server: every read path and every fold sees the
current schema; a failing or missing upcaster and a payload that does not match its Struct are
quarantined (projections) or skipped through ``on_malformed`` (readers)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers_projections import stored_states

from eventstore import (
    UPCASTERS,
    ConfigError,
    Event,
    EventStore,
    InvalidEvent,
    Malformed,
    NewEvent,
    UpcastFailed,
    export_events,
    typed_event,
    upcaster,
)
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    TimeTravel,
    list_quarantine,
    rebuild,
    verify,
)


# -- the registrations these tests use (type names of their own: the registry is global) ----
@upcaster("UpTitled", 1)
def titled_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 called the name ``title``."""
    out = {k: v for k, v in data.items() if k != "title"}
    out["name"] = data["title"]
    return out


@upcaster("UpChain", 1)
def chain_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"count": data["n"]}


@upcaster("UpChain", 2)
def chain_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "unit": data.get("unit", "each")}


@upcaster("UpFlaky", 1)
def flaky_v1(data: dict[str, Any]) -> dict[str, Any]:
    if "bad" in data:
        raise KeyError("bad")
    return {**data, "v": 2}


@upcaster("UpGappy", 2)  # no step from schema 1
def gappy_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data


@typed_event("UpTyped")
class Typed(msgspec.Struct, frozen=True):
    name: str
    count: int = 0


async def append_each(store: EventStore, agg_id: str, events: list[NewEvent]) -> None:
    for ev in events:
        await store.append("doc", agg_id, [ev])


def mixed(old: bool) -> list[NewEvent]:
    """Three events of one type: with ``old``, the first and last written at schema 1."""
    if old:
        return [
            NewEvent("UpTitled", {"title": "one"}, schema=1),
            NewEvent("UpTitled", {"name": "two", "size": 1}),
            NewEvent("UpTitled", {"title": "three"}, schema=1),
        ]
    return [
        NewEvent("UpTitled", {"name": "one"}),
        NewEvent("UpTitled", {"name": "two", "size": 1}),
        NewEvent("UpTitled", {"name": "three"}),
    ]


def view(events: list[Event]) -> list[tuple[int, int, dict[str, Any]]]:
    return [(ev.version, ev.schema, ev.data) for ev in events]


def test_producers_write_the_current_schema() -> None:
    """A NewEvent without a schema carries its type's current one (1 for unregistered types);
    an explicit schema is kept."""
    assert NewEvent("UpTitled", {"name": "x"}).schema == 2
    assert NewEvent("UpChain", {"count": 1}).schema == 3
    assert NewEvent("UpUnregistered").schema == 1
    assert NewEvent("UpTitled", {"title": "x"}, schema=1).schema == 1
    with pytest.raises(InvalidEvent, match="schema"):
        NewEvent("UpTitled", schema=-1)


def test_registering_two_upcasters_for_one_step_is_refused() -> None:
    """A second, different function for the same (type, schema) is a ConfigError naming both."""
    with pytest.raises(ConfigError, match="two upcasters for UpTitled schema 1"):
        UPCASTERS.register("UpTitled", 1, lambda d: d)
    with pytest.raises(ConfigError, match="not a valid event type"):
        UPCASTERS.register("no spaces", 1, lambda d: d)
    UPCASTERS.register("UpTitled", 1, titled_v1)  # the same one again (a re-import): fine
    with pytest.raises(ConfigError, match="register the upcasters first"):
        UPCASTERS.register("UpTyped", 1, lambda d: d)  # Typed describes schema 1
    assert NewEvent("UpTyped", {"name": "x"}).schema == 1


async def test_a_mixed_schema_log_reads_and_folds_like_an_all_current_one(
    store: EventStore, tmp_path: Path
) -> None:
    """Schema-1 and schema-2 events of one type give the same events on every read path and
    the same state in the runner, rebuild, verify and time travel as an all-schema-2 log;
    export keeps the stored form."""
    await append_each(store, "old", mixed(old=True))
    await append_each(store, "new", mixed(old=False))
    expected = view([ev async for ev in store.read("doc", "new")])
    assert [s for _, s, _ in expected] == [2, 2, 2]
    assert view([ev async for ev in store.read("doc", "old")]) == expected
    assert view([ev async for ev in store.read_by_seq("doc", "old")]) == expected
    start = datetime(2000, 1, 1, tzinfo=UTC)
    assert view([ev async for ev in store.read_by_time("doc", "old", start)]) == expected
    everything = [ev async for ev in store.read_all(aggregate_type="doc")]
    assert view([ev for ev in everything if ev.aggregate_id == "old"]) == expected
    followed: list[Event] = []
    async with asyncio.timeout(10):
        async for ev in store.follow(1, "doc", "old"):
            followed.append(ev)
            if len(followed) == 3:
                break
    assert view(followed) == expected

    db_path = tmp_path / "p.db"
    async with await ProjectionDB.open(db_path) as db:
        await Runner(store, db, [EntitiesProjection()]).run(follow=False)
        assert await list_quarantine(db, "entities") == []
        assert (await verify(store, db, [EntitiesProjection()])).ok
        tt = TimeTravel(store, EntitiesProjection(), db)
        for version in (1, 2, 3):
            old = await tt.state_at("doc", "old", version=version)
            new = await tt.state_at("doc", "new", version=version)
            assert old.state == new.state, version
        entries = await tt.history("doc", "old")
        assert [e.data for e in entries] == [d for _, _, d in expected]
    states = stored_states(db_path)
    assert states[("doc", "old")]["state"] == states[("doc", "new")]["state"]
    assert states[("doc", "old")]["state"] == {"name": "three", "size": 1}
    rebuilt = tmp_path / "r.db"
    await rebuild(store, rebuilt, [EntitiesProjection()])
    assert stored_states(rebuilt)[("doc", "old")]["state"] == {"name": "three", "size": 1}

    out = io.BytesIO()
    await export_events(store, out, aggregate_type="doc", aggregate_id="old")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["schema"], e["data"]) for e in lines] == [
        (1, {"title": "one"}),
        (2, {"name": "two", "size": 1}),
        (1, {"title": "three"}),
    ]


async def test_a_chain_brings_every_old_schema_to_the_current_one(store: EventStore) -> None:
    """1 -> 2 -> 3: an event of schema 1 and one of schema 2 both read as schema 3."""
    await append_each(
        store,
        "c",
        [
            NewEvent("UpChain", {"n": 4}, schema=1),
            NewEvent("UpChain", {"count": 5, "unit": "box"}, schema=2),
            NewEvent("UpChain", {"count": 6, "unit": "kg"}),
        ],
    )
    got = [(ev.schema, ev.data) async for ev in store.read("doc", "c")]
    assert got == [
        (3, {"count": 4, "unit": "each"}),
        (3, {"count": 5, "unit": "box"}),
        (3, {"count": 6, "unit": "kg"}),
    ]


async def test_a_failing_or_missing_upcaster_is_quarantined_and_the_rest_folds(
    store: EventStore, tmp_path: Path
) -> None:
    """An upcaster that raises, a missing step and a schema newer than the latest known are
    quarantined as ``upcast``: the aggregate takes the version, later events fold; readers
    hand the events to ``on_malformed`` with kind ``upcast`` and go on."""
    await append_each(
        store,
        "f",
        [
            NewEvent("UpFlaky", {"a": 1}, schema=1),
            NewEvent("UpFlaky", {"bad": 1}, schema=1),
            NewEvent("UpGappy", {"g": 1}, schema=1),
            NewEvent("UpTitled", {"name": "future"}, schema=9),
            NewEvent("UpFlaky", {"b": 2}),
        ],
    )
    skipped: list[Malformed] = []
    read = [ev.version async for ev in store.read("doc", "f", on_malformed=skipped.append)]
    assert read == [1, 5]
    assert [(m.kind, m.seq) for m in skipped] == [("upcast", s) for s in (2, 3, 4)]
    assert "KeyError" in skipped[0].reason and "schema 1 to 2" in skipped[0].reason
    assert "no upcaster registered for UpGappy from schema 1 to 2" in skipped[1].reason
    assert "newer than the latest" in skipped[2].reason
    skipped.clear()
    assert len([ev async for ev in store.read_all(on_malformed=skipped.append)]) == 2
    assert [m.kind for m in skipped] == ["upcast"] * 3

    def stop(m: Malformed) -> None:
        raise InvalidEvent(m.reason)

    with pytest.raises(InvalidEvent, match="KeyError"):
        [ev async for ev in store.read("doc", "f", on_malformed=stop)]

    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        await Runner(store, db, [EntitiesProjection()]).run(follow=False)
        rows = await list_quarantine(db, "entities")
        assert [(r.seq, r.kind) for r in rows] == [(2, "upcast"), (3, "upcast"), (4, "upcast")]
        assert "KeyError" in rows[0].reason
        report = await verify(store, db, [EntitiesProjection()])  # it names what to fix
        assert [m.detail.split(":")[0] for m in report.mismatches] == [
            f"the valid event at seq {seq} is quarantined as upcast" for seq in (2, 3, 4)
        ]
    state = stored_states(tmp_path / "p.db")[("doc", "f")]
    assert state["version"] == 5
    assert state["state"] == {"a": 1, "v": 2, "b": 2}


async def test_typed_events_round_trip_and_a_malformed_payload_is_refused(
    store: EventStore, tmp_path: Path
) -> None:
    """A Struct as data is stored as its fields and ``typed()`` gives it back; a payload that
    does not match (written by a raw client) is quarantined as ``typed`` and raises elsewhere."""
    await store.append("doc", "t", [NewEvent.of(Typed("a", 2))])
    await store.append("doc", "t", [NewEvent("UpTyped", Typed("b"))])  # type: ignore[arg-type]
    with pytest.raises(UpcastFailed, match="does not match Typed"):
        NewEvent("UpTyped", {"name": 5})
    with pytest.raises(InvalidEvent, match="not registered as a typed event"):
        NewEvent.of(msgspec.defstruct("Loose", ["x"])(1))
    body = {
        "id": str(uuid.uuid4()), "type": "UpTyped", "aggregate_type": "doc",
        "aggregate_id": "t", "version": 3, "schema": 1, "producer": "raw",
        "occurred_at": "2026-01-01T00:00:00Z", "data": {"name": 5},
    }  # fmt: skip
    await store.js.publish(store.subject("doc", "t"), json.dumps(body).encode())
    await store.append("doc", "t", [NewEvent.of(Typed("d", 4))])

    events = [ev async for ev in store.read("doc", "t", on_malformed=lambda m: None)]
    assert [ev.typed() for ev in events] == [Typed("a", 2), Typed("b", 0), Typed("d", 4)]
    assert events[0].data == {"name": "a", "count": 2}
    skipped: list[Malformed] = []
    [ev async for ev in store.read_by_seq("doc", "t", on_malformed=skipped.append)]
    assert [(m.seq, m.kind) for m in skipped] == [(3, "typed")]
    with pytest.raises(InvalidEvent, match="no typed data"):
        msgspec.structs.replace(events[0], type="UpTitled").typed()

    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        await Runner(store, db, [EntitiesProjection()]).run(follow=False)
        rows = await list_quarantine(db, "entities")
        assert [(r.seq, r.kind) for r in rows] == [(3, "typed")]
        assert "does not match Typed" in rows[0].reason
    state = stored_states(tmp_path / "p.db")[("doc", "t")]
    assert (state["version"], state["state"]) == (4, {"name": "d", "count": 4})
