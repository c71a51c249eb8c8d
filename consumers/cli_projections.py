"""The projection commands of ``eventstore``: worker, state, diff, conflicts, quarantine,
rebuild, verify, status and up. Each parses, calls one library function, prints; this module
holds their parser, the commands live in ``consumers.cli_worker`` (worker, up, rebuild: they
write the database) and ``consumers.cli_queries`` (the read commands).

``register(subparsers)`` adds them to the ``eventstore`` parser; ``python -m
consumers.cli_projections`` runs them on their own (same global options).

Output: ``state``, ``diff`` and ``rebuild`` print one JSON object; ``conflicts``,
``quarantine`` and ``status`` one JSON object per line; ``verify`` one line per mismatch and a
summary, exiting 1 if anything differs. ``worker`` and ``up`` run until SIGINT/SIGTERM.

The read commands (state, diff, conflicts, quarantine, status, verify) open the database read
only and never create or migrate it; ``state`` of the current state needs no server. A
database that is not a fold of the stream is refused (``status`` prints it flagged and exits
1); ``worker --reset`` / ``up --reset`` start it over on purpose.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from consumers.cli_ops import metrics_options
from consumers.cli_queries import (
    DEFAULT_PROJECTION,
    cmd_conflicts,
    cmd_diff,
    cmd_quarantine,
    cmd_state,
    cmd_status,
    cmd_verify,
)
from consumers.cli_worker import cmd_rebuild, cmd_up, cmd_worker
from consumers.cliutil import (
    CliParser,
    add_global_options,
    aggregate_id,
    aggregate_type,
    command,
    non_empty,
    non_negative_int,
    port_number,
    positive_int,
    run_command,
)
from eventstore import configure_logging
from projections import BUILTIN_PROJECTIONS

__all__ = ["main", "register"]


# -- the parser ----------------------------------------------------------------------------


def _projection_option(p: argparse.ArgumentParser, *, many: bool) -> None:
    builtins = ", ".join(sorted(BUILTIN_PROJECTIONS))
    if many:
        p.add_argument(
            "--projection",
            action="append",
            default=[],
            metavar="NAME|module:object",
            help=f"also run this projection (built-in: {builtins}; or package.module:object); "
            "repeatable, added to [projections] load of the config file",
        )
    else:
        p.add_argument(
            "--projection",
            default=None,
            metavar="NAME|module:object",
            help=f"the projection to ask (default {DEFAULT_PROJECTION}; built-in: {builtins})",
        )


def _reset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reset",
        action="store_true",
        help="start over on purpose: drop everything the --db file holds and fold the stream "
        "from seq 1 (what to do when the worker refuses the file as another stream's)",
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the projection commands to the ``eventstore`` parser."""
    p = command(
        subparsers,
        "worker",
        help="fold the log into the projection database until "
        "SIGTERM/SIGINT (commits the batch in hand, then exits)",
    )
    _projection_option(p, many=True)
    p.add_argument("--reactor", action="append", default=[], metavar="module:object",
                   help="also run this reactor (one active across all workers)")  # fmt: skip
    _reset_option(p)
    metrics_options(p)
    p.set_defaults(func=cmd_worker, service=True)

    p = command(
        subparsers,
        "state",
        help="an aggregate's state now (from the projection) or "
        "at a past version, sequence or time (snapshot + replay)",
    )
    p.add_argument("aggregate_type", metavar="TYPE", type=aggregate_type)
    p.add_argument("aggregate_id", metavar="ID", type=aggregate_id)
    p.add_argument("--version", type=non_negative_int, metavar="N", help="state after version N")
    p.add_argument(
        "--seq", type=non_negative_int, metavar="S", help="state as of stream sequence S"
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="state as of recorded time (ISO 8601, e.g. 2025-01-13T10:30:00Z)",
    )
    _projection_option(p, many=False)
    p.set_defaults(func=cmd_state)

    p = command(subparsers, "diff", help="what changed in an aggregate between two points")
    p.add_argument("aggregate_type", metavar="TYPE", type=aggregate_type)
    p.add_argument("aggregate_id", metavar="ID", type=aggregate_id)
    p.add_argument(
        "--from",
        dest="from_point",
        required=True,
        metavar="POINT",
        help="version:N, seq:S, at:TIME (or a bare version or ISO time)",
    )
    p.add_argument(
        "--to", dest="to_point", default="now", metavar="POINT", help="same forms, or now (default)"
    )
    _projection_option(p, many=False)
    p.set_defaults(func=cmd_diff)

    for name, func, what in (
        (
            "conflicts",
            cmd_conflicts,
            "recorded conflicts (concurrent writes) and how each was resolved",
        ),
        ("quarantine", cmd_quarantine, "messages a projection could not apply, with the reason"),
    ):
        p = command(subparsers, name, help=f"{what}, one JSON object per line")
        p.add_argument("aggregate_type", metavar="TYPE", nargs="?", type=aggregate_type)
        p.add_argument("aggregate_id", metavar="ID", nargs="?", type=aggregate_id)
        _projection_option(p, many=False)
        p.set_defaults(func=func)

    p = command(
        subparsers,
        "rebuild",
        help="fold the whole log into a fresh database beside "
        "the live one and swap it in when caught up",
    )
    _projection_option(p, many=True)
    p.set_defaults(func=cmd_rebuild)

    p = command(
        subparsers,
        "verify",
        help="fold the log independently and compare with the "
        "projection database; exit 1 naming every mismatch",
    )
    _projection_option(p, many=True)
    p.set_defaults(func=cmd_verify)

    p = command(
        subparsers,
        "status",
        help="one JSON document: the stream (messages, bytes, first/last seq and time), per "
        "projection checkpoint, lag, snapshot/conflict/quarantine counts, the server",
    )
    p.add_argument(
        "--watch", type=positive_int, metavar="N", help="refresh every N seconds until Ctrl-C"
    )
    p.set_defaults(func=cmd_status)

    p = command(
        subparsers,
        "up",
        help="run the embedded nats-server and a projection worker together for local use",
    )
    p.add_argument(
        "--port", type=port_number, help="port on 127.0.0.1 (default: the port of --url)"
    )
    p.add_argument(
        "--store-dir",
        default=None,
        type=non_empty,
        help="JetStream store directory (default ./data/nats)",
    )
    _projection_option(p, many=True)
    _reset_option(p)
    metrics_options(p)
    p.set_defaults(func=cmd_up, service=True)


def main(argv: list[str] | None = None) -> int:
    """The projection commands alone (``python -m consumers.cli_projections``)."""
    parser = CliParser(prog="eventstore", description=__doc__)
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, service=getattr(args, "service", False))
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
