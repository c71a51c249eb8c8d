"""``eventstore console [--port 8800] [--host 127.0.0.1] [--token T]``: the web console
(``consumers.console``), served until SIGINT/SIGTERM.

A host other than loopback without ``--token`` / ``EVENTSTORE_CONSOLE_TOKEN`` is refused
before anything listens: one stderr line, exit 2 (like any other bad argument).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from consumers.cli_connect import security
from consumers.cliutil import EXIT_OK, EXIT_USAGE, command, non_empty, port_number, run
from consumers.console import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TOKEN_ENV,
    ConsoleSettings,
    check_exposure,
    serve_console,
)
from eventstore import ConfigError

__all__ = ["cmd_console", "register"]


def cmd_console(args: argparse.Namespace) -> int:
    settings = ConsoleSettings(
        url=args.url, stream=args.stream, prefix=args.prefix, projection=args.projection,
        host=args.host, port=args.port, token=args.token or os.environ.get(TOKEN_ENV) or None,
        **security(args),
    )  # fmt: skip
    try:
        check_exposure(settings)
    except ConfigError as exc:
        sys.stderr.write(f"eventstore console: error: {exc}\n")
        return EXIT_USAGE
    sys.stderr.write(f"eventstore console on http://{settings.host}:{settings.port}/\n")
    run(serve_console(settings))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``console`` to the ``eventstore`` parser."""
    p = command(
        subparsers, "console",
        help="serve the read-only web console (overview, aggregates, time travel, live tail)",
    )  # fmt: skip
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="default 8800")
    p.add_argument(
        "--host", default=DEFAULT_HOST, type=non_empty,
        help="address to listen on (default 127.0.0.1; any other needs --token)",
    )  # fmt: skip
    p.add_argument(
        "--token", type=non_empty,
        help=f"required of every request (env {TOKEN_ENV}); needed off loopback",
    )  # fmt: skip
    p.add_argument(
        "--projection", default="entities", type=non_empty,
        help="the projection whose states the console shows (default entities)",
    )  # fmt: skip
    p.set_defaults(func=cmd_console, service=True)
