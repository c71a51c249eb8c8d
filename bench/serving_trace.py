"""Where the end-to-end latency of ``bench.serving`` goes: the path of one event, piece by piece.

``python -m bench.serving --breakdown [--quick]`` (or ``python -m bench.serving_trace``) runs
the steady 1,000 events/s round of ``bench.serving`` against a *traced* worker: the same
``python -m consumers.cli_worker`` process, started through ``python -m bench.serving_trace
worker ...``, which first wraps a few methods of the fold path to note when each message and
batch passed them (the library itself has no tracing code) and writes those notes to a file
when it exits. Both processes read ``CLOCK_MONOTONIC``, one clock for the whole machine, so
their instants can be subtracted. Per event (sequence ``s``, appended at ``t0``):

* ``append ack``: the producer's ``append`` returned (round trip, group commit, fsync);
* ``at worker``: the ordered consumer's callback in the worker got message ``s``;
* ``batch taken``: the runner took the batch holding ``s`` from its intake queue;
* ``folded``: that batch is folded in memory (with the states it had to load first);
* ``committed``: its SQLite transaction committed (every statement a thread hop);
* ``published``: the change feed handed its notifications to the connection;
* ``at watcher``: the notification carrying ``s`` reached the watcher's connection;
* ``yielded``: ``watch`` yielded it.

The table gives each piece's median and p99 (the time from the previous milestone) and the
median of the cumulative time, beside the raw core publish -> subscriber baseline of the same
run. Traced methods cost a few microseconds per call: the total is a little above the untraced
``bench.serving`` figure.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats

from bench.common import bench_server, connect, main_for, percentile, report
from consumers import ProjectionClient, protocol
from consumers.cli_worker import worker_main
from consumers.feed import ChangeFeed
from eventstore import NewEvent, ordered
from eventstore.jetstream import parse_reply
from projections import runner as runner_mod
from projections.recorder import Recorder

STREAM, PREFIX, TYPE = "SERVING", "serving", "agent"
AGGREGATES = 200
ROOT = Path(__file__).resolve().parent.parent
MS = 1000.0
# The path of an event, in order; the producer's ``append`` returns on a branch of its own
# (the server acknowledges and delivers to the worker independently).
PIECES = ("at worker", "batch taken", "folded", "committed", "published", "at watcher",
          "yielded")  # fmt: skip


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- the traced worker (its own process) -----------------------------------------------------


def _install(out: Path) -> None:
    """Wrap the fold path's methods to note their instants; write them at exit."""
    arrived: dict[int, float] = {}
    batches: list[dict[str, float]] = []
    current: dict[str, float] = {}
    on_msg, apply_, fold, commit, on_commit = (
        ordered.OrderedFeed.on_msg, runner_mod.Runner._apply, runner_mod.Runner._fold,
        Recorder.commit_plan, ChangeFeed._on_commit,
    )  # fmt: skip

    async def traced_on_msg(self: Any, msg: Any) -> None:
        arrived.setdefault(parse_reply(msg.reply)[0], now())
        await on_msg(self, msg)

    async def traced_apply(self: Any, batch: Any) -> None:
        current.clear()
        current.update(first=batch[0].seq, last=batch[-1].seq, taken=now())
        await apply_(self, batch)

    def traced_fold(self: Any, batch: Any) -> None:
        fold(self, batch)
        current["folded"] = now()

    async def traced_commit(self: Any, *args: Any, **kwargs: Any) -> None:
        current["commit_start"] = now()
        await commit(self, *args, **kwargs)
        current["committed"] = now()

    async def traced_on_commit(self: Any, info: Any) -> None:
        await on_commit(self, info)
        batches.append({**current, "published": now()})

    ordered.OrderedFeed.on_msg = traced_on_msg  # type: ignore[method-assign]
    runner_mod.Runner._apply = traced_apply  # type: ignore[method-assign]
    runner_mod.Runner._fold = traced_fold  # type: ignore[method-assign]
    Recorder.commit_plan = traced_commit  # type: ignore[method-assign]
    ChangeFeed._on_commit = traced_on_commit  # type: ignore[method-assign]

    def dump() -> None:
        out.write_text(json.dumps({"arrived": arrived, "batches": batches}))

    atexit.register(dump)


def worker(argv: list[str]) -> int:
    """``worker --trace FILE [cli_worker options]``: a traced ``python -m consumers.cli_worker``."""
    _install(Path(argv[1]))
    return worker_main(argv[2:])


# -- the run ---------------------------------------------------------------------------------


def _start(url: str, root: Path, trace: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.serving_trace", "worker", "--trace", str(trace),
               "--url", url, "--stream", STREAM, "--prefix", PREFIX, "--db",
               str(root / "traced.db")]  # fmt: skip
    with (root / "traced.log").open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def _round(store: Any, n: int, base: int, marks: dict[int, dict[str, float]]) -> None:
    """``n`` appends on a 1,000/s schedule (each in a task of its own), noting start and ack."""
    tasks = []

    async def one(k: int) -> None:
        t0 = now()
        res = await store.append(TYPE, f"a{k % AGGREGATES}", _event(k))
        marks[k] = {"t0": t0, "append ack": now(), "seq": float(res.last_seq)}

    t_start = now()
    for i in range(n):
        delay = t_start + i / 1000.0 - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(base + i)))
    await asyncio.gather(*tasks)


def _event(k: int) -> NewEvent:
    return NewEvent("Step", {"i": k})


async def run(quick: bool = False, n: int | None = None) -> dict[str, Any]:
    n = n or (300 if quick else 3000)
    with bench_server() as (server, root):
        trace = root / "trace.json"
        async with await connect(server, STREAM, PREFIX) as store:
            await store.append(TYPE, "warm", _event(-1))
            proc = _start(server.url, root, trace)
            try:
                client = await ProjectionClient.connect(server.url, stream=STREAM)
                for _ in range(200):
                    try:
                        await client.wait_for(await store.head(), timeout=1)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                marks: dict[int, dict[str, float]] = {}
                fed: dict[int, float] = {}
                yielded: dict[int, float] = {}

                async def on_feed(msg: Any) -> None:  # on the watcher's connection
                    i = json.loads(msg.data).get("state", {}).get("i")
                    if isinstance(i, int):
                        fed.setdefault(i, now())

                await client.nc.subscribe(protocol.feed_wildcard(STREAM, "entities", TYPE),
                                          cb=on_feed)  # fmt: skip

                async def follow() -> None:
                    async for change in client.watch(aggregate_type=TYPE):
                        i = change.state.get("i") if isinstance(change.state, dict) else None
                        if isinstance(i, int):
                            yielded.setdefault(i, now())

                watching = asyncio.create_task(follow())
                await _round(store, min(n, 500), 0, {})  # warm-up
                raw = await _raw_baseline(server.url, n)
                raw_js = await _raw_jetstream(server.url, n)
                await _round(store, n, 10**6, marks)
                await asyncio.sleep(0.5)
                watching.cancel()
                await client.close()
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
        traced = json.loads(trace.read_text())
    return _report(marks, fed, yielded, traced, raw, raw_js, n)


async def _raw_baseline(url: str, n: int) -> list[float]:
    pub, sub = await nats.connect(url), await nats.connect(url)
    got: dict[int, float] = {}

    async def cb(msg: Any) -> None:
        got[int(msg.data)] = now()

    await sub.subscribe("bench.raw", cb=cb)
    await sub.flush()
    sent: dict[int, float] = {}
    t_start = now()
    for i in range(n):
        delay = t_start + i / 1000.0 - now()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[i] = now()
        await pub.publish("bench.raw", str(i).encode())
    await pub.flush()
    await asyncio.sleep(0.2)
    await pub.close()
    await sub.close()
    return [got[i] - t for i, t in sent.items() if i in got]


async def _raw_jetstream(url: str, n: int) -> tuple[list[float], list[float]]:
    """Raw nats-py ``js.publish`` on the same schedule (each in a task of its own, same fsync
    policy) to an ordered push consumer on another connection: (acks, arrivals). What the log
    alone costs, beside ``at worker`` (our producer's group commit plus the same)."""
    pub, sub = await nats.connect(url), await nats.connect(url)
    js = pub.jetstream()
    await js.add_stream(name="RAWJS", subjects=["rawjs.>"])
    got: dict[int, float] = {}

    async def cb(msg: Any) -> None:
        got.setdefault(int(msg.data), now())

    await sub.jetstream().subscribe("rawjs.>", cb=cb, ordered_consumer=True)
    acks: dict[int, float] = {}
    sent: dict[int, float] = {}

    async def one(i: int) -> None:
        sent[i] = now()
        await js.publish(f"rawjs.a{i % AGGREGATES}", str(i).encode())
        acks[i] = now()

    tasks, t_start = [], now()
    for i in range(n):
        delay = t_start + i / 1000.0 - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)
    await pub.close()
    await sub.close()
    return [acks[i] - t for i, t in sent.items()], [got[i] - t for i, t in sent.items() if i in got]


def _report(
    marks: dict[int, dict[str, float]],
    fed: dict[int, float],
    yielded: dict[int, float],
    traced: dict[str, Any],
    raw: list[float],
    raw_js: tuple[list[float], list[float]],
    n: int,
) -> dict[str, Any]:
    arrived = {int(s): t for s, t in traced["arrived"].items()}
    by_seq: dict[int, dict[str, float]] = {}
    for b in traced["batches"]:
        for s in range(int(b["first"]), int(b["last"]) + 1):
            by_seq[s] = b
    steps: dict[str, list[float]] = {p: [] for p in PIECES}
    totals: dict[str, list[float]] = {p: [] for p in PIECES}
    acks: list[float] = []
    for k, m in marks.items():
        seq = int(m["seq"])
        b = by_seq.get(seq)
        if b is None or seq not in arrived or k not in fed or k not in yielded:
            continue  # coalesced into a later notification: no arrival of its own
        points = [arrived[seq], b["taken"], b["folded"], b["committed"], b["published"],
                  fed[k], yielded[k]]  # fmt: skip
        previous = m["t0"]
        for piece, t in zip(PIECES, points, strict=True):
            steps[piece].append(t - previous)
            totals[piece].append(t - m["t0"])
            previous = t
        acks.append(m["append ack"] - m["t0"])
    rows: list[tuple[str, ...]] = [("piece (from the previous one)", "p50", "p99",
                                    "cumulative p50")]  # fmt: skip
    figures: dict[str, Any] = {"events": n, "traced_events": len(steps["yielded"])}
    for piece in PIECES:
        p50, p99 = percentile(steps[piece], 50) * MS, percentile(steps[piece], 99) * MS
        total = percentile(totals[piece], 50) * MS
        key = piece.replace(" ", "_")
        figures[f"{key}_p50_ms"], figures[f"{key}_p99_ms"] = round(p50, 3), round(p99, 3)
        figures[f"{key}_cumulative_p50_ms"] = round(total, 3)
        rows.append((piece, f"{p50:.2f} ms", f"{p99:.2f} ms", f"{total:.2f} ms"))
    figures["append_ack_p50_ms"] = round(percentile(acks, 50) * MS, 3)
    figures["append_ack_p99_ms"] = round(percentile(acks, 99) * MS, 3)
    rows.append(("(beside: the producer's append returned)",
                 f"{figures['append_ack_p50_ms']:.2f} ms",
                 f"{figures['append_ack_p99_ms']:.2f} ms", ""))  # fmt: skip
    end = totals["yielded"]
    figures["end_to_end_p50_ms"] = round(percentile(end, 50) * MS, 3)
    figures["end_to_end_p99_ms"] = round(percentile(end, 99) * MS, 3)
    figures["raw_p50_ms"] = round(percentile(raw, 50) * MS, 3)
    figures["raw_p99_ms"] = round(percentile(raw, 99) * MS, 3)
    rows.append(("end to end (append -> yielded)", f"{figures['end_to_end_p50_ms']:.2f} ms",
                 f"{figures['end_to_end_p99_ms']:.2f} ms", ""))  # fmt: skip
    rows.append(("raw: core publish -> core subscriber", f"{figures['raw_p50_ms']:.2f} ms",
                 f"{figures['raw_p99_ms']:.2f} ms", ""))  # fmt: skip
    for key, label, values in (("raw_js_ack", "raw: js.publish -> its ack", raw_js[0]),
                               ("raw_js_delivered", "raw: js.publish -> ordered consumer",
                                raw_js[1])):  # fmt: skip
        figures[f"{key}_p50_ms"] = round(percentile(values, 50) * MS, 3)
        figures[f"{key}_p99_ms"] = round(percentile(values, 99) * MS, 3)
        rows.append((label, f"{figures[f'{key}_p50_ms']:.2f} ms",
                     f"{figures[f'{key}_p99_ms']:.2f} ms", ""))  # fmt: skip
    report(
        f"serving breakdown: {n} events at 1,000/s, {figures['traced_events']} with a "
        "notification of their own (the others were coalesced into a later version's)",
        rows,
        figures,
    )
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker(sys.argv[2:]))
    main_for("serving_trace", run, description=__doc__ or "", sizes={"n": "events"})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
