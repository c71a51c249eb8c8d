"""The commands of ``eventstore`` that fold the log into the database: worker, up, rebuild.

``worker`` and ``up`` build the same ``consumers.Worker`` from the options and the config file
(``[machines]``, ``[projections]``) and run it until SIGINT/SIGTERM; ``up`` runs the embedded
nats-server beside it. ``worker --reset`` / ``up --reset`` start a refused database over on
purpose. ``python -m consumers.cli_worker`` runs a worker with explicit options only (what the
crash tests start and kill). ``rebuild`` folds the whole log into a fresh file and swaps it
in, printing one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from consumers.cli_connect import security
from consumers.cli_queries import configured_projections
from consumers.cliutil import (
    EXIT_OK,
    emit,
    open_store,
    run,
    run_command,
    shutdown_signals,
    stream_settings,
    url_port,
)
from consumers.metrics import DEFAULT_METRICS_HOST
from consumers.serve import DEFAULT_STORE_DIR, embedded_server, serve_until
from consumers.worker import WORKER_PRODUCER, Worker
from eventstore import DEFAULT_URL, configure_logging
from projections import rebuild

__all__ = ["cmd_rebuild", "cmd_up", "cmd_worker", "worker_main", "worker_of"]


def worker_of(args: argparse.Namespace) -> Worker:
    """The worker the options describe (a broken config fails here, before anything starts)."""
    return Worker.from_config(
        url=args.url,
        stream=stream_settings(args),
        db=args.db,
        config=args.config,
        projections=getattr(args, "projection", None) or (),
        reset=args.reset,
        metrics_port=getattr(args, "metrics_port", None),
        metrics_host=getattr(args, "metrics_host", DEFAULT_METRICS_HOST),
        reactors=getattr(args, "reactor", None) or (),
        **security(args),
    )


def cmd_worker(args: argparse.Namespace) -> int:
    worker = worker_of(args)

    async def go() -> None:
        with shutdown_signals() as stop:
            await worker.run_until(stop)

    run(go())
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    worker = worker_of(args)
    port = args.port if args.port is not None else url_port(args.url)
    store_dir = Path(args.store_dir or DEFAULT_STORE_DIR)

    async def go() -> None:
        with shutdown_signals() as stop:
            async with embedded_server(store_dir, port, worker.stream) as server:
                worker.url = server.url
                folding = asyncio.create_task(
                    worker.run_until(stop, on_ready=lambda _: _say_up(server.url, store_dir, args))
                )
                serving = asyncio.create_task(serve_until(server, stop))
                await asyncio.wait({folding, serving}, return_when=asyncio.FIRST_COMPLETED)
                stop.set()
                for task in (folding, serving):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    run(go())
    return EXIT_OK


def _say_up(url: str, store_dir: Path, args: argparse.Namespace) -> None:
    where = f"--url {url} --stream {args.stream} --prefix {args.prefix} --db {args.db}"
    sys.stdout.write(
        f"eventstore up: nats-server on {url} (store {store_dir}), projection worker writing "
        f"{args.db}\n"
        f"  agents connect to {url} (EVENTSTORE_URL={url}); try:\n"
        f'    eventstore publish agent asst_qa Created --data \'{{"model": "gpt-4"}}\' {where}\n'
        f"    eventstore state agent asst_qa {where}\n"
        f"    eventstore status {where}\n"
        "  Ctrl-C stops the worker (committing what it holds) and the server.\n"
    )
    sys.stdout.flush()


# -- rebuild -------------------------------------------------------------------------------


class _ProgressBar:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 40
        frac = 1.0 if total <= 0 else min(1.0, done / total)
        bar = "#" * int(frac * width)
        sys.stderr.write(f"\rrebuilding [{bar:<{width}}] {frac:6.1%}  seq {done}/{total}")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_rebuild(args: argparse.Namespace) -> int:
    projections, config = configured_projections(args)
    bar = _ProgressBar()

    async def go() -> Any:
        async with open_store(args, producer=WORKER_PRODUCER) as store:
            try:
                return await rebuild(
                    store, args.db, projections, settings=config.runner_settings(), progress=bar
                )
            finally:
                bar.finish()

    emit(run(go()))
    return EXIT_OK


def _worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m consumers.cli_worker", description=__doc__)
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--stream", default="EVENTS")
    p.add_argument("--prefix", default="events")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--db", default="./eventstore.db")
    p.add_argument("--config", default=None)
    p.add_argument("--projection", action="append", default=[], metavar="NAME|module:object")
    p.add_argument("--reactor", action="append", default=[], metavar="module:object")
    p.add_argument("--log-level", default=None, help="else EVENTSTORE_LOG_LEVEL, else info")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--creds", default=None, metavar="FILE")  # a secured server (issue 14)
    p.add_argument("--tls-ca", default=None, metavar="FILE")
    p.add_argument(
        "--reset",
        action="store_true",
        help="drop the database's projection data and fold the stream from seq 1",
    )
    return p


def worker_main(argv: list[str] | None = None) -> int:
    """Run one worker with explicit options (no environment defaults but EVENTSTORE_CONFIG):
    the same ``Worker``, signals and error lines as ``eventstore worker``."""
    args = _worker_parser().parse_args(argv)
    configure_logging(args.log_level, service=True)
    return run_command(cmd_worker, args, prog="worker")


if __name__ == "__main__":
    sys.exit(worker_main())
