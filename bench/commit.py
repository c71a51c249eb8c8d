"""Commit benchmark: what one small batch costs the runner's SQLite commit, the live path's
part of ``bench.serving`` (at 1,000 events/s a worker commits one or two messages at a time).

- measured: ``Recorder.commit_batch`` of a one-message batch (one state of ~150 bytes, its
  ~500-byte event copied, the checkpoint) into a real SQLite file in WAL mode: the whole
  transaction in one call on the connection's thread (``projections.commit``).
- baseline, same run, same file kind: the same statements issued one aiosqlite call each
  (``BEGIN IMMEDIATE``, the guard, the state, the event, the checkpoint, ``COMMIT``: a thread
  hop per statement), as the recorder did before.
- ``--rounds`` interleaved rounds (default 5) of ``--n`` commits each (default 1,000, the
  first 50 of each round not counted); median and min-max over rounds of each round's p50
  and p99, and the ratio of the medians.

``python -m bench.commit [--quick]``
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import main_for, percentile, report
from projections import AggregateState, EntitiesProjection, ProjectionDB
from projections.commit import CHECKPOINT_SQL, GUARD_SQL, STATE_INSERT, STATE_UPDATE
from projections.eventcopy import EVENT_SQL
from projections.recorder import Recorder
from projections.rows import SlotBatch, StateCodec

MS = 1000.0
STATE_SQL = STATE_INSERT + "(" + ", ".join("?" * 12) + ")" + STATE_UPDATE


def _batch(p: EntitiesProjection, i: int) -> tuple[SlotBatch, list[tuple[Any, ...]]]:
    agg = AggregateState("agent", f"a{i % 200}", {"i": i, "note": "x" * 120}, version=i, seq=i,
                         vclock={"bench": i})  # fmt: skip
    rows = [(i, "agent", f"a{i % 200}", i, 1_700_000_000_000_000 + i, b"e" * 500)]
    return SlotBatch(p, StateCodec(p), changed={agg.key: agg}, writes=False), rows


async def _round(path: Path, n: int, one_hop: bool) -> list[float]:
    p = EntitiesProjection()
    async with await ProjectionDB.open(path) as db:
        recorder = Recorder(db)
        async with db.transaction():
            await recorder.register(p, 0)
        times: list[float] = []
        for i in range(1, n + 1):
            batch, events = _batch(p, i)
            t0 = time.perf_counter()
            if one_hop:
                await recorder.commit_batch(
                    [batch], generation=db.generation, checkpoints={p.name: i - 1}, seq=i,
                    recorded_us=None, now_us=i, keep=5, spacing=100, events=events,
                )  # fmt: skip
            else:  # the same statements, one thread hop each
                async with db.transaction():
                    await db.fetchall(GUARD_SQL)
                    for a in batch.changed.values():
                        await db.execute(STATE_SQL, batch.codec.row(a))
                    await db.executemany(EVENT_SQL, events)
                    await db.execute(CHECKPOINT_SQL, (i, None, i, p.name, True, i))
            times.append(time.perf_counter() - t0)
    return times[50:]


async def run(
    quick: bool = False, n: int | None = None, rounds: int | None = None
) -> dict[str, Any]:
    count = n or (200 if quick else 1000)
    n_rounds = rounds or (1 if quick else 5)
    cells: dict[str, list[list[float]]] = {"one": [], "many": []}
    with tempfile.TemporaryDirectory(prefix="eventstore-bench-") as tmp:
        root = Path(tmp)
        for r in range(n_rounds):
            for key, one_hop in (("many", False), ("one", True)):
                cells[key].append(await _round(root / f"{key}-{r}.db", count, one_hop))

    def stat(key: str, q: float) -> tuple[float, float, float]:
        values = [percentile(times, q) * MS for times in cells[key]]
        return statistics.median(values), min(values), max(values)

    figures: dict[str, Any] = {"commits_per_round": count, "rounds": n_rounds}
    rows: list[tuple[str, ...]] = [
        ("commit of a one-message batch", "p50 (spread)", "p99 (spread)")
    ]
    for key, label in (("many", "a thread hop per statement (baseline)"),
                       ("one", "one call on the connection's thread")):  # fmt: skip
        p50, p99 = stat(key, 50), stat(key, 99)
        figures[f"{key}_p50_ms"], figures[f"{key}_p99_ms"] = round(p50[0], 3), round(p99[0], 3)
        rows.append((label, f"{p50[0]:.3f} ms ({p50[1]:.3f}-{p50[2]:.3f})",
                     f"{p99[0]:.3f} ms ({p99[1]:.3f}-{p99[2]:.3f})"))  # fmt: skip
    figures["p50_ratio"] = round(figures["one_p50_ms"] / figures["many_p50_ms"], 3)
    rows.append(("one call / baseline (p50)", f"{figures['p50_ratio']:.3f}", ""))
    report(
        f"commit: {count} one-message batches per round, {n_rounds} interleaved rounds, real "
        "SQLite files (WAL)",
        rows,
        figures,
    )
    return figures


def main() -> None:
    main_for("commit", run, __doc__, {"n": "commits per round", "rounds": "default 5"})


if __name__ == "__main__":
    main()
