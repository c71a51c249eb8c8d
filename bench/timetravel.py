"""Time-travel benchmark: latency of ``TimeTravel.state_at`` against history length.

Three aggregates in one stream, with histories of ``--events``/100, /10 and ``--events``
events (default 1k, 10k, 100k; appended up to 1000 events per ``append`` call), folded by the
runner with a snapshot every 100 versions and every snapshot kept. Then, interleaving the
three histories round by round (so machine drift hits them alike), ``--queries`` queries per
history at a random past point, cycling through ``version=``, ``seq=`` and ``at=`` (the
recorded time of a random version). Each query reads the nearest snapshot from SQLite and
replays the aggregate's events after it from the log (an ordered consumer on its subject).

Baseline: the median at the shortest history. The figures are the ratios of the longer
histories' median and p95 to it: flat means close to 1.0. For contrast, a brute-force fold
from version 1 (``TimeTravel`` without a database) at random versions of each history.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import bench_server, connect, entity_event, main_for, median, percentile, report
from eventstore import EventStore
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    SnapshotPolicy,
    TimeTravel,
)

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
    n_queries = queries or (15 if quick else 51)
    n_brute = 2 if quick else 5
    lengths = [longest // 100, longest // 10, longest]
    if lengths[0] < 2 * SNAPSHOT_EVERY:
        raise SystemExit(f"--events must be at least {200 * SNAPSHOT_EVERY}")
    names = {n: f"history-{n}" for n in lengths}
    rng = random.Random(42)
    lat: dict[int, list[float]] = {n: [] for n in lengths}
    replayed: dict[int, list[int]] = {n: [] for n in lengths}
    brute: dict[int, list[float]] = {n: [] for n in lengths}
    current: dict[int, list[float]] = {n: [] for n in lengths}
    policy = SnapshotPolicy(every=SNAPSHOT_EVERY, keep=longest, interval=0)
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            seqs = {n: await build(store, names[n], n, seed=i) for i, n in enumerate(lengths)}
            db_path: Path = root / "timetravel.db"
            async with await ProjectionDB.open(db_path) as db:
                settings = RunnerSettings(snapshots=policy)
                await Runner(store, db, [EntitiesProjection()], settings=settings).catch_up()
                row = await db.fetchone("SELECT count(*) FROM snapshots")
                snapshots = int(row[0])
                tt = TimeTravel(store, EntitiesProjection(), db)
                for n in lengths:  # warm-up: first consumer, SQLite page cache
                    await timed_query(tt, names[n], "version", n // 2, seqs[n], None)
                kinds = ("version", "seq", "at")
                for i in range(n_queries):
                    for n in lengths:
                        kind = kinds[i % 3]
                        version = rng.randint(1, n - 1)
                        when = (
                            await recorded_at(store, names[n], seqs[n][version - 1])
                            if kind == "at"
                            else None
                        )
                        secs, count = await timed_query(tt, names[n], kind, version, seqs[n], when)
                        lat[n].append(secs)
                        replayed[n].append(count)
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
        "snapshot_every": SNAPSHOT_EVERY,
        "snapshots": snapshots,
    }
    rows: list[tuple[str, ...]] = [
        (
            "history",
            "state_at median",
            "p95",
            "median ratio",
            "p95 ratio",
            "max replayed",
            "brute fold median",
            "brute / state_at",
            "current()",
        )
    ]
    for n in lengths:
        med, p95 = median(lat[n]), percentile(lat[n], 95)
        b = median(brute[n])
        key = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        figures[f"median_ms_{key}"] = round(med * 1000, 3)
        figures[f"p95_ms_{key}"] = round(p95 * 1000, 3)
        figures[f"ratio_median_{key}"] = round(med / base, 3)
        figures[f"ratio_p95_{key}"] = round(p95 / base_p95, 3)
        figures[f"brute_ms_{key}"] = round(b * 1000, 3)
        figures[f"brute_ratio_{key}"] = round(b / med, 3)
        figures[f"current_ms_{key}"] = round(median(current[n]) * 1000, 3)
        figures[f"max_replayed_{key}"] = max(replayed[n])
        rows.append(
            (
                f"{n:,} events",
                f"{med * 1000:.2f} ms",
                f"{p95 * 1000:.2f} ms",
                f"{med / base:.3f}",
                f"{p95 / base_p95:.3f}",
                str(max(replayed[n])),
                f"{b * 1000:.1f} ms",
                f"{b / med:.1f}x",
                f"{median(current[n]) * 1000:.2f} ms",
            )
        )
    report(
        f"time travel: state_at at random past points ({n_queries} per history, version=/seq=/at= "
        f"in turn), snapshot every {SNAPSHOT_EVERY} versions, all kept; baseline = the "
        f"{lengths[0]:,}-event history; brute = fold from version 1, {n_brute} per history",
        rows,
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "timetravel",
        run,
        __doc__,
        {
            "events": "longest history (default 100000; the others are /10 and /100)",
            "queries": "state_at queries per history (default 51)",
        },
    )


if __name__ == "__main__":
    main()
