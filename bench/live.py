"""Live latency benchmark: from an append to the change being queryable in SQLite.

A quiet stream, one event at a time: a projection runner follows the log (``Runner.run``) and
each ``--events`` event (default 300) is appended and then waited for with
``Runner.wait_for(seq)`` (read your writes), so the time covers the append's round trip and
fsync, the delivery to the runner, the fold and the SQLite commit of its batch.

Baseline, same server and same run: a raw nats-py ``js.publish`` of the same body on a stream
of its own, timed until a raw ordered push consumer's callback receives it: the fastest
"written, and visible to a reader" plain JetStream offers. Interleaved event by event, with a
short pause between events so that every one arrives on a quiet stream. The figures are the
medians and p99s, and our median as a multiple of the baseline's (a time: lower is better).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.common import (
    bench_server,
    connect,
    entity_event,
    main_for,
    median,
    percentile,
    report,
)
from eventstore.events import Envelope, encode_envelope, utcnow
from projections import EntitiesProjection, ProjectionDB, Runner

STREAM, PREFIX, TYPE = "LIVE", "live", "task"
# The baseline's own stream on the same server: on the runner's stream its messages (an
# envelope of task/r on another subject) were folded and quarantined by the runner while the
# baseline was timed, each with a warning in the benchmark's output.
RAW_STREAM, RAW_SUBJECT = "LIVERAW", "liveraw.r"
PAUSE = 0.02


async def run(quick: bool = False, events: int | None = None) -> dict[str, Any]:
    n = events or (30 if quick else 300)
    rng = random.Random(5)
    ours: list[float] = []
    raw: list[float] = []
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(name=RAW_STREAM, subjects=[RAW_SUBJECT])
            seen: dict[int, float] = {}
            arrived = asyncio.Event()

            async def on_raw(msg: Any) -> None:
                seen[msg.metadata.sequence.stream] = time.perf_counter()
                arrived.set()

            sub = await js.subscribe(
                RAW_SUBJECT,
                stream=RAW_STREAM,
                cb=on_raw,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            )
            body = encode_envelope(_envelope(store, rng))
            async with await ProjectionDB.open(root / "live.db") as db:
                runner = Runner(store, db, [EntitiesProjection()])
                following = asyncio.create_task(runner.run())
                try:
                    first = await store.append(TYPE, "warm", entity_event(0, 1, rng))
                    async with asyncio.timeout(30):
                        await runner.wait_for(first.last_seq)
                    for i in range(n):
                        started = time.perf_counter()
                        res = await store.append(TYPE, "a", entity_event(1, i + 1, rng))
                        async with asyncio.timeout(30):
                            await runner.wait_for(res.last_seq)
                        ours.append(time.perf_counter() - started)
                        await asyncio.sleep(PAUSE)

                        arrived.clear()
                        started = time.perf_counter()
                        ack = await js.publish(RAW_SUBJECT, body)
                        async with asyncio.timeout(30):
                            while ack.seq not in seen:
                                await arrived.wait()
                                arrived.clear()
                        raw.append(seen[ack.seq] - started)
                        await asyncio.sleep(PAUSE)
                finally:
                    runner.stop()
                    await following
            await sub.unsubscribe()
            await nc.close()
    ms = 1000.0
    figures: dict[str, Any] = {
        "events": n,
        "raw_median_ms": round(median(raw) * ms, 3),
        "raw_p99_ms": round(percentile(raw, 99) * ms, 3),
        "live_median_ms": round(median(ours) * ms, 3),
        "live_p99_ms": round(percentile(ours, 99) * ms, 3),
        "live_median_ratio": round(median(ours) / median(raw), 2),
    }
    report(
        f"live: {n} events one at a time on a quiet stream, append to queryable",
        [
            ("path", "median", "p99", "median vs raw (time)"),
            (
                "raw: js.publish until an ordered consumer receives it (baseline)",
                f"{figures['raw_median_ms']:.2f} ms",
                f"{figures['raw_p99_ms']:.2f} ms",
                "1.00",
            ),
            (
                "eventstore: append until the runner committed it to SQLite",
                f"{figures['live_median_ms']:.2f} ms",
                f"{figures['live_p99_ms']:.2f} ms",
                f"{figures['live_median_ratio']:.2f}",
            ),
        ],
        figures,
    )
    return figures


def _envelope(store: Any, rng: random.Random) -> Envelope:
    """A wire body of the same size as ours (the raw side only needs the bytes)."""
    event = entity_event(1, 1, rng)
    return Envelope(
        id="01a20859-a950-72ef-80f8-c68130138bc8",
        type=event.type,
        aggregate_type=TYPE,
        aggregate_id="r",
        version=1,
        occurred_at=utcnow(),
        producer=store.producer,
        lamport=1,
        vclock={store.producer: 1},
        data=event.data,
    )


def main() -> None:
    main_for("live", run, __doc__, {"events": "events appended one at a time (default 300)"})


if __name__ == "__main__":
    main()
