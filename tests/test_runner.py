"""The runner against a real nats-server and real SQLite files: batches, checkpoints, snapshots,
quarantine, conflicts, read models, code versions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers_projections import brute_entities, log_events, scalar, stored_states

from eventstore import Event, EventStore, NewEvent, StreamSettings
from eventstore.events import Envelope, encode_envelope, utcnow
from projections import (
    Change,
    EntitiesProjection,
    Projection,
    ProjectionDB,
    ProjectionError,
    Runner,
    RunnerSettings,
    SnapshotPolicy,
    Statement,
    TimeTravel,
    list_conflicts,
    list_quarantine,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "projections.db"


async def catch_up(
    store: EventStore,
    db_path: Path,
    *projections: Projection[Any],
    settings: RunnerSettings | None = None,
) -> Runner:
    async with await ProjectionDB.open(db_path) as db:
        runner = Runner(store, db, list(projections) or [EntitiesProjection()], settings=settings)
        await runner.catch_up()
        return runner


def assert_matches_brute_force(db_path: Path, events: list[Event]) -> None:
    expected = brute_entities(events)
    stored = stored_states(db_path)
    assert set(stored) == set(expected)
    for key, exp in expected.items():
        got = stored[key]
        assert (got["version"], got["seq"], got["state"], got["vclock"], got["lamport"]) == (
            exp["version"],
            exp["seq"],
            exp["state"],
            exp["vclock"],
            exp["lamport"],
        ), key


async def test_catch_up_equals_a_brute_force_fold_with_conflicts(
    nats_url: str, settings: StreamSettings, db_path: Path
) -> None:
    """Every aggregate's state, version, clock and Lamport time equal a fold of its history,
    and every concurrent write is recorded as a conflict exactly once."""
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        for i in range(120):
            writer = alice if i % 7 else bob
            await writer.append(
                "agent",
                f"a{i % 5}",
                NewEvent(
                    "Changed",
                    {"i": i, "n": {"k": i % 3, "drop": None}, f"x{i % 4}": i},
                    transition=("S", f"S{i}") if i % 10 == 0 else None,
                ),
            )
        await alice.append("task", "t.1 *>", NewEvent("Created", {"title": "escaped id"}))
        await catch_up(alice, db_path, settings=RunnerSettings(batch_size=50))
        events = await log_events(alice)
    assert_matches_brute_force(db_path, events)
    expected = sorted(s for a in brute_entities(events).values() for s in a["conflicts"])
    assert expected, "the scenario must contain concurrent writes"
    async with await ProjectionDB.open(db_path) as db:
        recorded = await list_conflicts(db, "entities")
    assert [c.seq for c in recorded] == expected
    by_seq = {e.seq: e for e in events}
    for c in recorded:
        assert c.event_id == by_seq[c.seq].id and c.previous_id == by_seq[c.previous_seq].id
        assert c.event_vclock == by_seq[c.seq].vclock
        assert c.previous_vclock == by_seq[c.previous_seq].vclock
        assert (c.resolver, c.winner) == ("log-order", "event")


async def test_a_quiet_stream_is_applied_without_waiting_for_more_events(
    store: EventStore, db_path: Path
) -> None:
    """Following the log, each lone event is committed on its own: a batch never waits to
    fill up (``python -m bench.live`` measures how soon: a few milliseconds)."""
    await store.append("agent", "q", NewEvent("Created"))
    async with await ProjectionDB.open(db_path) as db:
        runner = Runner(store, db, [EntitiesProjection()])
        committed: list[int] = []
        runner.on_commit.append(lambda info: committed.append(info.messages))
        task = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(10):
                await runner.wait_for(1)
            for i in range(5):
                res = await store.append("agent", "q", NewEvent("Changed", {"i": i}))
                async with asyncio.timeout(5):  # a liveness bound, not a speed target
                    await runner.wait_for(res.last_seq)
        finally:
            runner.stop()
            await task
    assert committed == [1] * 6  # one batch per event: none waited for the next
    assert scalar(db_path, "SELECT version FROM states WHERE aggregate_id = 'q'") == 6


async def test_resuming_from_the_checkpoint_applies_each_event_once(
    store: EventStore, db_path: Path
) -> None:
    """A new runner reads from checkpoint + 1 and the result is the same as one long run."""
    for i in range(30):
        await store.append("agent", f"r{i % 3}", NewEvent("Changed", {"n": i}))
    first = await catch_up(store, db_path)
    assert first.checkpoint == 30
    for i in range(30, 45):
        await store.append("agent", f"r{i % 3}", NewEvent("Changed", {"n": i}))
    second = await catch_up(store, db_path)
    assert (second.checkpoint, second.events_applied) == (45, 15)
    third = await catch_up(store, db_path)
    assert third.events_applied == 0
    assert_matches_brute_force(db_path, await log_events(store))


def raw_body(agg_id: str, version: int, **extra: Any) -> bytes:
    env = Envelope(
        id=f"raw-{agg_id}-{version}",
        type="Raw",
        aggregate_type="widget",
        aggregate_id=agg_id,
        version=version,
        occurred_at=utcnow(),
        producer="raw",
        vclock={"raw": version},
        **extra,
    )
    return encode_envelope(env)


async def test_bad_messages_are_quarantined_and_the_worker_goes_on(
    store: EventStore, db_path: Path
) -> None:
    """Garbage, invalid events, gaps and duplicates are quarantined with seq and reason."""
    js, p = store.js, store.settings.prefix
    await store.append("widget", "ok", NewEvent("Created", {"a": 1}))
    bad = [
        (f"{p}.widget.junk", b"{not json"),
        (f"{p}.widget.noversion", msgspec.json.encode({"id": "x", "type": "T"})),
        (f"{p}.widget.liar", raw_body("someone-else", 1)),
        (f"{p}.nothing", raw_body("x", 1)),
        (f"{p}.widget.g", raw_body("g", 1)),
        (f"{p}.widget.g", raw_body("g", 3)),
        (f"{p}.widget.g", raw_body("g", 1)),
        (f"{p}.widget.g", raw_body("g", 2, data={"b": 2})),
    ]
    seqs = [(await js.publish(subject, data)).seq for subject, data in bad]
    await store.append("widget", "ok", NewEvent("Changed", {"a": 2}))
    await catch_up(store, db_path)
    async with await ProjectionDB.open(db_path) as db:
        q = await list_quarantine(db, "entities")
    assert [(r.seq, r.kind) for r in q] == [
        (seqs[0], "undecodable"),
        (seqs[1], "undecodable"),
        (seqs[2], "undecodable"),
        (seqs[3], "undecodable"),
        (seqs[5], "gap"),
        (seqs[6], "duplicate"),
    ]
    assert q[0].data == "{not json" and q[0].aggregate_id == "junk"
    assert "names widget/someone-else" in q[2].reason and q[3].aggregate_type is None
    assert "version gap" in q[4].reason and q[4].version == 3
    states = stored_states(db_path)
    assert states[("widget", "ok")]["state"] == {"a": 2}
    assert states[("widget", "g")]["version"] == 2 and states[("widget", "g")]["state"] == {"b": 2}


async def test_snapshots_every_n_versions_keep_the_last_k(store: EventStore, db_path: Path) -> None:
    """Snapshots are taken at multiples of N and, with ``spacing = 0``, only the newest K of
    an aggregate are kept."""
    for i in range(55):
        await store.append("agent", "s", NewEvent("Changed", {"i": i}))
    await store.append("agent", "small", NewEvent("Created"))
    policy = SnapshotPolicy(every=10, keep=3, interval=0, spacing=0)
    await catch_up(store, db_path, settings=RunnerSettings(batch_size=7, snapshots=policy))
    async with await ProjectionDB.open(db_path) as db:
        rows = await db.fetchall(
            "SELECT aggregate_id, version, seq, code_version, state FROM snapshots ORDER BY version"
        )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("s", 30, 30, EntitiesProjection.version),
        ("s", 40, 40, EntitiesProjection.version),
        ("s", 50, 50, EntitiesProjection.version),
    ]
    assert json.loads(rows[-1][4]) == {"i": 49}


async def test_older_snapshots_are_thinned_so_every_point_replays_a_bounded_stretch(
    store: EventStore, db_path: Path
) -> None:
    """Past the newest K, snapshots at multiples of ``spacing`` stay (periodic ones in
    between go): time travel to ANY version replays fewer than ``spacing`` events."""
    await store.append("agent", "s", [NewEvent("Changed", {"i": i}) for i in range(1, 96)])
    policy = SnapshotPolicy(every=10, keep=3, interval=0, spacing=20)
    settings = RunnerSettings(batch_size=7, snapshots=policy)
    async with await ProjectionDB.open(db_path) as db:
        await Runner(store, db, [EntitiesProjection()], settings=settings).catch_up()
        await store.append("agent", "s", NewEvent("Changed", {"i": 96}))  # a periodic one at 96
        periodic = RunnerSettings(snapshots=SnapshotPolicy(every=10, keep=3, interval=0.001,
                                                           spacing=20))  # fmt: skip
        await Runner(store, db, [EntitiesProjection()], settings=periodic).catch_up()
        versions = [r[0] for r in await db.fetchall("SELECT version FROM snapshots ORDER BY 1")]
        assert versions == [20, 40, 60, 80, 90, 96]
        await store.append("agent", "s", [NewEvent("Changed", {"i": i}) for i in range(97, 131)])
        await Runner(store, db, [EntitiesProjection()], settings=settings).catch_up()
        versions = [r[0] for r in await db.fetchall("SELECT version FROM snapshots ORDER BY 1")]
        assert versions == [20, 40, 60, 80, 100, 110, 120, 130]  # 90 and 96 thinned
        tt = TimeTravel(store, EntitiesProjection(), db)
        for v in range(1, 131):
            got = await tt.state_at("agent", "s", version=v)
            assert got.state == {"i": v} and got.replayed < 20, v


async def test_periodic_snapshots_cover_aggregates_that_change_slowly(
    store: EventStore, db_path: Path
) -> None:
    """Once the period has passed, every aggregate changed since its last snapshot gets one."""
    await store.append("agent", "slow", NewEvent("Created", {"v": 1}))
    policy = SnapshotPolicy(every=100, interval=0.2)
    settings = RunnerSettings(snapshots=policy)
    await catch_up(store, db_path, settings=settings)
    assert scalar(db_path, "SELECT count(*) FROM snapshots") == 0
    await asyncio.sleep(0.25)
    await store.append("agent", "slow", NewEvent("Changed", {"v": 2}))
    await store.append("agent", "other", NewEvent("Created"))
    await catch_up(store, db_path, settings=settings)
    snaps = scalar(db_path, "SELECT group_concat(aggregate_id || ':' || version) FROM snapshots")
    assert sorted(snaps.split(",")) == ["other:1", "slow:2"]
    await store.append("agent", "slow", NewEvent("Changed", {"v": 3}))
    await catch_up(store, db_path, settings=settings)  # within the period: no new snapshot
    assert scalar(db_path, "SELECT count(*) FROM snapshots") == 2


class Counter(Projection[dict[str, Any]]):
    """Counts events per aggregate and keeps a read model of the counts."""

    name = "counter"
    version = "1"
    aggregate_types = frozenset({"agent"})
    schema = ("CREATE TABLE IF NOT EXISTS agent_counts (id TEXT PRIMARY KEY, n INTEGER)",)
    tables = ("agent_counts",)
    step = 1

    def initial(self, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
        return {"n": 0}

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        return {"n": state["n"] + self.step}

    def write(self, changes: Any) -> list[Statement]:
        rows = [(c.aggregate_id, c.state["n"]) for c in changes]
        return [Statement("INSERT OR REPLACE INTO agent_counts VALUES (?, ?)", rows)]


class CounterV2(Counter):
    version = "2"
    step = 10


async def test_read_models_and_a_changed_code_version(store: EventStore, db_path: Path) -> None:
    """Read-model rows commit with the batch; a new code version folds everything again."""
    for i in range(12):
        await store.append("agent" if i % 4 else "other", f"c{i % 2}", NewEvent("E"))
    await catch_up(
        store,
        db_path,
        Counter(),
        settings=RunnerSettings(snapshots=SnapshotPolicy(every=2, interval=0)),
    )
    counts = json.loads(scalar(db_path, "SELECT json_group_object(id, n) FROM agent_counts"))
    assert counts == {"c0": 3, "c1": 6}
    assert stored_states(db_path, "counter")[("agent", "c1")]["state"] == {"n": 6}
    assert scalar(db_path, "SELECT count(*) FROM snapshots WHERE code_version = '1'") > 0
    runner = await catch_up(store, db_path, CounterV2())
    assert runner.events_applied == 12
    assert stored_states(db_path, "counter")[("agent", "c1")]["state"] == {"n": 60}
    assert scalar(db_path, "SELECT n FROM agent_counts WHERE id = 'c1'") == 60
    assert scalar(db_path, "SELECT count(*) FROM snapshots WHERE code_version = '1'") == 0
    assert scalar(db_path, "SELECT code_version FROM projections WHERE name = 'counter'") == "2"


async def test_a_projection_added_later_catches_up_alone(store: EventStore, db_path: Path) -> None:
    """Two projections share one reading of the log, each from its own checkpoint."""
    for i in range(10):
        await store.append("agent", "m", NewEvent("E", {"i": i}))
    await catch_up(store, db_path)
    await store.append("agent", "m", NewEvent("E", {"i": 10}))
    runner = await catch_up(store, db_path, EntitiesProjection(), Counter())
    assert runner.checkpoints() == {"entities": 11, "counter": 11}
    assert stored_states(db_path)[("agent", "m")]["version"] == 11
    assert stored_states(db_path, "counter")[("agent", "m")]["state"] == {"n": 11}


async def test_stop_commits_the_batch_in_hand(store: EventStore, db_path: Path) -> None:
    """``stop`` ends ``run`` after the current batch, with everything read committed."""
    for i in range(20):
        await store.append("agent", "st", NewEvent("E", {"i": i}))
    async with await ProjectionDB.open(db_path) as db:
        runner = Runner(store, db, [EntitiesProjection()])
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(10):
            await runner.wait_for(20)
        runner.stop()
        assert await task == 20
    assert scalar(db_path, "SELECT checkpoint FROM projections") == 20


async def test_a_database_of_another_stream_is_refused(
    nats_url: str, store: EventStore, db_path: Path
) -> None:
    """Folding a second stream into a file that holds another one's checkpoints is refused."""
    await store.append("agent", "x", NewEvent("E"))
    await catch_up(store, db_path)
    other = StreamSettings(name=store.settings.name + "_B", prefix=store.settings.prefix + "b")
    async with await EventStore.connect(nats_url, stream=other) as second:
        with pytest.raises(ProjectionError, match="use another --db"):
            await catch_up(second, db_path)


async def test_a_change_is_passed_to_the_read_model_once_per_batch(
    store: EventStore, db_path: Path
) -> None:
    """``write`` gets each changed aggregate once per batch, with its final state."""
    seen: list[list[Change[Any]]] = []

    class Spy(Counter):
        name = "spy"
        schema = ()
        tables = ()

        def write(self, changes: Any) -> list[Statement]:
            seen.append(list(changes))
            return []

    for _ in range(6):
        await store.append("agent", "w", NewEvent("E"))
    await catch_up(store, db_path, Spy())
    assert [(c.aggregate_id, c.version, c.state) for b in seen for c in b][-1] == ("w", 6, {"n": 6})
    assert all(len({c.aggregate_id for c in b}) == len(b) for b in seen)
