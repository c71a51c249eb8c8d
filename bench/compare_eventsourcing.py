"""Side by side with the Python ``eventsourcing`` library (SQLite, snapshotting on), same run.

Both sides store the same ~200-byte ``data`` objects and fold them the same way (the RFC 7386
merge patch of ``projections.merge_patch``), in one process, one after the other.

eventsourcing: ``Application`` with ``PERSISTENCE_MODULE=eventsourcing.sqlite``, a real SQLite
file (``SQLITE_DBNAME``), ``snapshotting_intervals = {Task: 100}``, no aggregate cache. It
puts SQLite in WAL mode and leaves ``synchronous`` at the library default (reported below;
FULL means the WAL is fsynced at every commit). Every ``save`` is one SQLite transaction.

eventstore: appends to JetStream (nats.conf ``sync_interval: always``: fsync before every
ack), with a dedup id, the expected-last-subject-sequence, version and clocks per event. The
projection runner folds the log into SQLite (snapshot every 100 versions) before the reads.

(a) events written per second, same number of events over 100 aggregates:
    baseline = eventsourcing, one event per ``save`` (one transaction each);
    also eventsourcing ``save(*100 aggregates)`` (one transaction of 100 events), and ours
    one ``append`` awaited at a time, and ours ``append_many`` (group commit, atomic batches).
(b) reconstruction of one aggregate with ``--history`` events (default 10k):
    eventsourcing ``repository.get(id)`` (latest snapshot + events after it) and
    ``repository.get(id, version=v)`` at random past versions, against ours ``current()``
    (the state row the projection keeps in SQLite) and ``state_at(version=v)`` with the
    runner's DEFAULT settings (nearest snapshot + the events after it, both from the local
    copy in SQLite, read in the calling thread). Ratio = ours / theirs in time.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from bench.common import bench_server, connect, entity_data, main_for, median, report
from eventstore import AppendRequest, EventStore, NewEvent
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    TimeTravel,
    merge_patch,
)

STREAM, PREFIX, TYPE = "COMPARE", "cmp", "task"
AGGREGATES = 100
SNAPSHOT_EVERY = 100


class Task(Aggregate):
    """The eventsourcing side's aggregate: a JSON object that each event merge-patches."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    @event("Progressed")
    def progress(self, data: dict[str, Any]) -> None:
        self.state = merge_patch(self.state, data)


class Tasks(Application[Any]):
    snapshotting_intervals = {Task: SNAPSHOT_EVERY}


def open_app(path: Path) -> Tasks:
    return Tasks(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "IS_SNAPSHOTTING_ENABLED": "y",
        }
    )


def sqlite_synchronous(path: Path) -> str:
    """What ``PRAGMA synchronous`` is on a connection that sets nothing (as eventsourcing's)."""
    con = sqlite3.connect(path)
    try:
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        sync = int(con.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        con.close()
    return f"journal_mode={mode}, synchronous={['OFF', 'NORMAL', 'FULL', 'EXTRA'][sync]}"


def payloads(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [entity_data(i % AGGREGATES, i // AGGREGATES + 1, rng) for i in range(n)]


# -- (a) writes ------------------------------------------------------------------------------


def es_writes(app: Tasks, data: list[dict[str, Any]], per_save: int) -> float:
    """eventsourcing: ``per_save`` aggregates each given one event, saved in one ``save``."""
    tasks = [Task() for _ in range(AGGREGATES)]
    app.save(*tasks)
    started = time.perf_counter()
    for i in range(0, len(data), per_save):
        group = []
        for j in range(i, min(i + per_save, len(data))):
            task = tasks[j % AGGREGATES]
            task.progress(data[j])
            group.append(task)
        app.save(*group)
    return time.perf_counter() - started


async def ours_single(store: EventStore, data: list[dict[str, Any]], tag: str) -> float:
    started = time.perf_counter()
    for i, d in enumerate(data):
        await store.append(TYPE, f"{tag}-{i % AGGREGATES}", NewEvent("Progressed", d))
    return time.perf_counter() - started


async def ours_many(store: EventStore, data: list[dict[str, Any]], tag: str) -> float:
    started = time.perf_counter()
    results = await store.append_many(
        AppendRequest(TYPE, f"{tag}-{i % AGGREGATES}", [NewEvent("Progressed", d)])
        for i, d in enumerate(data)
    )
    seconds = time.perf_counter() - started
    if any(isinstance(r, Exception) for r in results):
        raise RuntimeError("append_many failed")
    return seconds


# -- (b) reconstruction ----------------------------------------------------------------------


def es_build(app: Tasks, data: list[dict[str, Any]]) -> UUID:
    """One Task with ``len(data)`` events after its Created event, saved 1000 at a time
    (snapshots are taken at every 100th version inside each save)."""
    task = Task()
    for i, d in enumerate(data, 1):
        task.progress(d)
        if i % 1000 == 0:
            app.save(task)
    app.save(task)
    return task.id


async def ours_build(store: EventStore, data: list[dict[str, Any]], agg_id: str) -> None:
    for i in range(0, len(data), 1000):
        chunk = [NewEvent("Progressed", d) for d in data[i : i + 1000]]
        await store.append(TYPE, agg_id, chunk, expected_version=i)


async def run(
    quick: bool = False, events: int | None = None, history: int | None = None
) -> dict[str, Any]:
    n = events or (300 if quick else 5000)
    h = history or (1000 if quick else 10_000)
    n_reads = 10 if quick else 30
    n_past = 60 if quick else 300  # past versions: cheap now, and the median needs many
    rng = random.Random(3)
    with bench_server() as (server, root):
        app = open_app(root / "eventsourcing.db")
        durability = sqlite_synchronous(root / "eventsourcing.db")
        async with await connect(server, STREAM, PREFIX) as store:
            # (a) writes, interleaved: theirs, ours, theirs batched, ours batched
            es_one = es_writes(app, payloads(n, 1), per_save=1)
            our_one = await ours_single(store, payloads(n, 1), "single")
            es_many = es_writes(app, payloads(n, 2), per_save=AGGREGATES)
            our_many = await ours_many(store, payloads(n, 2), "many")
            # (b) reconstruction of one long history
            hist = payloads(h, 4)
            es_id = es_build(app, hist)
            await ours_build(store, hist, "long")
            async with await ProjectionDB.open(root / "eventstore.db") as db:
                settings = RunnerSettings()  # the defaults: what a user gets
                if settings.snapshots.every != SNAPSHOT_EVERY:
                    raise RuntimeError("the default snapshot spacing changed: update the bench")
                await Runner(store, db, [EntitiesProjection()], settings=settings).catch_up()
                tt = TimeTravel(store, EntitiesProjection(), db)
                for _ in range(2):  # warm-up both sides
                    app.repository.get(es_id)
                    await tt.current(TYPE, "long")
                    await tt.state_at(TYPE, "long", version=h // 2)
                times: dict[str, list[float]] = {k: [] for k in ("esc", "esv", "ourc", "ourv")}
                # Current state first, then past versions: a state_at's replay consumer may
                # still be delivering for a moment after it returns, which must not be
                # charged to the next current() read.
                for _ in range(n_reads):
                    t0 = time.perf_counter()
                    theirs: Task = app.repository.get(es_id)
                    t1 = time.perf_counter()
                    ours = await tt.current(TYPE, "long")
                    t2 = time.perf_counter()
                    times["esc"].append(t1 - t0)
                    times["ourc"].append(t2 - t1)
                    if theirs.state != ours.state or theirs.version != ours.version + 1:
                        raise RuntimeError("the two libraries folded different states")
                for _ in range(n_past):
                    v = rng.randint(1, h - 1)  # theirs: +1 for the Created event
                    t0 = time.perf_counter()
                    past: Task = app.repository.get(es_id, version=v + 1)
                    t1 = time.perf_counter()
                    ours_past = await tt.state_at(TYPE, "long", version=v)
                    t2 = time.perf_counter()
                    times["esv"].append(t1 - t0)
                    times["ourv"].append(t2 - t1)
                    if past.state != ours_past.state or ours_past.version != v:
                        raise RuntimeError("the two libraries folded different states")
        app.close()
    es_one_rate, our_one_rate = n / es_one, n / our_one
    es_many_rate, our_many_rate = n / es_many, n / our_many
    med = {k: median(v) for k, v in times.items()}
    figures: dict[str, Any] = {
        "events_written": n,
        "history": h,
        "eventsourcing_sqlite": durability,
        "es_single_events_per_s": round(es_one_rate),
        "es_save100_events_per_s": round(es_many_rate),
        "ours_single_events_per_s": round(our_one_rate),
        "ours_append_many_events_per_s": round(our_many_rate),
        "write_ratio_es_save100": round(es_many_rate / es_one_rate, 3),
        "write_ratio_ours_single": round(our_one_rate / es_one_rate, 3),
        "write_ratio_ours_append_many": round(our_many_rate / es_one_rate, 3),
        "write_ratio_ours_append_many_vs_es_save100": round(our_many_rate / es_many_rate, 3),
        "es_get_ms": round(med["esc"] * 1000, 3),
        "es_get_version_ms": round(med["esv"] * 1000, 3),
        "ours_current_ms": round(med["ourc"] * 1000, 3),
        "ours_state_at_ms": round(med["ourv"] * 1000, 3),
        "read_ratio_current_vs_es_get": round(med["ourc"] / med["esc"], 3),
        "read_ratio_state_at_vs_es_get_version": round(med["ourv"] / med["esv"], 3),
    }
    rows: list[tuple[str, ...]] = [
        ("(a) writes", "what one write is", "events/s", "ratio vs es one-per-save")
    ]
    rows += [
        (
            "eventsourcing, save() per event (baseline)",
            "1 SQLite transaction",
            f"{es_one_rate:,.0f}",
            "1.000",
        ),
        (
            "eventsourcing, save(*100 aggregates)",
            "1 SQLite transaction, 100 events",
            f"{es_many_rate:,.0f}",
            f"{figures['write_ratio_es_save100']:.3f}",
        ),
        (
            "eventstore, append awaited one by one",
            "1 JetStream publish, fsync",
            f"{our_one_rate:,.0f}",
            f"{figures['write_ratio_ours_single']:.3f}",
        ),
        (
            "eventstore, append_many (group commit)",
            "atomic batch <= 500, fsync",
            f"{our_many_rate:,.0f}",
            f"{figures['write_ratio_ours_append_many']:.3f}",
        ),
        ("", "", "", ""),
        (
            f"(b) reconstruct 1 aggregate, {h:,} events",
            "how",
            "median",
            "ratio ours/theirs (time)",
        ),
        (
            "eventsourcing repository.get(id)",
            "snapshot + events after it",
            f"{med['esc'] * 1000:.2f} ms",
            "1.000",
        ),
        (
            "eventstore TimeTravel.current",
            "state row kept by the projection",
            f"{med['ourc'] * 1000:.2f} ms",
            f"{figures['read_ratio_current_vs_es_get']:.3f}",
        ),
        (
            "eventsourcing repository.get(id, version=v)",
            "snapshot <= v + events",
            f"{med['esv'] * 1000:.2f} ms",
            "1.000",
        ),
        (
            "eventstore TimeTravel.state_at(version=v)",
            "SQLite snapshot <= v + local events",
            f"{med['ourv'] * 1000:.2f} ms",
            f"{figures['read_ratio_state_at_vs_es_get_version']:.3f}",
        ),
    ]
    report(
        f"eventstore vs eventsourcing {_version()} (SQLite: {durability}; our server: fsync "
        f"before every ack), {n:,} events written per mode over {AGGREGATES} aggregates, "
        f"{n_reads} current and {n_past} past reads at random versions, snapshots every "
        f"{SNAPSHOT_EVERY}",
        rows,
        figures,
    )
    return figures


def _version() -> str:
    from importlib.metadata import version

    return version("eventsourcing")


def main() -> None:
    main_for(
        "compare_eventsourcing",
        run,
        __doc__,
        {
            "events": "events written per mode (default 5000)",
            "history": "events of the reconstructed aggregate (default 10000)",
        },
    )


if __name__ == "__main__":
    main()
