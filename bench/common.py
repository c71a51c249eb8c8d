"""Shared parts of the benchmarks: a private server, timing, output, realistic payloads, fills.

Every benchmark starts its own ``nats-server`` (the project's nats.conf, so ``sync_interval:
always``: every acknowledged write is fsynced before the ack) on a free 127.0.0.1 port with a
temporary store directory, uses real SQLite files in a temporary directory, and reports each
figure as a ratio against a baseline measured in the same run: absolute rates on a shared
2-core machine vary from run to run, ratios much less. Each prints a small plain-text table
and, last, one JSON line of its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from eventstore import AppendRequest, EmbeddedServer, EventStore, NewEvent, StreamSettings
from eventstore.server import default_config_path, free_port

__all__ = [
    "Timed",
    "bench_server",
    "connect",
    "entity_event",
    "fill",
    "main_for",
    "median",
    "percentile",
    "report",
    "timed",
]


# -- the server ------------------------------------------------------------------------------


def durable_config() -> Path:
    """The project's nats.conf, after checking that it fsyncs every write."""
    path = default_config_path()
    if "sync_interval: always" not in path.read_text():
        raise SystemExit(f"{path} does not set `sync_interval: always`: refusing to benchmark")
    return path


@contextlib.contextmanager
def bench_server() -> Iterator[tuple[EmbeddedServer, Path]]:
    """A private nats-server (project nats.conf, 127.0.0.1, free port) in a temporary
    directory, and that directory (for SQLite files); both gone afterwards.

    ``EVENTSTORE_BENCH_TMP`` picks the parent directory (default: the system's temp dir).
    """
    parent = os.environ.get("EVENTSTORE_BENCH_TMP")
    with tempfile.TemporaryDirectory(prefix="eventstore-bench-", dir=parent) as tmp:
        root = Path(tmp)
        server = EmbeddedServer(root / "nats", port=free_port(), config=durable_config())
        server.start()
        try:
            yield server, root
        finally:
            server.stop()


async def connect(
    server: EmbeddedServer, stream: str, prefix: str, *, producer: str = "bench"
) -> EventStore:
    """An ``EventStore`` on its own stream, with generous append timeouts for big fills."""
    return await EventStore.connect(
        server.url,
        producer=producer,
        stream=StreamSettings(name=stream, prefix=prefix),
        append_timeout=120.0,
    )


# -- timing ----------------------------------------------------------------------------------


class Timed:
    """Wall-clock seconds of a ``with timed() as t:`` block (``t.seconds``)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Timed]:
    t = Timed()
    t.start = time.perf_counter()
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - t.start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    rank = max(1, min(len(data), -(-len(data) * q // 100)))
    return data[int(rank) - 1]


# -- output ----------------------------------------------------------------------------------


def report(title: str, rows: Sequence[Sequence[Any]], figures: dict[str, Any]) -> None:
    """Print ``rows`` (the first is the header) as a plain-text table under ``title``, then
    the figures as one JSON line."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(json.dumps(figures))
    sys.stdout.flush()


# -- realistic events ------------------------------------------------------------------------

_STEPS = (
    "plan", "route", "retry", "index", "merge", "draft", "review", "deploy", "fetch", "parse",
    "summarise", "classify", "embed", "rank", "notify", "escalate",
)  # fmt: skip
_STATES = ("Queued", "Running", "Waiting", "Done")


def entity_data(aggregate: int, version: int, rng: random.Random) -> dict[str, Any]:
    """An agent-style change of one entity: a JSON object of about 200 bytes."""
    step = rng.choice(_STEPS)
    data: dict[str, Any] = {
        "task": f"task-{aggregate:05d}-{version // 10:05d}",
        "step": step,
        "attempt": version % 7,
        "progress": round((version % 100) / 100, 2),
        "tokens": {"in": rng.randrange(1000, 9000), "out": rng.randrange(100, 999)},
        "model": "gpt-4o-mini" if version % 3 else "claude-haiku",
        "note": f"{step} done for shard {version % 16:02d} of run {aggregate % 97:02d}",
        "labels": {"team": f"team-{aggregate % 12:02d}", "prio": version % 4},
    }
    if version % 25 == 0:
        data["scratch"] = None  # a merge-patch removal
    return data


def entity_event(aggregate: int, version: int, rng: random.Random) -> NewEvent:
    """``entity_data`` as an event; every 10th version also moves the entity's status, so the
    built-in ``entities`` projection exercises merge patches and transitions."""
    data = entity_data(aggregate, version, rng)
    if version % 10:
        return NewEvent("Progressed", data)
    before = _STATES[(version // 10 - 1) % len(_STATES)]
    after = _STATES[(version // 10) % len(_STATES)]
    return NewEvent("Moved", data, (before, after))


def data_bytes(data: dict[str, Any]) -> int:
    return len(msgspec.json.encode(data))


async def fill(
    store: EventStore,
    aggregate_type: str,
    aggregates: int,
    events: int,
    *,
    chunk: int = 5000,
    seed: int = 7,
) -> float:
    """Append ``events`` events round-robin over ``aggregates`` aggregates, one event per
    append and thousands of appends in flight (``append_many``), so the producer group-commits
    them into atomic batches. Returns the seconds it took."""
    rng = random.Random(seed)
    versions = [0] * aggregates
    done = 0
    with timed() as t:
        while done < events:
            requests = []
            for i in range(done, min(done + chunk, events)):
                a = i % aggregates
                versions[a] += 1
                event = entity_event(a, versions[a], rng)
                requests.append(AppendRequest(aggregate_type, f"agg-{a:05d}", [event]))
            results = await store.append_many(requests)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"{len(failed)} appends failed while filling: {failed[0]}")
            done += len(requests)
    return t.seconds


# -- command line ----------------------------------------------------------------------------


def stream_sizes(
    quick: bool,
    events: int | None,
    aggregates: int | None,
    rounds: int | None,
    *,
    full_events: int,
    quick_events: int = 10_000,
    full_rounds: int = 3,
) -> tuple[int, int, int]:
    """(events, aggregates, rounds) of a benchmark over one log of many aggregates: what the
    caller asked, else its defaults (``--quick``: small sizes, one round)."""
    return (
        events or (quick_events if quick else full_events),
        aggregates or (100 if quick else 1000),
        max(1, rounds or (1 if quick else full_rounds)),
    )


def main_for(
    module: str,
    run: Callable[..., Coroutine[Any, Any, dict[str, Any]]],
    description: str | None = None,
    sizes: dict[str, str] | None = None,
) -> None:
    """``python -m bench.MODULE [--quick] [--SIZE N ...]``: parse, run with quiet logs."""
    from eventstore.logging import configure_logging

    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    for option, help_text in (sizes or {}).items():
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, help=help_text)
    args = vars(parser.parse_args())
    quick = bool(args.pop("quick"))
    configure_logging("warning", json=False)
    asyncio.run(run(quick=quick, **{k: v for k, v in args.items() if v is not None}))
