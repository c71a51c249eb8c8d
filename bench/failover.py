"""Failover time of an R3 stream on a local three-node cluster: how long appends stall.

Three producers (one connection each, two appending tasks per connection) append one event at
a time, continuously, to an R3 stream on ``eventstore.LocalCluster`` (three nats-servers, the
project's nats.conf: ``sync_interval: always``). Each round SIGKILLs one node, measures the
**failover time** -- from the last acknowledgement before the kill to the first
acknowledgement of an append *sent after* the kill (an ack that was already on its way does
not count) -- then restarts the node and waits until it has caught up. Rounds alternate
between killing the stream's leader (a Raft election: the stall users see) and a follower
(the connections on it fail over; no election). "New leader known after" is when a
``stream_info`` first names a live leader (for a follower kill: at once). The baseline is the
steady-state ack latency (median of the second before each kill, same run), so the ratio
says how many ordinary appends' worth of time one failover costs. Appends that fail with a
``Retryable`` error are retried with the same ids, as an application would; the report
counts them.

``python -m bench.failover [--quick] [--rounds N]`` prints a table and one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import main_for, median, report
from eventstore import EventStore, LocalCluster, NewEvent, Retryable, StreamSettings, uuid7

STREAM = StreamSettings(name="BENCH_FAILOVER", prefix="benchfo", replicas=3)


class Load:
    """The appending tasks and what they saw: (sent, acknowledged) times, retries."""

    def __init__(self, stores: list[EventStore]) -> None:
        self.stores = stores
        self.acks: list[tuple[float, float]] = []
        self.retries = 0
        self.stop = asyncio.Event()

    async def writer(self, store: EventStore, aggregate: str) -> None:
        version = 0
        while not self.stop.is_set():
            event = NewEvent("Counted", {"n": version + 1}, id=uuid7())
            sent = time.monotonic()
            while True:
                try:
                    r = await store.append(
                        "counter", aggregate, event, expected_version=version, timeout=60
                    )
                    break
                except Retryable:
                    self.retries += 1
                    await asyncio.sleep(0.02)
            version = r.version
            self.acks.append((sent, time.monotonic()))


async def _leader(store: EventStore) -> str:
    while True:
        with contextlib.suppress(Exception):
            info = await store.js.stream_info(STREAM.name)
            if info.cluster is not None and info.cluster.leader:
                return str(info.cluster.leader)
        await asyncio.sleep(0.1)


async def _new_leader(stores: list[EventStore], dead: str) -> float:
    """When a leader other than ``dead`` is reported (asked through every connection: the one
    on the dead node reconnects first)."""
    while True:
        for store in stores:
            with contextlib.suppress(Exception):
                info = await asyncio.wait_for(store.js.stream_info(STREAM.name), 0.5)
                if info.cluster is not None and info.cluster.leader not in (None, "", dead):
                    return time.monotonic()
        await asyncio.sleep(0.05)


async def _caught_up(store: EventStore, timeout: float = 60.0) -> None:
    """Until every replica of the stream is current again (after a restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            info = await store.js.stream_info(STREAM.name)
            cl = info.cluster
            peers = (cl.replicas or []) if cl is not None else []
            current = all(p.current and not p.offline for p in peers)
            if cl is not None and cl.leader and len(peers) == 2 and current:
                return
        await asyncio.sleep(0.2)
    raise SystemExit("the restarted node did not catch up within 60 s")


async def _round(cluster: LocalCluster, load: Load, kill_leader: bool) -> dict[str, float]:
    await asyncio.sleep(1.5)
    leader = cluster.names.index(await _leader(load.stores[0]))
    victim = leader if kill_leader else (leader + 1) % len(cluster.names)
    deadline = time.monotonic() + 60
    while True:  # steady state: appends acknowledged all through the last second
        killed = time.monotonic()
        window = [a - s for s, a in load.acks if killed - 1.0 <= a < killed]
        if len(window) >= 10 or killed > deadline:
            break
        await asyncio.sleep(0.2)
    if not window:
        raise SystemExit("no append was acknowledged for a minute before a kill")
    last_before = max(a for _, a in load.acks if a < killed)
    await asyncio.to_thread(cluster.kill, victim)
    elected = await _new_leader(load.stores, cluster.names[victim]) - killed
    while not any(s > killed for s, _ in load.acks):
        await asyncio.sleep(0.01)
    first_after = min(a for s, a in load.acks if s > killed)
    await asyncio.to_thread(cluster.restart, victim)
    await _caught_up(load.stores[0])
    return {"failover_s": first_after - last_before, "baseline_s": median(window),
            "elected_s": elected}  # fmt: skip


def _spread(values: list[float]) -> str:
    return f"{median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


async def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    rounds = rounds or (2 if quick else 6)
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        await asyncio.to_thread(cluster.start)
        try:
            stores = [
                await EventStore.connect(cluster.url, producer=f"bench{i}", stream=STREAM)
                for i in range(3)
            ]
            load = Load(stores)
            tasks = [
                asyncio.create_task(load.writer(s, f"a{i}-{k}"))
                for i, s in enumerate(stores)
                for k in range(2)
            ]
            results: dict[str, list[dict[str, float]]] = {"leader": [], "follower": []}
            try:
                for n in range(rounds):
                    kind = "leader" if n % 2 == 0 else "follower"
                    results[kind].append(await _round(cluster, load, kind == "leader"))
            finally:
                load.stop.set()
                await asyncio.gather(*tasks)
            stored = (await stores[0].js.stream_info(STREAM.name)).state.messages
            for s in stores:
                await s.close()
        finally:
            await asyncio.to_thread(cluster.stop)
    base = median([r["baseline_s"] for rs in results.values() for r in rs])
    figures: dict[str, Any] = {
        "rounds": rounds,
        "appends": len(load.acks),
        "retried": load.retries,
        "baseline_ack_s": round(base, 4),
        "stored": stored,  # every append was retried until acknowledged: must equal appends
    }
    if stored != len(load.acks):
        print(f"WARNING: the stream holds {stored} events for {len(load.acks)} acknowledged")
    rows: list[tuple[str, ...]] = [
        ("node killed", "failover median (min-max)", "x baseline ack", "new leader known after")
    ]
    for kind, rs in results.items():
        if not rs:
            continue
        times = [r["failover_s"] for r in rs]
        figures[f"{kind}_failover_s"] = round(median(times), 3)
        figures[f"{kind}_failover_min_s"] = round(min(times), 3)
        figures[f"{kind}_failover_max_s"] = round(max(times), 3)
        figures[f"{kind}_ratio"] = round(median(times) / base, 1)
        elected = [r["elected_s"] for r in rs]
        figures[f"{kind}_elected_s"] = round(median(elected), 3)
        rows.append((f"{kind} ({len(rs)} rounds)", _spread(times), f"{figures[f'{kind}_ratio']}",
                     _spread(elected)))  # fmt: skip
    report(
        f"failover (R3 stream, 3 local nodes, 6 appenders; baseline ack {base * 1000:.1f} ms)",
        rows,
        figures,
    )
    return figures


def main() -> None:
    main_for("failover", run, description=__doc__ or "", sizes={"rounds": "kills (alternating)"})


if __name__ == "__main__":
    main()
