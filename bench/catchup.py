"""Catch-up benchmark: the projection runner folding a whole stream into a fresh SQLite file,
against a raw nats-py ordered push consumer draining the same stream, in the same run.

- fill: ``--events`` events (default 200k) over ``--aggregates`` aggregates (default 1000),
  agent-style ~200-byte ``data`` objects with a status transition every 10th version, appended
  through ``EventStore.append_many`` (group-committed atomic batches, fsynced by the server).
- baseline: a raw nats-py ordered push consumer (``js.subscribe(ordered_consumer=True)``) that
  only counts the messages, no decode, from sequence 1 to the head.
- measured: ``Runner(...).catch_up()`` with the built-in ``entities`` projection from
  checkpoint 0 to the head into a fresh SQLite file: every event decoded, folded (merge patch
  + transition) and committed with its checkpoint and the local copy of the events (on by
  default); once with snapshots off and once with a snapshot every 100 versions, and once more
  with snapshots off and ``keep_events = false`` (what the copy costs). Target: ratio >= 0.5.
- ``--rounds`` interleaved rounds (default 3) of baseline, runner, runner with snapshots; each
  figure is the best of its rounds, the baseline's included (the first reading after a fill
  is slower, whoever does it, so a single round mostly measures who came first).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.common import (
    bench_server,
    connect,
    data_bytes,
    entity_data,
    fill,
    main_for,
    report,
    stream_sizes,
    timed,
)
from eventstore import EventStore
from projections import EntitiesProjection, ProjectionDB, Runner, RunnerSettings, SnapshotPolicy

STREAM, PREFIX, TYPE = "CATCHUP", "catchup", "task"
NO_SNAPSHOTS = SnapshotPolicy(every=1 << 62, interval=0)
EVERY_100 = SnapshotPolicy(every=100, interval=0)


async def raw_drain(url: str, count: int, timeout: float = 600.0) -> float:
    """Seconds for a raw nats-py ordered push consumer to receive ``count`` messages."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        done = asyncio.Event()
        received = 0

        async def on_msg(msg: Any) -> None:
            nonlocal received
            received += 1
            if received >= count:
                done.set()

        with timed() as t:
            sub = await js.subscribe(
                f"{PREFIX}.>",
                stream=STREAM,
                cb=on_msg,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
            await asyncio.wait_for(done.wait(), timeout)
        await sub.unsubscribe()
        return t.seconds
    finally:
        await nc.close()


async def runner_catch_up(
    store: EventStore, path: Any, snapshots: SnapshotPolicy, keep_events: bool = True
) -> tuple[float, int, dict[str, int]]:
    """Seconds for a runner to fold the log into a fresh file (opening it included), the
    checkpoint reached, and what the file holds afterwards."""
    settings = RunnerSettings(snapshots=snapshots, keep_events=keep_events)
    with timed() as t:
        async with await ProjectionDB.open(path) as db:
            checkpoint = await Runner(
                store, db, [EntitiesProjection()], settings=settings
            ).catch_up()
    async with await ProjectionDB.open(path) as db:
        row = await db.fetchone(
            "SELECT count(*), coalesce(sum(version), 0) FROM states WHERE projection = 'entities'"
        )
        snaps = await db.fetchone("SELECT count(*) FROM snapshots")
    held = {"aggregates": int(row[0]), "versions": int(row[1]), "snapshots": int(snaps[0])}
    return t.seconds, checkpoint, held


async def run(
    quick: bool = False,
    events: int | None = None,
    aggregates: int | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    n, n_aggs, n_rounds = stream_sizes(quick, events, aggregates, rounds, full_events=200_000)
    with bench_server() as (server, root):
        async with await connect(server, STREAM, PREFIX) as store:
            fill_s = await fill(store, TYPE, n_aggs, n)
            head = await store.head()
            info = await store.js.stream_info(STREAM)
            if head != n:
                raise RuntimeError(f"stream holds {head} messages, expected {n}")
            drains: list[float] = []
            plains: list[float] = []
            snaps: list[float] = []
            no_copy: list[float] = []
            for r in range(n_rounds):
                drains.append(await raw_drain(server.url, n))
                for times, policy, name, keep in (
                    (plains, NO_SNAPSHOTS, "plain", True),
                    (snaps, EVERY_100, "snap", True),
                    (no_copy, NO_SNAPSHOTS, "nocopy", False),
                ):
                    seconds, checkpoint, held = await runner_catch_up(
                        store, root / f"{name}-{r}.db", policy, keep
                    )
                    if checkpoint != n or held["aggregates"] != n_aggs or held["versions"] != n:
                        raise RuntimeError(
                            f"catch-up incomplete: checkpoint {checkpoint}, file holds {held}"
                        )
                    if policy is EVERY_100:
                        snapped = held
                    times.append(seconds)
    raw_rate = n / min(drains)
    plain_rate, snap_rate = n / min(plains), n / min(snaps)
    no_copy_rate = n / min(no_copy)
    figures: dict[str, Any] = {
        "events": n,
        "aggregates": n_aggs,
        "data_bytes": data_bytes(entity_data(1, 1, random.Random(1))),
        "message_bytes": round(info.state.bytes / n),
        "fill_events_per_s": round(n / fill_s),
        "raw_drain_events_per_s": round(raw_rate),
        "rounds": n_rounds,
        "raw_drain_runs_per_s": [round(n / s) for s in drains],
        "catchup_runs_per_s": [round(n / s) for s in plains],
        "catchup_snap100_runs_per_s": [round(n / s) for s in snaps],
        "catchup_events_per_s": round(plain_rate),
        "catchup_ratio": round(plain_rate / raw_rate, 3),
        "catchup_snap100_events_per_s": round(snap_rate),
        "catchup_snap100_ratio": round(snap_rate / raw_rate, 3),
        "catchup_no_copy_runs_per_s": [round(n / s) for s in no_copy],
        "catchup_no_copy_events_per_s": round(no_copy_rate),
        "catchup_no_copy_ratio": round(no_copy_rate / raw_rate, 3),
        "snapshots_written": snapped["snapshots"],
        "target_ratio": 0.5,
    }
    report(
        f"catch-up: {n:,} events over {n_aggs:,} aggregates "
        f"({figures['message_bytes']} bytes per stored message), fresh SQLite file, "
        f"best of {n_rounds} interleaved rounds",
        [
            ("reader", "events/s", "ratio vs raw"),
            ("raw nats-py ordered consumer, count only (baseline)", f"{raw_rate:,.0f}", "1.000"),
            (
                "runner: decode + fold + commit + copy, snapshots off",
                f"{plain_rate:,.0f}",
                f"{figures['catchup_ratio']:.3f} (target >= 0.5)",
            ),
            (
                "runner: same, snapshot every 100 versions",
                f"{snap_rate:,.0f}",
                f"{figures['catchup_snap100_ratio']:.3f}",
            ),
            (
                "runner: snapshots off, keep_events = false (no copy)",
                f"{no_copy_rate:,.0f}",
                f"{figures['catchup_no_copy_ratio']:.3f}",
            ),
        ],
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "catchup",
        run,
        __doc__,
        {
            "events": "events in the stream (default 200000)",
            "aggregates": "default 1000",
            "rounds": "interleaved rounds, best of each (default 3)",
        },
    )


if __name__ == "__main__":
    main()
