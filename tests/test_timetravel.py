"""Time travel: state at a version, a sequence or a time = nearest snapshot + replay, equal to
a brute-force fold from version 1; history and diff between two points."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import brute_entities, log_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.cli_output import diff_output, state_output
from eventstore import AggregateNotFound, EventStore, NewEvent, StreamSettings
from projections import (
    EntitiesProjection,
    LastWriterWins,
    Point,
    ProjectionDB,
    ProjectionError,
    Runner,
    RunnerSettings,
    SnapshotPolicy,
    TimeTravel,
)

# Each example writes to a fresh aggregate id, so sharing the test's stream is safe.
EXAMPLES: Any = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}
SMALL_SNAPSHOTS = RunnerSettings(snapshots=SnapshotPolicy(every=3, keep=1000, interval=0))

patch_values = st.one_of(
    st.none(),
    st.integers(0, 9),
    st.text("xyz", max_size=2),
    st.dictionaries(st.sampled_from("pq"), st.none() | st.integers(0, 3), max_size=2),
)
steps = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob"]),
        st.dictionaries(st.sampled_from("abcd"), patch_values, max_size=3),
        st.none() | st.sampled_from(["Running", "Paused", "Done"]),
        st.booleans(),  # append with expected_version (read before write: no conflict)
    ),
    min_size=1,
    max_size=14,
)


@pytest.fixture
async def pair(nats_url: str, settings: StreamSettings) -> Any:
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        yield {"alice": alice, "bob": bob}


async def write(pair: dict[str, EventStore], agg_id: str, history: list[Any]) -> None:
    version = 0
    for who, data, status, read_first in history:
        step = ("Any", status) if status else None
        res = await pair[who].append(
            "agent",
            agg_id,
            NewEvent("Changed", data, step),
            expected_version=version if read_first else None,
        )
        version = res.version


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=steps)
async def test_state_at_every_version_equals_a_brute_force_fold(
    pair: dict[str, EventStore], tmp_path: Path, history: list[Any]
) -> None:
    """For any history, state_at(version=v) (snapshot + replay) equals folding versions 1..v."""
    alice = pair["alice"]
    agg_id = uuid.uuid4().hex[:8]
    await write(pair, agg_id, history)
    async with await ProjectionDB.open(tmp_path / "tt.db") as db:
        await Runner(alice, db, [EntitiesProjection()], settings=SMALL_SNAPSHOTS).catch_up()
        events = [e for e in await log_events(alice) if e.aggregate_id == agg_id]
        tt = TimeTravel(alice, EntitiesProjection(), db)
        for v in range(len(events) + 1):
            got = await tt.state_at("agent", agg_id, version=v)
            exp = brute_entities(events[:v]).get(("agent", agg_id))
            assert got.version == v
            if exp is None:
                assert (got.state, got.seq, got.vclock) == ({}, 0, {})
                continue
            assert (got.state, got.seq, got.vclock, got.lamport) == (
                exp["state"],
                exp["seq"],
                exp["vclock"],
                exp["lamport"],
            )
            used = got.snapshot_version or 0
            assert used == v - v % 3 and got.replayed == v - used
            by_seq = await tt.state_at("agent", agg_id, seq=exp["seq"])
            assert (by_seq.version, by_seq.state) == (v, exp["state"])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=steps)
async def test_snapshot_and_replay_equal_a_fold_from_version_1_with_lww(
    pair: dict[str, EventStore], tmp_path: Path, history: list[Any]
) -> None:
    """With a refolding resolver (LWW) too, a state from a snapshot equals one from scratch."""
    alice = pair["alice"]
    agg_id = uuid.uuid4().hex[:8]
    await write(pair, agg_id, history)
    projection = EntitiesProjection(resolver=LastWriterWins())
    async with await ProjectionDB.open(tmp_path / "lww.db") as db:
        await Runner(alice, db, [projection], settings=SMALL_SNAPSHOTS).catch_up()
        with_snapshots = TimeTravel(alice, projection, db)
        from_scratch = TimeTravel(alice, projection)
        now = await with_snapshots.current("agent", agg_id)
        for v in range(1, now.version + 1):
            a = await with_snapshots.state_at("agent", agg_id, version=v)
            b = await from_scratch.state_at("agent", agg_id, version=v)
            assert b.snapshot_version is None and b.replayed == v
            assert (a.state, a.vclock, a.lamport, a.seq) == (b.state, b.vclock, b.lamport, b.seq)
        assert (now.state, now.vclock) == (b.state, b.vclock)


async def test_at_is_the_recorded_time_of_the_log(store: EventStore, tmp_path: Path) -> None:
    """``at`` selects by the stream's recorded time: the state as it was at that moment."""
    for i in range(4):
        await store.append("agent", "t", NewEvent("Changed", {"i": i}))
        await asyncio.sleep(0.01)
    events = await log_events(store)
    tt = TimeTravel(store, EntitiesProjection())
    for ev in events:
        assert ev.recorded_at is not None
        got = await tt.state_at("agent", "t", at=ev.recorded_at)
        assert (got.version, got.state) == (ev.version, {"i": ev.version - 1})
    first = events[0].recorded_at
    assert first is not None
    before = await tt.state_at("agent", "t", at=first.replace(year=2000))
    assert (before.version, before.state) == (0, {})


async def test_the_result_names_the_snapshot_and_the_replay(
    store: EventStore, tmp_path: Path
) -> None:
    """A past state reports the snapshot it started from and how many messages it replayed;
    a snapshot of another code version is never used."""
    for i in range(250):
        await store.append("agent", "long", NewEvent("Changed", {"i": i}))
    async with await ProjectionDB.open(tmp_path / "s.db") as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        tt = TimeTravel(store, EntitiesProjection(), db)
        got = await tt.state_at("agent", "long", version=230)
        assert (got.snapshot_version, got.snapshot_seq, got.replayed) == (200, 200, 30)
        assert got.state == {"i": 229}
        got = await tt.state_at("agent", "long", version=99)
        assert (got.snapshot_version, got.replayed, got.state) == (None, 99, {"i": 98})
        newer_code = EntitiesProjection()
        newer_code.version = EntitiesProjection.version + "-next"
        got = await TimeTravel(store, newer_code, db).state_at("agent", "long", version=230)
        assert (got.snapshot_version, got.replayed, got.state) == (None, 230, {"i": 229})
        assert state_output(got)["snapshot_version"] is None
        assert set(state_output(got)) == {
            "aggregate_type",
            "aggregate_id",
            "version",
            "seq",
            "state",
            "vclock",
            "lamport",
            "snapshot_version",
            "replayed",
            "rules_version",
        }


async def test_a_replay_to_a_time_or_seq_asks_only_for_what_it_needs(
    store: EventStore, tmp_path: Path
) -> None:
    """A replay asks the server for what the target can need, not a fixed batch: to a time,
    the versions up to the next snapshot; to a sequence, no more than the sequences between
    the snapshot and the target."""
    await store.append("agent", "m", [NewEvent("Changed", {"i": i}) for i in range(1, 301)])
    async with await ProjectionDB.open(tmp_path / "m.db") as db:
        no_copy = RunnerSettings(keep_events=False)  # the replay from the log is measured
        await Runner(store, db, [EntitiesProjection()], settings=no_copy).catch_up()
        tt = TimeTravel(store, EntitiesProjection(), db)
        events = {e.version: e for e in await log_events(store)}
        targets = {
            "seq": {"seq": events[110].seq},
            "at": {"at": events[110].recorded_at},
            "seq after the last snapshot": {"seq": events[260].seq},
        }
        for name, target in targets.items():
            before = store.nc.stats["in_msgs"]
            got = await tt.state_at("agent", "m", **target)
            received = store.nc.stats["in_msgs"] - before
            expected = 110 if name != "seq after the last snapshot" else 260
            assert (got.version, got.state) == (expected, {"i": expected}), name
            assert got.snapshot_version == expected // 100 * 100, name
            # the events wanted and one past the target, the end-of-batch status, API replies
            wanted = {"seq": 10, "at": 100, "seq after the last snapshot": 60}[name]
            assert received <= wanted + 6, (name, received)


async def test_history_and_diff_between_two_points(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Diff lists what changed and the messages in between, with conflicts and quarantine."""
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        await alice.append("agent", "d", NewEvent("Created", {"name": "d", "tmp": 1}))
        await alice.append("agent", "d", NewEvent("Renamed", {"name": "dd"}))
        # bob never saw v2 and writes its key too (a conflict); alice's v4 then writes only
        # status, which bob's v3 did not: concurrent but no conflict.
        await bob.append(
            "agent", "d", NewEvent("Tagged", {"name": "dd", "tags": ["x"], "tmp": None})
        )
        await alice.append("agent", "d", NewEvent("Started", transition=("Created", "Running")))
        await alice.js.publish(f"{settings.prefix}.agent.d", b"garbage")
        tt = TimeTravel(alice, EntitiesProjection())
        d = await tt.diff("agent", "d", Point(version=1), Point())
        out = diff_output(d)
        assert out["from"]["version"] == 1 and out["to"]["version"] == 4
        assert [(c["path"], c["op"]) for c in out["changes"]] == [
            (["name"], "replace"),
            (["status"], "add"),
            (["tags"], "add"),
            (["tmp"], "remove"),
        ]
        assert out["patch"] == {"name": "dd", "tmp": None, "tags": ["x"], "status": "Running"}
        assert [(e["version"], e["outcome"]) for e in out["events"]] == [
            (2, "applied"),
            (3, "conflict"),
            (4, "applied"),
            (None, "quarantined"),
        ]
        history = await tt.history("agent", "d")
        assert [h.seq for h in history] == [1, 2, 3, 4, 5]
        part = await tt.history("agent", "d", Point(version=2), Point(seq=4))
        assert [h.seq for h in part] == [3, 4]
        with pytest.raises(ProjectionError, match="comes after"):
            await tt.diff("agent", "d", Point(version=3), Point(version=2))


async def test_bad_questions_get_clear_errors(store: EventStore, tmp_path: Path) -> None:
    """Unknown aggregates, versions beyond the end and malformed points are refused clearly."""
    await store.append("agent", "e", NewEvent("Created"))
    async with await ProjectionDB.open(tmp_path / "e.db") as db:
        tt = TimeTravel(store, EntitiesProjection(), db)
        with pytest.raises(AggregateNotFound, match="agent/nobody: no events in stream"):
            await tt.state_at("agent", "nobody", version=1)
        with pytest.raises(ProjectionError, match="has no version 5: it is at version 1"):
            await tt.state_at("agent", "e", version=5)
        with pytest.raises(AggregateNotFound, match="agent/e: projection entities has no state"):
            await tt.current("agent", "e")  # no worker has folded it yet
    with pytest.raises(ProjectionError, match="one of version, seq or at"):
        Point(version=1, seq=2)
    assert Point.parse("7") == Point(version=7)
    assert Point.parse("v:7") == Point(version=7)
    assert Point.parse("seq:12") == Point(seq=12)
    assert Point.parse("2025-01-13T10:30:00Z").at is not None
    assert Point.parse("now").latest
    with pytest.raises(ProjectionError, match="not understood"):
        Point.parse("yesterday")
