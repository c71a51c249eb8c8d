"""``eventstore watch`` and the wait of ``eventstore publish --wait``: thin shells over
``ProjectionClient.watch`` / ``wait_for`` (``consumers.watching``).

``eventstore watch [TYPE [ID]] [--projection NAME] [--latest]`` prints the current state of
every matching aggregate, then every change, one JSON object per line, flushed:
``{"projection","aggregate_type","aggregate_id","version","seq","state"}``. It runs until
SIGINT/SIGTERM or until the reader of its pipe goes away, and exits 0 then.
"""

from __future__ import annotations

import argparse
from typing import Any

from consumers.cli_connect import security
from consumers.client import DEFAULT_PROJECTION, ProjectionClient
from consumers.cliutil import (
    EXIT_OK,
    aggregate_id,
    aggregate_type,
    command,
    emit,
    non_empty,
    run,
    shutdown_signals,
)
from consumers.pipes import reader_gone, until_stopped
from eventstore import EventStore

__all__ = ["DEFAULT_WAIT", "cmd_watch", "register", "seconds", "wait_applied"]

DEFAULT_WAIT = 10.0  # seconds `publish --wait` waits without a number


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds (at most a day)."""
    try:
        value = float(text)
    except ValueError:
        shown = repr(text[:40])
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {shown}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 86400, got {text[:40]}")
    return value


async def wait_applied(store: EventStore, seq: int, timeout: float) -> None:
    """``publish --wait``: until the default projection has applied ``seq`` (RequestTimeout,
    naming the projection and how far it got, after ``timeout``)."""
    await ProjectionClient(store).wait_for(seq, projection=DEFAULT_PROJECTION, timeout=timeout)


def cmd_watch(args: argparse.Namespace) -> int:
    async def go() -> None:
        with shutdown_signals() as stop, reader_gone(stop):  # `watch | head -3` ends
            async with await ProjectionClient.connect(
                args.url, stream=args.stream, **security(args)
            ) as client:

                async def follow() -> None:
                    async for change in client.watch(
                        args.projection, args.aggregate_type, args.aggregate_id,
                        latest=args.latest,
                    ):  # fmt: skip
                        emit(change)

                await until_stopped(follow(), stop)

    run(go())
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``watch`` to the ``eventstore`` parser."""
    p = command(
        subparsers,
        "watch",
        help="the current states of a projection's aggregates, then every change, one JSON "
        "object per line, flushed, until Ctrl-C (from the query service and change feed)",
    )
    p.add_argument(
        "aggregate_type", metavar="TYPE", nargs="?", type=aggregate_type,
        help="only this aggregate type",
    )  # fmt: skip
    p.add_argument(
        "aggregate_id", metavar="ID", nargs="?", type=aggregate_id, help="only this aggregate"
    )
    p.add_argument(
        "--projection", default=DEFAULT_PROJECTION, type=non_empty, metavar="NAME",
        help=f"the projection to follow (default {DEFAULT_PROJECTION})",
    )  # fmt: skip
    p.add_argument(
        "--latest", action="store_true",
        help="only the latest state of each aggregate: may skip versions, never goes back",
    )  # fmt: skip
    p.set_defaults(func=cmd_watch)
