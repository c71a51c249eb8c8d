"""The operations commands of ``eventstore``: ``systemd render``, ``export``, ``import``, and
the ``--metrics-port`` options of ``worker``/``up``. Each parses, calls one library function
(``consumers.systemd.write_units``, ``eventstore.export_events``, ``eventstore.import_events``)
and prints one JSON line; progress bars (rich) are drawn on stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from consumers.cliutil import (
    EXIT_OK,
    CliError,
    aggregate_id,
    aggregate_type,
    command,
    emit,
    non_empty,
    non_negative_int,
    open_store,
    port_number,
    run,
)
from consumers.metrics import DEFAULT_METRICS_HOST
from consumers.systemd import UnitOptions, cluster_hosts, write_units
from eventstore import Malformed, export_events, import_events

__all__ = ["iso_time", "metrics_options", "register"]

IMPORT_PRODUCER = "eventstore-import"


def iso_time(text: str) -> datetime:
    """argparse type: an ISO 8601 time (``Z`` allowed; no zone means UTC)."""
    value = text.strip()
    try:
        dt = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:60]!r} is not an ISO 8601 time like 2025-01-13T10:30:00Z"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def metrics_options(p: argparse.ArgumentParser) -> None:
    """``--metrics-port`` / ``--metrics-host`` of the services that fold (worker, up)."""
    env_port = os.environ.get("EVENTSTORE_METRICS_PORT") or None
    p.add_argument(
        "--metrics-port", type=port_number, default=env_port, metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (env EVENTSTORE_METRICS_PORT;"
        " default: no metrics)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-host", default=DEFAULT_METRICS_HOST, type=non_empty, metavar="HOST",
        help=f"address the metrics listen on (default {DEFAULT_METRICS_HOST}, loopback only)",
    )  # fmt: skip


@contextlib.contextmanager
def _bar(what: str) -> Iterator[Any]:
    """A progress callback ``(done, total)``: a rich bar on a terminal, else nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn(what), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total or None)

        yield update


def _warn(skipped: Malformed) -> None:
    sys.stderr.write(f"eventstore: warning: not an event, left out: seq {skipped.seq}\n")


def cmd_systemd_render(args: argparse.Namespace) -> int:
    options = UnitOptions(
        user=args.user,
        venv=args.venv,
        config=args.config or UnitOptions().config,
        url=args.url,
        stream=args.stream,
        prefix=args.prefix,
        log_level="info" if args.log_level == "warning" else args.log_level,
        cluster=cluster_hosts(args.cluster) if args.cluster else (),
    )
    written = write_units(args.out, options)
    emit({"written": [str(p) for p in written]})
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    if args.aggregate_id is not None and args.aggregate_type is None:
        raise CliError("give TYPE before ID")

    async def go(out: BinaryIO) -> Any:
        async with open_store(args) as store:
            with _bar("exporting") as progress:
                return await export_events(
                    store, out, from_seq=args.from_seq, since=args.since, until=args.until,
                    aggregate_type=args.aggregate_type, aggregate_id=args.aggregate_id,
                    progress=progress, on_malformed=_warn,
                )  # fmt: skip

    if args.out is None:
        report = run(go(sys.stdout.buffer))
    else:
        with Path(args.out).open("wb") as out:
            report = run(go(out))
    sys.stderr.write(f"eventstore export: {report.events} events, up to seq {report.last_seq}\n")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file)

    async def go(source: BinaryIO, size: int) -> Any:
        async with open_store(args, producer=IMPORT_PRODUCER) as store:
            with _bar("importing") as progress:
                return await import_events(store, source, size=size, progress=progress)

    with path.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        emit(run(go(source, size)))
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``systemd``, ``export`` and ``import`` to the ``eventstore`` parser."""
    p = command(sub, "systemd", help="systemd units for the NATS server and the workers")
    units = p.add_subparsers(dest="systemd_command", metavar="ACTION", parser_class=type(p))
    units.required = True
    r = command(
        units, "render", help="write nats-server.service, eventstore-worker@.service (one "
        "instance per config) and eventstore.env into --out DIR",
    )  # fmt: skip
    r.add_argument("--out", required=True, type=non_empty, metavar="DIR")
    r.add_argument(
        "--user", default="eventstore", type=non_empty, help="the services' user and group "
        "(default eventstore: create it with `useradd --system eventstore`)",
    )  # fmt: skip
    r.add_argument(
        "--venv", type=non_empty, metavar="DIR",
        help="venv whose bin/eventstore the units run (default: this one)",
    )  # fmt: skip
    r.add_argument(
        "--cluster", metavar="HOST,HOST,HOST", type=non_empty,
        help="a JetStream cluster: one directory of units and nats.conf per host",
    )  # fmt: skip
    r.epilog = "--config FILE: each worker's config (default /etc/eventstore/%%i.toml)"
    r.set_defaults(func=cmd_systemd_render)

    p = command(sub, "export", help="write the audit trail as JSON Lines (envelope + seq + "
                "recorded_at, one event per line), oldest first")  # fmt: skip
    p.add_argument("aggregate_type", metavar="TYPE", nargs="?", type=aggregate_type)
    p.add_argument("aggregate_id", metavar="ID", nargs="?", type=aggregate_id)
    p.add_argument("--since", type=iso_time, metavar="TIME", help="recorded at or after TIME")
    p.add_argument("--until", type=iso_time, metavar="TIME", help="recorded at or before TIME")
    p.add_argument("--from-seq", type=non_negative_int, default=1, metavar="S")
    p.add_argument("--out", type=non_empty, metavar="FILE", help="default: stdout")
    p.set_defaults(func=cmd_export)

    p = command(sub, "import", help="store the events of an export (same ids, versions and "
                "clocks); what the stream holds already is skipped")  # fmt: skip
    p.add_argument("file", metavar="FILE", type=non_empty)
    p.set_defaults(func=cmd_import)
