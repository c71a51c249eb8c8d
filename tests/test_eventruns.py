"""The runs of the local copy (projections.eventruns): each aggregate's messages listed once,
in order and without overlap, however the batches and the projections of a file fall, so a
read by aggregate finds exactly what a scan of the copy would."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import damage
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import EventStore, NewEvent
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    TimeTravel,
    eventruns,
    verify,
)
from projections.eventcopy import insert_events
from projections.schema import MIGRATIONS, run_steps

KEYS = [("agent", "a"), ("agent", "b"), ("task", "t"), ("task", "u"), ("widget", "w")]


def fresh_file(path: Path) -> sqlite3.Connection:
    """A file with the projection schema, applied step by step as ``ProjectionDB`` does."""
    conn = sqlite3.connect(path, isolation_level=None)
    for _, _, steps in MIGRATIONS:
        run_steps(conn, steps)
    return conn


def by_scan(conn: sqlite3.Connection, key: tuple[str, str]) -> list[int]:
    """An aggregate's seqs in the copy, found without the runs."""
    rows = conn.execute(
        "SELECT seq FROM events WHERE aggregate_type = ? AND aggregate_id = ? ORDER BY seq", key
    ).fetchall()
    return [r[0] for r in rows]


# A log of messages (the aggregate of each seq), and the copies two projections make of it:
# each follows some types and copies its part of a seq range per batch; the second one starts
# when the first has reached ``lead``, so its batches fall among rows the copy already holds.
log = st.lists(st.integers(0, len(KEYS) - 1), min_size=1, max_size=400)
types = st.sets(st.sampled_from(["agent", "task", "widget"]), min_size=1)


@settings(max_examples=60, deadline=None)
@given(
    log=log,
    first=types,
    second=types,
    lead=st.floats(0, 1),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=8),
    run_seqs=st.sampled_from([1, 3, 8, 128]),
    few=st.sampled_from([0, 8]),  # last runs found all in one statement, or one by one
    reads=st.lists(
        st.tuples(st.integers(0, 4), st.floats(0, 1), st.floats(0, 1), st.integers(1, 50))
    ),
)
def test_runs_list_the_copy_exactly_whatever_the_batches(
    tmp_path_factory: pytest.TempPathFactory,
    log: list[int],
    first: set[str],
    second: set[str],
    lead: float,
    sizes: list[int],
    run_seqs: int,
    few: int,
    reads: list[tuple[int, float, float, int]],
) -> None:
    path = tmp_path_factory.mktemp("runs") / "r.db"
    conn = fresh_file(path)
    messages = [(seq, *KEYS[k]) for seq, k in enumerate(log, start=1)]
    pick = random.Random(len(log))

    def copy(follows: set[str], start: int, end: int) -> int:
        """One projection's batches from ``start`` to ``end``, its part of each copied."""
        seq = start
        while seq <= end:
            size = pick.choice(sizes)
            part = [m for m in messages[seq - 1 : min(end, seq + size - 1)] if m[1] in follows]
            rows = [(s, t, i, None, 0, b"{}") for s, t, i in part]
            conn.execute("BEGIN")
            insert_events(conn, rows)
            conn.execute("COMMIT")
            seq += size
        return end

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eventruns, "RUN_SEQS", run_seqs)
        mp.setattr(eventruns, "FEW", few)
        reached = copy(first, 1, max(1, int(len(log) * lead)))
        copy(second, 1, reached)  # behind the first one: among rows already held
        copy(first | second, reached + 1, len(log))  # both on, past every row
    assert eventruns.run_problems(conn) == []
    wanted = sorted(s for s, t, _ in messages if t in first | second)
    assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == wanted
    for k, low, high, limit in reads:
        key = KEYS[k]
        lower, upper = sorted((int(low * len(log)), int(high * len(log))))
        expected = [s for s in by_scan(conn, key) if lower < s <= upper][:limit]
        assert eventruns.seqs_of(conn, key, lower, upper, limit) == expected
    for key in KEYS:  # runs hold at most run_seqs each; all but an aggregate's last are full
        sizes_held = [
            len(eventruns._decode(r[0]))
            for r in conn.execute(
                "SELECT seqs FROM event_runs WHERE aggregate_type = ? AND aggregate_id = ? "
                "ORDER BY last_seq",
                key,
            )
        ]
        assert all(n <= run_seqs for n in sizes_held)
        assert sum(sizes_held) == len(by_scan(conn, key))
    conn.close()


def test_a_catch_up_batch_writes_one_run_per_aggregate(tmp_path: Path) -> None:
    """20,000 messages over 1,000 aggregates in one batch: 1,000 runs, not 20,000 index
    entries; the next batch extends each aggregate's last run instead of adding one."""
    conn = fresh_file(tmp_path / "b.db")
    rows = [(seq, "task", f"t{seq % 1000}", None, 0, b"{}") for seq in range(1, 20_001)]
    conn.execute("BEGIN")
    insert_events(conn, rows)
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM event_runs").fetchone() == (1000,)
    more = [(seq, "task", f"t{seq % 1000}", None, 0, b"{}") for seq in range(20_001, 40_001)]
    conn.execute("BEGIN")
    insert_events(conn, more)
    conn.execute("COMMIT")
    assert conn.execute(
        "SELECT count(*), max(json_array_length(seqs)) FROM event_runs"
    ).fetchone() == (1000, 40)
    assert eventruns.run_problems(conn) == []
    conn.close()


class AgentsOnly(EntitiesProjection):
    name = "agents"
    aggregate_types = frozenset({"agent"})


async def test_a_projection_added_later_copies_among_the_rows_held(
    store: EventStore, tmp_path: Path
) -> None:
    """A second projection joins a file whose first one is at the head: its catch-up copies its
    aggregates' messages between those the first one copied. Every message is listed once,
    verify passes, and time travel reads both kinds from the file alone, right."""
    for i in range(1, 61):
        await store.append("agent", f"a{i % 3}", NewEvent("Changed", {"i": i}))
        await store.append("task", f"t{i % 2}", NewEvent("Changed", {"i": i}))
    path = tmp_path / "two.db"
    small = RunnerSettings(batch_size=7)
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [AgentsOnly()], settings=small).catch_up()
        await Runner(store, db, [AgentsOnly(), EntitiesProjection()], settings=small).catch_up()
        assert (await db.fetchone("SELECT count(*) FROM events")) == (120,)
        assert await db.run(eventruns.run_problems) == []
        assert (await verify(store, db, [AgentsOnly(), EntitiesProjection()])).ok
        tt = TimeTravel(store, EntitiesProjection(), db)
        await tt.state_at("task", "t0", version=1)  # the rules check, once
        for key, version in ((("task", "t0"), 17), (("agent", "a1"), 9), (("task", "t1"), 30)):
            before = store.nc.stats["in_msgs"]
            got = await tt.state_at(*key, version=version)
            assert store.nc.stats["in_msgs"] == before, key
            assert got.version == version
            assert got.state["i"] in range(1, 61)


def _make_schema_3(path: Path) -> None:
    """Turn a file into what the previous eventstore wrote (schema 3: the copy found by an
    index on the aggregate)."""
    con = sqlite3.connect(path)
    try:
        con.executescript(
            "DROP TABLE event_runs; CREATE INDEX events_by_aggregate ON events "
            "(aggregate_type, aggregate_id, seq); DELETE FROM schema_migrations WHERE "
            "version = 4; PRAGMA user_version = 3;"
        )
    finally:
        con.close()


async def test_a_file_of_schema_3_gets_the_runs_of_its_copy(
    store: EventStore, tmp_path: Path
) -> None:
    """A writer's open of a schema-3 file lists its copy in runs (and drops the index): time
    travel reads from the file alone afterwards, and verify passes."""
    for i in range(1, 301):
        await store.append("agent", f"o{i % 2}", NewEvent("Changed", {"i": i}))
    path = tmp_path / "three.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
    _make_schema_3(path)
    async with await ProjectionDB.open(path) as db:
        assert await db.schema_version() == 4
        runs = await db.fetchall(
            "SELECT aggregate_id, json_array_length(seqs) FROM event_runs ORDER BY 1, last_seq"
        )
        assert runs == [("o0", 128), ("o0", 22), ("o1", 128), ("o1", 22)]
        index = "SELECT count(*) FROM sqlite_master WHERE name = 'events_by_aggregate'"
        assert await db.fetchone(index) == (0,)
        assert (await verify(store, db, [EntitiesProjection()])).ok
        tt = TimeTravel(store, EntitiesProjection(), db)
        await tt.state_at("agent", "o1", version=1)
        for version in (50, 129, 150):
            before = store.nc.stats["in_msgs"]
            got = await tt.state_at("agent", "o1", version=version)
            assert store.nc.stats["in_msgs"] == before
            assert got.state == {"i": 2 * version - 1}


@pytest.mark.parametrize("few", [0, 8])  # last runs found by the batch's statement, or apart
async def test_verify_names_damaged_runs(
    store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """A run lost, or one whose list cannot be read, is a mismatch naming the aggregate; the
    worker goes on committing around the damaged run, and time travel answers from the log."""
    for i in range(1, 21):
        await store.append("agent", f"d{i % 2}", NewEvent("Changed", {"i": i}))
    path = tmp_path / "d.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
    damage(
        path,
        "DELETE FROM event_runs WHERE aggregate_id = 'd0'",
        "UPDATE event_runs SET seqs = '[3, 1' WHERE aggregate_id = 'd1'",
    )
    await store.append("agent", "d1", [NewEvent("Changed", {"i": i}) for i in range(21, 31)])
    async with await ProjectionDB.open(path) as db:
        monkeypatch.setattr(eventruns, "FEW", few)
        small = RunnerSettings(batch_size=3)
        assert await Runner(store, db, [EntitiesProjection()], settings=small).catch_up() == 30
        got = await TimeTravel(store, EntitiesProjection(), db).state_at("agent", "d1", version=12)
        assert got.state == {"i": 22}  # d1 holds the odd i up to 19, then 21-30
        report = await verify(store, db, [EntitiesProjection()])
    found: list[Any] = [(m.aggregate_id, m.what) for m in report.mismatches]
    assert ("d0", "in the copy but listed by none of its runs") in found
    assert ("d1", "a run of the copy is damaged") in found
    assert all(m.projection == "entities" for m in report.mismatches)
