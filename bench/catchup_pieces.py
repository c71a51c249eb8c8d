"""Where a catch-up's time goes, piece by piece, beside a raw drain in the same run.

Same stream as ``bench.catchup`` (``--events`` over ``--aggregates``); each round drains it
with a raw nats-py ordered consumer, then a runner (built-in ``entities``, copy of the events
on, snapshots off) folds it into a fresh file. Printed per event: the event loop's CPU time
(``time.thread_time``: what a busy machine does not inflate as it inflates wall time, and the
event loop is what bounds a catch-up) for both, and the pieces of the runner (wall time,
measured by wrapping them): the fold (with the copy's rows: a runner's only projection makes
them as it folds), the state rows, the copy's rows made apart (several projections), the garbage
collector, and on the database's thread the commit and its insert of the copy; the commits'
count and batch sizes. The wrappers are removed afterwards; they add about 1 µs per call.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.catchup import NO_SNAPSHOTS, PREFIX, STREAM, TYPE, raw_drain, runner_catch_up
from bench.common import bench_server, connect, fill, main_for, report, stream_sizes
from projections import commit as commit_module
from projections import recorder, runner, slot

PIECES = (
    "fold",
    "state rows",
    "copy rows apart",
    "gc",
    "commit (db thread)",
    "copy insert (db thread)",
)


@contextlib.contextmanager
def _timing(spent: collections.defaultdict[str, float], sizes: list[int]) -> Iterator[None]:
    """Wrap each piece to add its seconds to ``spent``; restore everything on exit."""
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, piece: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[piece] += time.perf_counter() - started

        setattr(owner, name, timed)
        undo.append(lambda: setattr(owner, name, original))

    wrap(slot.Slot, "fold", "fold")
    wrap(recorder.Recorder, "plan_batch", "state rows")
    wrap(runner, "event_rows", "copy rows apart")
    wrap(recorder, "commit", "commit (db thread)")
    wrap(commit_module, "insert_events", "copy insert (db thread)")
    plan = recorder.Recorder.plan_batch

    def planned(self: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(kwargs.get("events") or ()))
        return plan(self, *args, **kwargs)

    recorder.Recorder.plan_batch = planned  # type: ignore[method-assign]
    undo.append(lambda: setattr(recorder.Recorder, "plan_batch", plan))
    began = [0.0]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent["gc"] += time.perf_counter() - began[0]

    gc.callbacks.append(collected)
    undo.append(lambda: gc.callbacks.remove(collected))
    try:
        yield
    finally:
        for step in reversed(undo):
            step()


async def run(
    quick: bool = False,
    events: int | None = None,
    aggregates: int | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    n, n_aggs, n_rounds = stream_sizes(
        quick, events, aggregates, rounds, full_events=100_000, full_rounds=2
    )
    figures: dict[str, Any] = {"events": n, "aggregates": n_aggs, "rounds": []}
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            await fill(store, TYPE, n_aggs, n)
            for r in range(n_rounds):
                spent: collections.defaultdict[str, float] = collections.defaultdict(float)
                sizes: list[int] = []
                cpu = time.thread_time()
                drain = await raw_drain(server.url, n)
                raw_cpu, cpu = time.thread_time() - cpu, time.thread_time()
                with _timing(spent, sizes):
                    seconds, checkpoint, _ = await runner_catch_up(
                        store, root / f"pieces-{r}.db", NO_SNAPSHOTS
                    )
                runner_cpu = time.thread_time() - cpu
                if checkpoint != n:
                    raise RuntimeError(f"catch-up incomplete: checkpoint {checkpoint}")
                us = 1e6 / n
                one = {
                    "raw_wall_us": round(drain * us, 2),
                    "runner_wall_us": round(seconds * us, 2),
                    "wall_ratio": round(drain / seconds, 3),
                    "raw_loop_cpu_us": round(raw_cpu * us, 2),
                    "runner_loop_cpu_us": round(runner_cpu * us, 2),
                    "loop_cpu_ratio": round(raw_cpu / runner_cpu, 3),
                    "commits": len(sizes),
                    "batch_sizes": sizes,
                    **{p: round(spent[p] * us, 2) for p in PIECES},
                }
                figures["rounds"].append(one)
    rows: list[tuple[str, ...]] = [("per event", *(f"round {i + 1}" for i in range(n_rounds)))]
    for key, label in (
        ("raw_wall_us", "raw drain, wall µs (baseline)"),
        ("runner_wall_us", "runner, wall µs"),
        ("wall_ratio", "wall ratio vs raw"),
        ("raw_loop_cpu_us", "raw drain, event-loop CPU µs"),
        ("runner_loop_cpu_us", "runner, event-loop CPU µs"),
        ("loop_cpu_ratio", "event-loop CPU ratio vs raw"),
        *((p, f"  {p}, µs") for p in PIECES),
        ("commits", "commits"),
    ):
        rows.append((label, *(str(one[key]) for one in figures["rounds"])))
    report(
        f"catch-up pieces: {n:,} events over {n_aggs:,} aggregates, copy on, snapshots off",
        rows,
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "catchup_pieces",
        run,
        __doc__,
        {
            "events": "events in the stream (default 100000)",
            "aggregates": "default 1000",
            "rounds": "rounds, each a drain then a catch-up (default 2)",
        },
    )


if __name__ == "__main__":
    main()
