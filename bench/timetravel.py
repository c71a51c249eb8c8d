"""Time-travel benchmark: latency of ``TimeTravel.state_at`` against history length.

Three aggregates in one stream, with histories of ``--events``/100, /10 and ``--events``
events (default 1k, 10k, 100k; appended up to 1000 events per ``append`` call), folded by the
runner with the DEFAULT settings (``RunnerSettings()``: a snapshot every 100 versions, the
newest 5 and every 100th version kept, the local copy of the events on). Then, interleaving
the three histories round by round (so machine drift hits them alike), ``--queries`` queries
per history at a random point of the whole history, cycling through ``version=``, ``seq=``
and ``at=`` (the recorded time of a random version). Each query reads the nearest snapshot
and the events after it from SQLite (three index searches in the calling thread) and folds them.

Baseline: the median at the shortest history. The figures are the ratios of the longer
histories' median and p95 to it: flat means close to 1.0; and the p99. For contrast, the
same queries replayed from the log (``keep_events = false``, same snapshots) and a
brute-force fold from version 1 (``TimeTravel`` without a database).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from typing import Any

from bench.common import bench_server, connect, entity_event, main_for, median, percentile, report
from eventstore import EventStore
from projections import EntitiesProjection, ProjectionDB, Runner, RunnerSettings, TimeTravel

STREAM, PREFIX, TYPE = "TIMETRAVEL", "tt", "agent"
APPEND_BATCH = 1000
SNAPSHOT_EVERY = 100


async def build(store: EventStore, agg_id: str, events: int, seed: int) -> list[int]:
    """Append ``events`` events to one aggregate; returns the stream sequence of each version
    (index 0 is version 1)."""
    rng = random.Random(seed)
    seqs: list[int] = []
    version = 0
    while version < events:
        upto = min(version + APPEND_BATCH, events)
        batch = [entity_event(seed, v, rng) for v in range(version + 1, upto + 1)]
        res = await store.append(TYPE, agg_id, batch, expected_version=version)
        if res.last_seq - res.first_seq + 1 != len(batch):
            raise RuntimeError("an atomic batch of one aggregate was not stored contiguously")
        seqs.extend(range(res.first_seq, res.last_seq + 1))
        version = res.version
    return seqs


async def recorded_at(store: EventStore, agg_id: str, seq: int) -> datetime:
    """The recorded time of one message, read the way ``state_at`` replays (ordered consumer)."""
    subject = store.subject(TYPE, agg_id)
    async for batch in store.reader.batches(subject, start_seq=seq, stop_seq=seq):
        return batch[0].recorded_at
    raise RuntimeError(f"no message at seq {seq}")


async def timed_query(
    tt: TimeTravel, agg_id: str, kind: str, version: int, seqs: list[int], when: datetime | None
) -> tuple[float, int]:
    """Seconds of one ``state_at`` query, and the events it replayed (checked for sense)."""
    seq = seqs[version - 1]
    started = time.perf_counter()
    if kind == "version":
        got = await tt.state_at(TYPE, agg_id, version=version)
    elif kind == "seq":
        got = await tt.state_at(TYPE, agg_id, seq=seq)
    else:
        got = await tt.state_at(TYPE, agg_id, at=when)
    seconds = time.perf_counter() - started
    if kind != "at" and got.version != version:
        raise RuntimeError(f"state_at({kind}) gave version {got.version}, expected {version}")
    if kind == "at" and got.version < version:
        raise RuntimeError(f"state_at(at) gave version {got.version} < {version}")
    return seconds, got.replayed


async def run(
    quick: bool = False, events: int | None = None, queries: int | None = None
) -> dict[str, Any]:
    longest = events or (20_000 if quick else 100_000)
    n_queries = queries or (15 if quick else 201)
    n_brute = 2 if quick else 5
    lengths = [longest // 100, longest // 10, longest]
    if lengths[0] < 2 * SNAPSHOT_EVERY:
        raise SystemExit(f"--events must be at least {200 * SNAPSHOT_EVERY}")
    names = {n: f"history-{n}" for n in lengths}
    rng = random.Random(42)
    lat: dict[int, list[float]] = {n: [] for n in lengths}
    lat_log: dict[int, list[float]] = {n: [] for n in lengths}
    replayed: dict[int, list[int]] = {n: [] for n in lengths}
    brute: dict[int, list[float]] = {n: [] for n in lengths}
    current: dict[int, list[float]] = {n: [] for n in lengths}
    defaults = RunnerSettings()  # what a user gets
    if defaults.snapshots.every != SNAPSHOT_EVERY:
        raise RuntimeError("the default snapshot spacing changed: update SNAPSHOT_EVERY")
    no_copy = RunnerSettings(keep_events=False)
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            seqs = {n: await build(store, names[n], n, seed=i) for i, n in enumerate(lengths)}
            async with (
                await ProjectionDB.open(root / "timetravel.db") as db,
                await ProjectionDB.open(root / "from-log.db") as log_db,
            ):
                await Runner(store, db, [EntitiesProjection()], settings=defaults).catch_up()
                await Runner(store, log_db, [EntitiesProjection()], settings=no_copy).catch_up()
                row = await db.fetchone("SELECT count(*) FROM snapshots")
                snapshots = int(row[0])
                sizes = await storage(db)
                tt = TimeTravel(store, EntitiesProjection(), db)
                tt_log = TimeTravel(store, EntitiesProjection(), log_db)
                for n in lengths:  # warm-up: first consumer, SQLite page cache
                    for t in (tt, tt_log):
                        await timed_query(t, names[n], "version", n // 2, seqs[n], None)
                kinds = ("version", "seq", "at")
                # The points first: reading a recorded time (a consumer) or replaying from the
                # log keeps delivering for a moment after it returns, which must not be
                # charged to the local queries timed next.
                plan: list[tuple[int, str, int, datetime | None]] = []
                for i in range(n_queries):
                    for n in lengths:
                        kind = kinds[i % 3]
                        version = rng.randint(1, n)
                        when = (
                            await recorded_at(store, names[n], seqs[n][version - 1])
                            if kind == "at"
                            else None
                        )
                        plan.append((n, kind, version, when))
                await asyncio.sleep(0.5)
                for n, kind, version, when in plan:
                    secs, count = await timed_query(tt, names[n], kind, version, seqs[n], when)
                    lat[n].append(secs)
                    replayed[n].append(count)
                for n, kind, version, when in plan[::4]:  # the log replay, every 4th point
                    secs, _ = await timed_query(tt_log, names[n], kind, version, seqs[n], when)
                    lat_log[n].append(secs)
                await asyncio.sleep(0.5)  # let the last replay's consumer go quiet
                for _ in range(n_queries):
                    for n in lengths:
                        started = time.perf_counter()
                        await tt.current(TYPE, names[n])
                        current[n].append(time.perf_counter() - started)
                no_db = TimeTravel(store, EntitiesProjection())
                for _ in range(n_brute):
                    for n in lengths:
                        version = rng.randint(1, n - 1)
                        started = time.perf_counter()
                        got = await no_db.state_at(TYPE, names[n], version=version)
                        brute[n].append(time.perf_counter() - started)
                        if got.version != version or got.replayed != version:
                            raise RuntimeError("brute-force fold did not replay from version 1")
    base = median(lat[lengths[0]])
    base_p95 = percentile(lat[lengths[0]], 95)
    figures: dict[str, Any] = {
        "histories": lengths,
        "queries_per_history": n_queries,
        "settings": "defaults",
        "snapshot_every": SNAPSHOT_EVERY,
        "snapshots": snapshots,
        **sizes,
    }
    rows: list[tuple[str, ...]] = [
        (
            "history",
            "state_at median",
            "p95",
            "p99",
            "median ratio",
            "max replayed",
            "from the log",
            "log / copy",
            "brute fold",
            "current()",
        )
    ]
    for n in lengths:
        med, p95, p99 = median(lat[n]), percentile(lat[n], 95), percentile(lat[n], 99)
        b, from_log = median(brute[n]), median(lat_log[n])
        key = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        figures[f"median_ms_{key}"] = round(med * 1000, 3)
        figures[f"p95_ms_{key}"] = round(p95 * 1000, 3)
        figures[f"p99_ms_{key}"] = round(p99 * 1000, 3)
        figures[f"ratio_median_{key}"] = round(med / base, 3)
        figures[f"ratio_p95_{key}"] = round(p95 / base_p95, 3)
        figures[f"log_ms_{key}"] = round(from_log * 1000, 3)
        figures[f"log_ratio_{key}"] = round(from_log / med, 3)
        figures[f"brute_ms_{key}"] = round(b * 1000, 3)
        figures[f"brute_ratio_{key}"] = round(b / med, 3)
        figures[f"current_ms_{key}"] = round(median(current[n]) * 1000, 3)
        figures[f"max_replayed_{key}"] = max(replayed[n])
        rows.append(
            (
                f"{n:,} events",
                f"{med * 1000:.3f} ms",
                f"{p95 * 1000:.3f} ms",
                f"{p99 * 1000:.3f} ms",
                f"{med / base:.3f}",
                str(max(replayed[n])),
                f"{from_log * 1000:.2f} ms",
                f"{from_log / med:.1f}x",
                f"{b * 1000:.1f} ms",
                f"{median(current[n]) * 1000:.2f} ms",
            )
        )
    report(
        f"time travel: state_at at random points of the whole history ({n_queries} per "
        f"history, version=/seq=/at= in turn), DEFAULT settings (snapshot every "
        f"{SNAPSHOT_EVERY}, local copy of the events); baseline = the {lengths[0]:,}-event "
        f"history; from the log = the same queries (every 4th) with keep_events = false; "
        f"brute = fold from version 1, {n_brute} per history",
        rows,
        figures,
    )
    return figures


async def storage(db: ProjectionDB) -> dict[str, Any]:
    """Bytes per kept event and per kept snapshot (SQLite's dbstat: table + its indexes)."""

    async def size(*names: str) -> int:
        marks = ",".join("?" * len(names))
        row = await db.fetchone(f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({marks})", names)
        return int(row[0] or 0)

    events = (await db.fetchone("SELECT count(*), sum(length(data)) FROM events")) or (0, 0)
    snaps = await db.fetchone("SELECT count(*) FROM snapshots")
    ev_bytes = await size("events", "event_runs")
    snap_bytes = await size(
        "snapshots", "sqlite_autoindex_snapshots_1", "snapshots_by_seq", "snapshots_by_time"
    )
    return {
        "events_kept": int(events[0]),
        "event_body_bytes": round(int(events[1] or 0) / max(1, int(events[0]))),
        "bytes_per_event_kept": round(ev_bytes / max(1, int(events[0]))),
        "bytes_per_snapshot_kept": round(snap_bytes / max(1, int(snaps[0]))),
    }


def main() -> None:
    main_for(
        "timetravel",
        run,
        __doc__,
        {
            "events": "longest history (default 100000; the others are /10 and /100)",
            "queries": "state_at queries per history (default 201)",
        },
    )


if __name__ == "__main__":
    main()
