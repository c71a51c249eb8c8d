"""Publish benchmark: EventStore.append against raw nats-py on the same durable server.

Both sides publish the same body size to the same server (nats.conf: fsync before every ack)
in the same run. Ours also carries a dedup id and the expected-last-subject-sequence on every
event, and assigns versions and clocks; raw publishes carry nothing.

- single: one append awaited at a time vs ``js.publish`` awaited one at a time.
- pipelined: many concurrent appends (the committer group-commits them in atomic batches) vs
  ``js.publish_async`` with every future awaited. Target: ours >= 2.0x raw.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from bench.common import bench_server, main_for, report, timed
from eventstore import EventStore, NewEvent, StreamSettings
from eventstore.events import Envelope, encode_envelope, utcnow


def _payload_size(data: dict[str, Any]) -> int:
    env = Envelope(
        id="01a20859-a950-72ef-80f8-c68130138bc8",
        type="Progressed",
        aggregate_type="agent",
        aggregate_id="agent-000",
        version=1000,
        occurred_at=utcnow(),
        producer="bench",
        lamport=100000,
        vclock={"bench": 100000},
        data=data,
    )
    return len(encode_envelope(env))


async def _raw_single(js: Any, subject: str, body: bytes, n: int) -> float:
    with timed() as t:
        for _ in range(n):
            await js.publish(subject, body)
    return n / t.seconds


async def _raw_async(js: Any, prefix: str, body: bytes, n: int, aggregates: int) -> float:
    with timed() as t:
        futs = [await js.publish_async(f"{prefix}.{i % aggregates}", body) for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*futs), 120)
    return n / t.seconds


async def _ours_single(store: EventStore, data: dict[str, Any], n: int) -> float:
    with timed() as t:
        for _ in range(n):
            await store.append("agent", "single", NewEvent("Progressed", data))
    return n / t.seconds


async def _ours_pipelined(
    store: EventStore, data: dict[str, Any], n: int, aggregates: int, concurrency: int
) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def writer() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await store.append("agent", f"agent-{i % aggregates:03d}", NewEvent("Progressed", data))

    with timed() as t:
        await asyncio.gather(*(writer() for _ in range(concurrency)))
    return n / t.seconds


async def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    n_single = 300 if quick else 2000
    n_pipe = 2000 if quick else 20000
    aggregates, concurrency = 100, 500
    rounds = rounds or (1 if quick else 3)
    data = {"step": "processing", "progress": 0.65, "note": "x" * 60}
    size = _payload_size(data)
    body = b"x" * size
    results: dict[str, list[float]] = {k: [] for k in ("raw1", "ours1", "rawp", "oursp")}
    with bench_server() as (server, _):
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="RAW", subjects=["raw.>"])
        async with await EventStore.connect(
            server.url, producer="bench", stream=StreamSettings(name="BENCH", prefix="bench")
        ) as store:
            await store.append("agent", "single", NewEvent("Warmup", data))
            await _raw_single(js, "raw.warm", body, 50)
            for _ in range(rounds):  # interleaved, so drift on a noisy machine hits both sides
                results["raw1"].append(await _raw_single(js, "raw.single", body, n_single))
                results["ours1"].append(await _ours_single(store, data, n_single))
                results["rawp"].append(await _raw_async(js, "raw.p", body, n_pipe, aggregates))
                results["oursp"].append(
                    await _ours_pipelined(store, data, n_pipe, aggregates, concurrency)
                )
        await nc.close()
    best = {k: max(v) for k, v in results.items()}
    figures = {
        "payload_bytes": size,
        "single_events_per_s": round(best["ours1"]),
        "raw_publish_per_s": round(best["raw1"]),
        "single_ratio": round(best["ours1"] / best["raw1"], 2),
        "pipelined_events_per_s": round(best["oursp"]),
        "raw_publish_async_per_s": round(best["rawp"]),
        "pipelined_ratio": round(best["oursp"] / best["rawp"], 2),
        "rounds": rounds,
    }
    report(
        f"publish ({size}-byte events, fsync on every ack, best of {rounds} interleaved rounds)",
        [
            ("mode", "eventstore", "raw nats-py", "ratio (target)"),
            (
                "single, awaited one by one",
                f"{best['ours1']:.0f}/s",
                f"{best['raw1']:.0f}/s js.publish",
                f"{figures['single_ratio']} (>= 0.8)",
            ),
            (
                f"pipelined, {concurrency} concurrent",
                f"{best['oursp']:.0f}/s",
                f"{best['rawp']:.0f}/s publish_async",
                f"{figures['pipelined_ratio']} (>= 2.0)",
            ),
        ],
        figures,
    )
    return figures


def main() -> None:
    main_for("publish", run, description=__doc__ or "", sizes={"rounds": "interleaved rounds"})


if __name__ == "__main__":
    main()
