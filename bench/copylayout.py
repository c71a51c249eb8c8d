"""The local copy's insert, alone: catch-up batches into a real SQLite file, by layout.

Same rows as a catch-up writes (``--events`` messages over ``--aggregates`` aggregates, in
batches of 20,000, ~300-byte bodies, each aggregate's messages spread through the batch), one
transaction per batch, on one thread (no event loop beside it), plain ``sqlite3`` in WAL mode:

- baseline: the rows alone (``events`` keyed by seq, no way to find an aggregate's messages);
- schema 3: the rows and the ``events_by_aggregate (aggregate_type, aggregate_id, seq)``
  index, whose entries land at random places in the tree;
- schema 4 (``projections.eventcopy.insert_events``): the rows and their aggregates' runs.

Printed: microseconds of wall and CPU time per row, and each layout against the baseline;
``--rounds`` interleaved rounds, median and spread.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import main_for, report, stream_sizes
from projections.eventcopy import EVENT_INSERT, insert_events
from projections.multirows import multi_rows
from projections.schema import MIGRATIONS, run_steps

BATCH = 20_000
Batches = list[list[tuple[Any, ...]]]


def _file(path: Path, layout: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for version, _, steps in MIGRATIONS:
        if version == 4 and layout != "runs":
            break  # schema 3: the copy and its index
        run_steps(conn, steps)
    if layout == "rows":
        conn.execute("DROP INDEX events_by_aggregate")
    return conn


def _rows(n: int, aggregates: int) -> Batches:
    pick = random.Random(1)
    ids = [f"task-{i:05d}-{pick.randrange(10**9)}" for i in range(aggregates)]
    body = b'{"status": "running", "note": "' + b"x" * 260 + b'"}'
    rows = [
        (seq, "task", ids[pick.randrange(aggregates)], seq, 1_700_000_000_000_000 + seq, body)
        for seq in range(1, n + 1)
    ]
    return [rows[i : i + BATCH] for i in range(0, n, BATCH)]


def _insert(layout: str, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    if layout == "runs":
        insert_events(conn, rows)
    else:
        for sql, params in multi_rows(EVENT_INSERT, rows):
            conn.execute(sql, params)


def _one(
    root: Path, layout: str, batches: list[list[tuple[Any, ...]]], n: int
) -> tuple[float, float]:
    path = root / f"{layout}.db"
    for suffix in ("", "-wal", "-shm"):
        with_suffix = Path(f"{path}{suffix}")
        if with_suffix.exists():
            os.remove(with_suffix)
    conn = _file(path, layout)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            conn.execute("BEGIN")
            _insert(layout, conn, batch)
            conn.execute("COMMIT")
        return (time.perf_counter() - wall) * 1e6 / n, (time.process_time() - cpu) * 1e6 / n
    finally:
        conn.close()


async def run(
    quick: bool = False,
    events: int | None = None,
    aggregates: int | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    n, n_aggs, n_rounds = stream_sizes(
        quick, events, aggregates, rounds, full_events=200_000, quick_events=40_000
    )
    batches = _rows(n, n_aggs)
    layouts = ("rows", "index", "runs")
    wall: dict[str, list[float]] = {k: [] for k in layouts}
    cpu: dict[str, list[float]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory(prefix="eventstore-bench-") as tmp:
        for _ in range(n_rounds):
            for layout in layouts:
                w, c = _one(Path(tmp), layout, batches, n)
                wall[layout].append(w)
                cpu[layout].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    figures: dict[str, Any] = {"events": n, "aggregates": n_aggs, "rounds": n_rounds}
    for k in layouts:
        figures[f"{k}_wall_us"] = [round(x, 2) for x in wall[k]]
        figures[f"{k}_cpu_us"] = [round(x, 2) for x in cpu[k]]
        figures[f"{k}_ratio"] = round(med[k] / med["rows"], 2)
    labels = {
        "rows": "rows alone (baseline)",
        "index": "rows + events_by_aggregate index (schema 3)",
        "runs": "rows + runs (schema 4)",
    }
    table: list[tuple[str, ...]] = [("layout", "wall µs/row (spread)", "CPU µs/row", "vs rows")]
    for k in layouts:
        spread = f"{med[k]:.2f} ({min(wall[k]):.2f}-{max(wall[k]):.2f})"
        table.append(
            (labels[k], spread, f"{statistics.median(cpu[k]):.2f}", f"{med[k] / med['rows']:.2f}")
        )
    report(
        f"copy insert: {n:,} rows over {n_aggs:,} aggregates in batches of {BATCH:,}, "
        f"one thread, median of {n_rounds} interleaved rounds",
        table,
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "copylayout",
        run,
        __doc__,
        {
            "events": "rows (default 200000)",
            "aggregates": "default 1000",
            "rounds": "interleaved rounds (default 3)",
        },
    )


if __name__ == "__main__":
    main()
