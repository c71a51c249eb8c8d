"""The local copy of the events (projections.eventcopy): written with the batch, read by time
travel and history in place of the log, and equal, byte for byte, to a replay from the log."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from helpers_projections import damage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import EventStore, NewEvent, StoredMessage, StreamSettings
from projections import (
    EntitiesProjection,
    PastState,
    Point,
    ProjectionDB,
    Runner,
    RunnerSettings,
    SnapshotPolicy,
    TimeTravel,
    verify,
)

# A snapshot every 3 versions, the newest 2 kept and older ones every 6: thinning included.
DENSE = RunnerSettings(snapshots=SnapshotPolicy(every=3, keep=2, spacing=6, interval=0))

step = st.tuples(
    st.sampled_from(["alice", "bob"]),
    st.dictionaries(st.sampled_from("abc"), st.none() | st.integers(0, 5), max_size=2),
    st.booleans(),  # append with expected_version (read before write: no conflict)
    st.sampled_from([None, None, None, b"garbage", b'{"version": 999}']),  # then a raw message
)
picks = st.lists(st.tuples(st.sampled_from(["version", "seq", "at"]), st.floats(0, 1)), max_size=6)


def same(a: PastState, b: PastState) -> bytes:
    """The folded part of a past state, encoded: what must be byte-identical."""
    enc = msgspec.json.encode
    fields = (a.version, a.seq, a.state, a.vclock, a.lamport, a.recorded_at, a.rules_version)
    assert enc(fields) == enc(
        (b.version, b.seq, b.state, b.vclock, b.lamport, b.recorded_at, b.rules_version)
    )
    return enc(fields)


async def messages(store: EventStore, agg_id: str) -> list[StoredMessage]:
    subject = store.subject("agent", agg_id)
    return [m async for batch in store.raw(1) for m in batch if m.subject == subject]


async def write(
    pair: dict[str, EventStore], agg_id: str, history: list[Any], version: int = 0
) -> int:
    for who, data, read_first, raw in history:
        res = await pair[who].append(
            "agent",
            agg_id,
            NewEvent("Changed", data),
            expected_version=version if read_first else None,
        )
        version = res.version
        if raw is not None:
            await pair[who].js.publish(pair[who].subject("agent", agg_id), raw)
    return version


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    history=st.lists(step, min_size=1, max_size=16), later=st.lists(step, max_size=4), picks=picks
)
async def test_state_at_from_the_copy_equals_the_fold_from_the_log(
    nats_url: str,
    tmp_path: Path,
    history: list[Any],
    later: list[Any],
    picks: list[tuple[str, float]],
) -> None:
    """At random versions, sequences and times (some past the checkpoint, with conflicts,
    garbage and misplaced versions in the history), state_at and history from the copy equal
    the fold of the log from version 1, byte for byte."""
    agg_id = uuid.uuid4().hex[:8]
    stream = StreamSettings(name=f"T_{agg_id}", prefix=f"t{agg_id}")  # one per example
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=stream) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=stream) as bob,
    ):
        pair = {"alice": alice, "bob": bob}
        version = await write(pair, agg_id, history)
        path = tmp_path / f"{agg_id}.db"
        async with await ProjectionDB.open(path) as db:
            await Runner(alice, db, [EntitiesProjection()], settings=DENSE).catch_up()
            await write(pair, agg_id, later, version)  # past the checkpoint: from the log
            msgs = await messages(alice, agg_id)
            local = TimeTravel(alice, EntitiesProjection(), db)
            log = TimeTravel(alice, EntitiesProjection())
            last = (await log.state_at("agent", agg_id)).version
            points = [Point(), Point(version=last), Point(seq=msgs[-1].seq + 3)]
            for kind, where in picks:
                msg = msgs[min(len(msgs) - 1, int(where * len(msgs)))]
                if kind == "version":
                    points.append(Point(version=min(last, int(where * (last + 1)))))
                elif kind == "seq":
                    points.append(Point(seq=msg.seq - (where < 0.3)))
                else:
                    points.append(Point(at=msg.recorded_at))
            for point in points:
                args = {"version": point.version, "seq": point.seq, "at": point.at}
                same(
                    await local.state_at("agent", agg_id, **args),
                    await log.state_at("agent", agg_id, **args),
                )
                a = await local.history("agent", agg_id, None, point)
                b = await log.history("agent", agg_id, None, point)
                assert msgspec.json.encode(a) == msgspec.json.encode(b)
            for kind, where in picks:  # ranges: each version as state_at gives it
                lo, limit = min(last, 1 + int(where * last)), 1 + int(where * 8)
                hi = lo + int(where * 5) if kind == "version" else last + 3
                got = await local.states("agent", agg_id, lo, hi, limit)
                want = [await log.state_at("agent", agg_id, version=s.version) for s in got]
                count = min(limit, hi - lo + 1, last - lo + 1)
                assert [s.version for s in got] == list(range(lo, lo + count))
                assert [same(a, b) for a, b in zip(got, want, strict=True)]
            first = Point(version=min(last, 2))
            assert msgspec.json.encode(
                await local.history("agent", agg_id, first, Point())
            ) == msgspec.json.encode(await log.history("agent", agg_id, first, Point()))


async def test_past_points_are_read_from_the_file_alone(store: EventStore, tmp_path: Path) -> None:
    """Up to the checkpoint, state_at and history receive no message from the server: the
    snapshot and the events after it come from the file, in one statement."""
    await store.append("agent", "m", [NewEvent("Changed", {"i": i}) for i in range(1, 301)])
    async with await ProjectionDB.open(tmp_path / "m.db") as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        tt = TimeTravel(store, EntitiesProjection(), db)
        msgs = await messages(store, "m")
        await tt.state_at("agent", "m", version=1)  # the rules check, once
        targets: list[dict[str, Any]] = [
            {"version": 150},
            {"version": 42},
            {"seq": msgs[209].seq},
            {"at": msgs[259].recorded_at},
            {"version": 300},
        ]
        for target in targets:
            before = store.nc.stats["in_msgs"]
            got = await tt.state_at("agent", "m", **target)
            assert store.nc.stats["in_msgs"] == before, target
            expected = target.get("version", 210 if "seq" in target else 260)
            assert (got.version, got.state) == (expected, {"i": expected}), target
            assert got.replayed == expected - (got.snapshot_version or 0)
        before = store.nc.stats["in_msgs"]
        entries = await tt.history("agent", "m", Point(version=100), Point(version=120))
        assert [e.version for e in entries] == list(range(101, 121))
        assert store.nc.stats["in_msgs"] == before


async def test_the_copy_holds_the_stored_bytes_of_the_followed_aggregates(
    store: EventStore, tmp_path: Path
) -> None:
    """Each message of an aggregate is kept with its exact body, seq, recorded time and the
    version it says (none for garbage); the rules' messages are no aggregate's and are not
    kept; with ``keep_events = false`` nothing is."""
    await store.append("agent", "a", [NewEvent("Changed", {"i": 1}), NewEvent("Changed")])
    await store.js.publish(store.subject("agent", "a"), b"\xffnot json")
    await store.append("task", "t", NewEvent("Created"))
    path = tmp_path / "c.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
    msgs = [m async for batch in store.raw(1) for m in batch]
    con = sqlite3.connect(path)
    try:
        rows = con.execute(
            "SELECT seq, aggregate_type, aggregate_id, version, recorded_us, data FROM events "
            "ORDER BY seq"
        ).fetchall()
        kept_from = con.execute("SELECT events_from FROM projections").fetchone()[0]
    finally:
        con.close()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    us = [(m.recorded_at - epoch) // timedelta(microseconds=1) for m in msgs]
    assert [(r[0], r[5]) for r in rows] == [(m.seq, m.data) for m in msgs]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("agent", "a", 1),
        ("agent", "a", 2),
        ("agent", "a", None),
        ("task", "t", 1),
    ]
    assert [r[4] for r in rows] == us
    assert kept_from == 1
    off = tmp_path / "off.db"
    async with await ProjectionDB.open(off) as db:
        await Runner(
            store, db, [EntitiesProjection()], settings=RunnerSettings(keep_events=False)
        ).catch_up()
        assert await db.fetchone("SELECT count(*), max(events_from) FROM events, projections") == (
            0,
            None,
        )


async def test_a_copy_started_late_replays_older_points_from_the_log(
    store: EventStore, tmp_path: Path
) -> None:
    """A file folded without the copy and then with it (an upgraded file, or keep_events
    switched on) keeps the messages from its checkpoint on; a point whose snapshot lies before
    that is replayed from the log, a later one from the file, both right."""
    await store.append("agent", "x", [NewEvent("Changed", {"i": i}) for i in range(1, 151)])
    path = tmp_path / "late.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(
            store, db, [EntitiesProjection()], settings=RunnerSettings(keep_events=False)
        ).catch_up()
        await store.append("agent", "x", [NewEvent("Changed", {"i": i}) for i in range(151, 321)])
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        assert await db.fetchone("SELECT events_from FROM projections") == (151,)
        assert await db.fetchone("SELECT min(seq), count(*) FROM events") == (151, 170)
        tt = TimeTravel(store, EntitiesProjection(), db)
        await tt.state_at("agent", "x", version=1)
        for version, from_log in ((120, True), (180, True), (250, False), (320, False)):
            before = store.nc.stats["in_msgs"]
            got = await tt.state_at("agent", "x", version=version)
            assert (got.version, got.state) == (version, {"i": version})
            assert (store.nc.stats["in_msgs"] > before) == from_log, version


def _make_schema_2(path: Path) -> None:
    """Turn a file into what the previous eventstore wrote (schema 2: no events copy)."""
    con = sqlite3.connect(path)
    try:
        con.executescript(
            "DROP TABLE events; DROP TABLE event_runs; "
            "ALTER TABLE projections DROP COLUMN events_from; "
            "DELETE FROM schema_migrations WHERE version >= 3; PRAGMA user_version = 2;"
        )
    finally:
        con.close()


async def test_a_file_of_schema_2_is_read_as_it_is_and_upgraded_by_a_writer(
    store: EventStore, tmp_path: Path
) -> None:
    """A file of the previous schema opens read-only as it is (time travel replays from the
    log, right); a writer's open adds the copy, which then starts at the checkpoint."""
    await store.append("agent", "o", [NewEvent("Changed", {"i": i}) for i in range(1, 131)])
    path = tmp_path / "old.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
    _make_schema_2(path)
    async with await ProjectionDB.open(path, readonly=True) as reader:
        assert await reader.schema_version() == 2
        got = await TimeTravel(store, EntitiesProjection(), reader).state_at(
            "agent", "o", version=120
        )
        assert (got.state, got.snapshot_version, got.replayed) == ({"i": 120}, 100, 20)
    await store.append("agent", "o", [NewEvent("Changed", {"i": i}) for i in range(131, 251)])
    async with await ProjectionDB.open(path) as db:
        assert await db.schema_version() == 4
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        assert await db.fetchone("SELECT events_from FROM projections") == (131,)
        tt = TimeTravel(store, EntitiesProjection(), db)
        for version in (50, 120, 220, 250):
            got = await tt.state_at("agent", "o", version=version)
            assert got.state == {"i": version}


async def test_verify_checks_the_copy_against_the_log(store: EventStore, tmp_path: Path) -> None:
    """``verify`` passes on a file whose copy is the log, and names the seq of a row that was
    altered or lost (time travel would have answered from it)."""
    await store.append("agent", "v", [NewEvent("Changed", {"i": i}) for i in range(1, 11)])
    path = tmp_path / "v.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        assert (await verify(store, db, [EntitiesProjection()])).ok
    damage(
        path,
        "UPDATE events SET data = CAST('{}' AS BLOB) WHERE seq = 4",
        "DELETE FROM events WHERE seq = 7",
    )
    async with await ProjectionDB.open(path) as db:
        report = await verify(store, db, [EntitiesProjection()])
    assert [(m.what, m.detail) for m in report.mismatches] == [
        ("the copy of the events differs from the log", "at seq 4"),
        ("missing from the copy of the events", "at seq 7"),
        ("listed by the copy's runs but not in the copy", "at seq 7"),
    ]


class AgentsOnly(EntitiesProjection):
    """The entities fold of agents alone."""

    name = "agents"
    aggregate_types = frozenset({"agent"})


async def test_the_copy_holds_what_the_projections_follow_and_survives_batches_of_others(
    store: EventStore, tmp_path: Path
) -> None:
    """A projection's copy keeps only the aggregates it follows; a batch of nothing it follows
    leaves the copy's start where it was, so older points stay local."""
    await store.append("agent", "a", [NewEvent("Changed", {"i": i}) for i in range(1, 4)])
    async with await ProjectionDB.open(tmp_path / "f.db") as db:
        await Runner(store, db, [AgentsOnly()]).catch_up()
        await store.append("widget", "w", NewEvent("Made"))
        await Runner(store, db, [AgentsOnly()]).catch_up()
        assert await db.fetchone("SELECT events_from, checkpoint FROM projections") == (1, 4)
        kept = await db.fetchall("SELECT aggregate_type, count(*) FROM events GROUP BY 1")
        assert kept == [("agent", 3)]
        tt = TimeTravel(store, AgentsOnly(), db)
        await tt.state_at("agent", "a", version=1)
        before = store.nc.stats["in_msgs"]
        assert (await tt.state_at("agent", "a", version=2)).state == {"i": 2}
        assert store.nc.stats["in_msgs"] == before


async def test_one_projection_copies_as_it_folds_exactly_what_several_copy_from_the_memo(
    store: EventStore, tmp_path: Path
) -> None:
    """The only projection of a runner writes the copy's rows while it folds (no memo); two
    projections make them of their shared memo: both give the same rows, garbage included,
    over several batches."""
    for i in range(30):
        await store.append("agent", f"a{i % 4}", NewEvent("Changed", {"i": i}))
    await store.js.publish(store.subject("agent", "a1"), b"\xffnot json")
    await store.append("task", "t", [NewEvent("Created"), NewEvent("Done", {"ok": True})])

    async def copy_of(path: Path, projections: list[Any]) -> list[tuple[Any, ...]]:
        async with await ProjectionDB.open(path) as db:
            runner = Runner(store, db, projections, settings=RunnerSettings(batch_size=7))
            assert await runner.catch_up() == 33
            return await db.fetchall(
                "SELECT seq, aggregate_type, aggregate_id, version, recorded_us, data FROM events "
                "ORDER BY seq"
            )

    one = await copy_of(tmp_path / "one.db", [EntitiesProjection()])
    two = await copy_of(
        tmp_path / "two.db", [EntitiesProjection(), EntitiesProjection(name="also")]
    )
    assert len(one) == 33 and one == two
    assert [r[3] for r in one if r[3] is None] == [None]
