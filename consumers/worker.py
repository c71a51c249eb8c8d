"""The projection worker: runs projections over the log until told to stop.

On SIGTERM or SIGINT it finishes the batch in hand, commits it with its checkpoint, and exits
0; a restart (or a SIGKILL and a restart) resumes from the checkpoint in SQLite, so every event
takes effect exactly once. ``python -m consumers.worker`` runs one without the rest of the CLI
(what the crash tests kill); ``eventstore worker`` is the same thing with the CLI's options.

One worker per database: it holds ``<db>.lock`` while it runs, so a second one on the same
file exits 1 at once, naming the first (``DatabaseLocked``); the lock dies with the process,
SIGKILL included. A database folded from another stream is refused (``ForeignDatabase``);
``reset=True`` (``--reset``) drops the file's projection data and folds from seq 1 instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from eventstore.errors import EventStoreError
from eventstore.logging import configure_logging
from eventstore.machines import Machines, load_machines
from eventstore.store import DEFAULT_URL, EventStore
from eventstore.streams import StreamSettings
from projections.db import ProjectionDB
from projections.loading import load_config, load_projections
from projections.projection import Projection
from projections.runner import Runner, RunnerSettings

__all__ = ["WORKER_PRODUCER", "main", "run_worker"]

log = structlog.get_logger("consumers.worker")

WORKER_PRODUCER = "projections-worker"


async def run_worker(
    store: EventStore,
    db_path: str | Path,
    projections: Sequence[Projection[Any]],
    *,
    stop: asyncio.Event,
    machines: Machines | None = None,
    settings: RunnerSettings | None = None,
    on_ready: Callable[[Runner], None] | None = None,
    reset: bool = False,
) -> int:
    """Fold the log into ``db_path`` until ``stop`` is set; returns the final checkpoint.

    ``reset``: drop what the file holds and fold the stream from seq 1 (on purpose, e.g. after
    the store was reset, when the worker refuses the file as another stream's)."""
    async with await ProjectionDB.open(db_path, lock=True) as db:
        runner = Runner(store, db, projections, machines=machines, settings=settings)
        await runner.open(reset=reset)
        head = await store.head()
        log.info(
            "worker ready",
            db=str(db_path),
            stream=store.settings.name,
            projections=[p.name for p in projections],
            checkpoint=runner.checkpoint,
            head=head,
        )
        if on_ready is not None:
            on_ready(runner)
        task = asyncio.create_task(runner.run(follow=True))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                runner.stop()
            checkpoint = await task
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("worker stopped", checkpoint=checkpoint, applied=runner.events_applied)
        return checkpoint


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m consumers.worker", description=__doc__)
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--stream", default="EVENTS")
    p.add_argument("--prefix", default="events")
    p.add_argument("--db", default="./eventstore.db")
    p.add_argument("--config", default=None)
    p.add_argument("--projection", action="append", default=[], metavar="NAME|module:object")
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--reset",
        action="store_true",
        help="drop the database's projection data and fold the stream from seq 1",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one worker with explicit options (no environment defaults but EVENTSTORE_CONFIG)."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    config = load_config(args.config)
    projections = load_projections(args.projection, config)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        store = await EventStore.connect(
            args.url,
            producer=WORKER_PRODUCER,
            stream=StreamSettings(name=args.stream, prefix=args.prefix),
            machines=load_machines(args.config),
        )
        try:
            await run_worker(
                store,
                args.db,
                projections,
                stop=stop,
                settings=config.runner_settings(),
                reset=args.reset,
            )
        finally:
            await store.close()
        return 0

    try:
        return asyncio.run(go())
    except EventStoreError as exc:
        sys.stderr.write(f"worker: {type(exc).__name__}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
