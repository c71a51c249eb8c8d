"""Serving benchmark: append -> committed -> delivered to a ``watch`` subscriber.

A real worker process (``python -m consumers.cli_worker``) folds the log and serves its query
service and change feed; this process appends (each event to one of 200 aggregates, its index
``i`` in the data, so the state a subscriber receives says which append it is) and a
``ProjectionClient.watch`` on a connection of its own records when each index arrives. The
latency of an event is from just before its ``append`` call to its arrival in the watch: the
append's round trip and fsync, the delivery to the worker, the fold and SQLite commit of its
batch, the notification, and any state-at-version read the watcher makes to fill a batch's
coalesced versions.

* steady: appends started on a 1,000 events/s schedule (each in its own task, so a slow append
  does not slow the schedule); the highest rate: 16 appends in flight, flat out.
* baseline, same run, interleaved round by round: raw nats-py core ``publish`` to a raw core
  subscriber on another connection, on the same schedule / flat out.
* query round trip: ``ProjectionClient.state`` beside a raw NATS request to a raw responder.
* catch-up: a subscriber that stopped reading while 10,000 events were appended (buffered by
  the watcher), one whose buffer overflowed (it resyncs with ``changes``), and a ``latest``
  one (no missing versions read): the time from when it reads again until it has yielded
  the last event.

Figures: p50/p99 of each round; the table gives the median over rounds and the spread.
``--breakdown`` runs ``bench.serving_trace`` instead: where the steady round's latency goes,
piece by piece (producer and server, worker intake, fold, SQLite commit, feed, watcher).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from bench import serving_trace
from bench.common import bench_server, connect, main_for, median, percentile, report
from consumers import ProjectionClient
from eventstore import AppendRequest, EventStore, NewEvent

STREAM, PREFIX, TYPE = "SERVING", "serving", "agent"
AGGREGATES = 200
IN_FLIGHT = 16
ROOT = Path(__file__).resolve().parent.parent
MS = 1000.0


class Arrivals:
    """When each event index reached the subscriber."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.changed = asyncio.Event()

    def saw(self, i: Any) -> None:
        if isinstance(i, int) and i not in self.at:
            self.at[i] = time.perf_counter()
            self.changed.set()

    async def until(self, first: int, last: int, timeout: float = 60) -> None:
        """Until every index ``first``..``last`` arrived (appends in flight may commit out of
        their start order: the last one started is not always the last one delivered)."""
        async with asyncio.timeout(timeout):
            for i in range(first, last + 1):
                while i not in self.at:
                    self.changed.clear()
                    await self.changed.wait()


async def _paced(
    n: int, rate: float | None, send: Callable[[int], Awaitable[None]]
) -> dict[int, float]:
    """Start ``send(i)`` for i in range(n) on a ``rate``/s schedule (None: IN_FLIGHT at a
    time, flat out); returns when each was started."""
    started: dict[int, float] = {}
    tasks: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate if rate is None else _nothing():
            started[i] = time.perf_counter()
            await send(i)

    t0 = time.perf_counter()
    for i in range(n):
        if rate is not None:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elif gate.locked():
            await gate.acquire()
            gate.release()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return started


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _latencies(started: dict[int, float], arrived: dict[int, float], base: int) -> list[float]:
    return [arrived[base + i] - t for i, t in started.items()]


async def _ours(
    store: EventStore, seen: Arrivals, n: int, rate: float | None, base: int
) -> tuple[list[float], float]:
    async def send(i: int) -> None:
        k = base + i
        await store.append(TYPE, f"a{k % AGGREGATES}", NewEvent("Step", {"i": k}))

    t0 = time.perf_counter()
    started = await _paced(n, rate, send)
    await seen.until(base, base + n - 1)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.05)
    return _latencies(started, seen.at, base), n / elapsed


async def _raw(
    nc: Any, seen: Arrivals, n: int, rate: float | None, base: int
) -> tuple[list[float], float]:
    async def send(i: int) -> None:
        await nc.publish("bench.raw", str(base + i).encode())

    t0 = time.perf_counter()
    started = await _paced(n, rate, send)
    await nc.flush()
    await seen.until(base, base + n - 1)
    elapsed = time.perf_counter() - t0
    return _latencies(started, seen.at, base), n / elapsed


def _start_worker(url: str, db: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "consumers.cli_worker", "--url", url, "--stream", STREAM,
               "--prefix", PREFIX, "--db", str(db)]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def _watch(client: ProjectionClient, seen: Arrivals, **options: Any) -> None:
    async for change in client.watch(aggregate_type=TYPE, **options):
        if isinstance(change.state, dict):
            seen.saw(change.state.get("i"))


async def _catch_up(
    store: EventStore,
    client: ProjectionClient,
    behind: int,
    buffer: int,
    base: int,
    latest: bool = False,
) -> float:
    """Seconds for a subscriber ``behind`` events behind to yield the last one."""
    seen = Arrivals()
    it = client.watch(aggregate_type=TYPE, buffer=buffer, latest=latest)
    first = await anext(it)  # subscribed and listed; now stop reading
    seen.saw(first.state.get("i") if isinstance(first.state, dict) else None)
    for start in range(0, behind, 500):
        await store.append_many(
            AppendRequest(TYPE, f"a{(base + k) % AGGREGATES}", [NewEvent("Step", {"i": base + k})])
            for k in range(start, min(behind, start + 500))
        )
    await client.wait_for(await store.head(), timeout=60)
    t0 = time.perf_counter()
    async with asyncio.timeout(120):
        async for change in it:
            if isinstance(change.state, dict) and change.state.get("i") == base + behind - 1:
                break
    elapsed = time.perf_counter() - t0
    await it.aclose()
    return elapsed


async def run(
    quick: bool = False, rounds: int | None = None, n: int | None = None, behind: int | None = None
) -> dict[str, Any]:
    rounds = rounds or (1 if quick else 3)
    n = n or (200 if quick else 3000)
    behind = behind or (1000 if quick else 10_000)
    cells: dict[str, list[list[float]]] = {k: [] for k in ("ours", "raw", "ours_max", "raw_max")}
    rates: dict[str, list[float]] = {"ours_max": [], "raw_max": []}
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            await store.append(TYPE, "warm", NewEvent("Step", {"i": -1}))
            proc = _start_worker(server.url, root / "serving.db", root / "worker.log")
            try:
                client = await ProjectionClient.connect(server.url, stream=STREAM)
                for _ in range(200):  # until the worker serves
                    try:
                        await client.wait_for(await store.head(), timeout=1)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                seen, raw_seen = Arrivals(), Arrivals()
                watching = asyncio.create_task(_watch(client, seen))
                pub, sub = await nats.connect(server.url), await nats.connect(server.url)

                async def on_raw(msg: Any) -> None:
                    raw_seen.saw(int(msg.data))

                await sub.subscribe("bench.raw", cb=on_raw)
                await sub.flush()
                await _ours(store, seen, min(n, 500), 1000.0, 0)  # warm-up, not counted
                base = min(n, 500)
                for _ in range(rounds):  # interleaved: ours, raw, ours flat out, raw flat out
                    for key in cells:
                        ours, pace = key.startswith("ours"), None if "max" in key else 1000.0
                        lat, rate = await (
                            _ours(store, seen, n, pace, base)
                            if ours
                            else _raw(pub, raw_seen, n, pace, base)
                        )
                        cells[key].append(lat)
                        if key in rates:
                            rates[key].append(rate)
                        base += n
                query, raw_query = await _queries(client, pub, sub, 200 if quick else 2000)
                watching.cancel()
                buffered = await _catch_up(store, client, behind, 100_000, base + 10**7)
                resynced = await _catch_up(store, client, behind, 100, base + 2 * 10**7)
                coalesced = await _catch_up(store, client, behind, 100_000, base + 3 * 10**7, True)
                await pub.close()
                await sub.close()
                await client.close()
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
    catch = {"buffered": buffered, "resync": resynced, "latest": coalesced}
    return _report(cells, rates, query, raw_query, catch, n, rounds, behind)


async def _queries(
    client: ProjectionClient, pub: Any, sub: Any, count: int
) -> tuple[list[float], list[float]]:
    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await sub.subscribe("bench.echo", cb=echo)
    await sub.flush()
    ours, raw = [], []
    for k in range(count):  # interleaved
        t = time.perf_counter()
        await client.state(TYPE, f"a{k % 50}")  # a0..a49 exist whatever the sizes
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        await pub.request(
            "bench.echo", b'{"aggregate_type":"agent","aggregate_id":"a1"}', timeout=5
        )
        raw.append(time.perf_counter() - t)
    return ours, raw


def _p(values: list[float], q: float) -> float:
    return round(percentile(values, q) * MS, 3)


def _report(
    cells: dict[str, list[list[float]]],
    rates: dict[str, list[float]],
    query: list[float],
    raw_query: list[float],
    catch: dict[str, float],
    n: int,
    rounds: int,
    behind: int,
) -> dict[str, Any]:
    figures: dict[str, Any] = {"events_per_round": n, "rounds": rounds, "behind": behind}
    rows: list[tuple[str, ...]] = [("path", "p50 (spread)", "p99 (spread)", "events/s")]
    labels = {
        "ours": "eventstore: append -> watch, 1,000/s",
        "raw": "raw: core publish -> core subscriber, 1,000/s",
        "ours_max": f"eventstore: append -> watch, flat out ({IN_FLIGHT} in flight)",
        "raw_max": f"raw: core publish -> subscriber, flat out ({IN_FLIGHT} in flight)",
    }
    for key, label in labels.items():
        p50s = [_p(r, 50) for r in cells[key]]
        p99s = [_p(r, 99) for r in cells[key]]
        figures[f"{key}_p50_ms"], figures[f"{key}_p99_ms"] = median(p50s), median(p99s)
        rate = f"{median(rates[key]):,.0f}" if key in rates else "1,000"
        if key in rates:
            figures[f"{key}_events_per_s"] = round(median(rates[key]))
        rows.append((label, f"{median(p50s):.2f} ms ({min(p50s):.2f}-{max(p50s):.2f})",
                     f"{median(p99s):.2f} ms ({min(p99s):.2f}-{max(p99s):.2f})", rate))  # fmt: skip
    figures["query_p50_ms"], figures["query_p99_ms"] = _p(query, 50), _p(query, 99)
    figures["raw_request_p50_ms"], figures["raw_request_p99_ms"] = (
        _p(raw_query, 50),
        _p(raw_query, 99),
    )
    for key, value in catch.items():
        figures[f"catchup_{key}_s"] = round(value, 3)
    figures["target_met"] = figures["ours_p50_ms"] < 5 and figures["ours_p99_ms"] < 25
    rows += [
        ("query: ProjectionClient.state round trip", f"{figures['query_p50_ms']:.2f} ms",
         f"{figures['query_p99_ms']:.2f} ms", ""),
        ("raw: NATS request -> echo responder", f"{figures['raw_request_p50_ms']:.2f} ms",
         f"{figures['raw_request_p99_ms']:.2f} ms", ""),
        (f"catch-up: {behind:,} behind, buffered", f"{catch['buffered']:.3f} s", "", ""),
        (f"catch-up: {behind:,} behind, buffer overflowed (resync)", f"{catch['resync']:.3f} s",
         "", ""),
        (f"catch-up: {behind:,} behind, latest=True", f"{catch['latest']:.3f} s", "", ""),
    ]  # fmt: skip
    report(
        f"serving: {n} events per round, {rounds} interleaved rounds; target at 1,000/s: "
        f"p50 < 5 ms, p99 < 25 ms: {'met' if figures['target_met'] else 'MISSED'}",
        rows,
        figures,
    )
    return figures


def main() -> None:
    if "--breakdown" in sys.argv:
        sys.argv.remove("--breakdown")
        serving_trace.main()
        return
    main_for(
        "serving",
        run,
        description=__doc__ or "",
        sizes={"rounds": "interleaved rounds", "n": "events per round", "behind": "catch-up size"},
    )


if __name__ == "__main__":
    main()
