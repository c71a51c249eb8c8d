"""Where the time of one ``state_at`` goes, piece by piece (the profile behind bench.timetravel).

The histories and settings of ``bench.timetravel`` (three aggregates of ``--events``/100, /10
and ``--events`` events, folded by the runner with the DEFAULT settings). Then, round by round
across the three histories (machine drift hits them alike), one random ``version=`` point per
history and round, and for that point, each piece on its own:

- ``state_at``: the whole query (wall time), and ``cpu``: the event loop thread's CPU time of
  it (``time.thread_time``: what waiting for the other thread and for the machine is not);
- ``hop``: one aiosqlite round trip that does nothing (``SELECT 1``): the thread hop alone;
- ``read``: ``eventcopy.read_local`` as ``state_at`` runs it (before this change: a hop to
  aiosqlite's thread and the statement; now: the statements at once on its own reader);
- ``sql``: the same statements given a plain sqlite3 connection of the same file, in this
  thread: what SQLite and the sqlite3 module cost;
- ``load``: decoding the snapshot row into an ``AggregateState``;
- ``decode``: decoding the messages to fold (``MessageDecoder.event``, each message built as
  ``state_at`` builds it);
- ``fold``: folding those decoded events (``Folder.step``);
- ``result``: building the ``PastState``.

Baseline for the ratios: ``hop`` of the same history (pieces in hops). Medians in microseconds.
"""

from __future__ import annotations

import random
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import bench_server, connect, main_for, median, report
from bench.timetravel import PREFIX, STREAM, TYPE, build
from eventstore import StoredMessage
from projections import EntitiesProjection, ProjectionDB, Runner, RunnerSettings, TimeTravel
from projections.eventcopy import read_local
from projections.times import EPOCH

PIECES = ("state_at", "cpu", "hop", "read", "sql", "load", "decode", "fold", "result")


class Direct:
    """Stands in for the ``ProjectionDB`` of ``read_local``: its statements run at once on a
    plain sqlite3 connection, in this thread (no hop), so that ``sql`` is SQLite's own time."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.conn, self.path = self, path
        self.closing: list[Any] = []  # (read_local may open a reader beside it: closed here)

    def close(self) -> None:
        while self.closing:
            self.closing.pop()()
        self._conn.close()

    async def _execute(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()


async def pieces(
    tt: TimeTravel, db: ProjectionDB, direct: Direct, agg_id: str, version: int
) -> dict[str, float]:
    """Seconds of each piece of one ``state_at(version=...)`` (see the module doc)."""
    out: dict[str, float] = {}
    key = (TYPE, agg_id)
    c0, t0 = time.thread_time(), time.perf_counter()
    got = await tt.state_at(*key, version=version)
    out["state_at"], out["cpu"] = time.perf_counter() - t0, time.thread_time() - c0
    t0 = time.perf_counter()
    await db.fetchall("SELECT 1")
    out["hop"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    local = await read_local(db, tt.codec, key, version=version, snapshot=True)
    out["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await read_local(direct, tt.codec, key, version=version, snapshot=True)  # type: ignore[arg-type]
    out["sql"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    agg = tt.codec.load(local.snapshot) if local.snapshot is not None else tt.folder.new(key)
    out["load"] = time.perf_counter() - t0
    subject = tt.store.subject(*key)
    todo = local.rows[: version - agg.version]  # no quarantined messages in these histories
    t0 = time.perf_counter()
    events = [
        tt.decoder.event(
            StoredMessage(seq, subject, data, EPOCH + timedelta(microseconds=us), None), key
        )
        for seq, us, data in todo
    ]
    out["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for event, (_, _, data) in zip(events, todo, strict=True):
        tt.folder.step(agg, event, len(data))
    out["fold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mine = tt._result(agg, None, len(events))
    out["result"] = time.perf_counter() - t0
    if (mine.version, mine.state) != (got.version, got.state):
        raise RuntimeError(f"the pieces folded another state than state_at at v{version}")
    return out


async def run(
    quick: bool = False, events: int | None = None, queries: int | None = None
) -> dict[str, Any]:
    longest = events or (20_000 if quick else 100_000)
    n_queries = queries or (30 if quick else 201)
    lengths = [longest // 100, longest // 10, longest]
    names = {n: f"history-{n}" for n in lengths}
    rng = random.Random(7)
    got: dict[int, dict[str, list[float]]] = {n: {p: [] for p in PIECES} for n in lengths}
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            for i, n in enumerate(lengths):
                await build(store, names[n], n, seed=i)
            async with await ProjectionDB.open(root / "pieces.db") as db:
                runner = Runner(store, db, [EntitiesProjection()], settings=RunnerSettings())
                await runner.catch_up()
                tt = TimeTravel(store, EntitiesProjection(), db)
                direct = Direct(root / "pieces.db")
                for n in lengths:  # warm-up: the rules check, SQLite's page cache
                    await pieces(tt, db, direct, names[n], n // 2)
                for _ in range(n_queries):
                    for n in lengths:
                        for piece, secs in (
                            await pieces(tt, db, direct, names[n], rng.randint(1, n))
                        ).items():
                            got[n][piece].append(secs)
                direct.close()
    figures: dict[str, Any] = {"histories": lengths, "queries_per_history": n_queries}
    rows: list[tuple[str, ...]] = [("history", *PIECES, "state_at in hops")]
    for n in lengths:
        med = {p: median(got[n][p]) for p in PIECES}
        key = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        for p in PIECES:
            figures[f"{p}_us_{key}"] = round(med[p] * 1e6, 1)
        rows.append(
            (
                f"{n:,} events",
                *(f"{med[p] * 1e6:.1f}" for p in PIECES),
                f"{med['state_at'] / med['hop']:.1f}",
            )
        )
    report(
        "state_at(version=random) piece by piece, DEFAULT settings, medians in us "
        f"({n_queries} points per history; cpu = the loop thread's CPU time of state_at)",
        rows,
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "timetravel_pieces",
        run,
        __doc__,
        {
            "events": "longest history (default 100000; the others are /10 and /100)",
            "queries": "points per history (default 201)",
        },
    )


if __name__ == "__main__":
    main()
