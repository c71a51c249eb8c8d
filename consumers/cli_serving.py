"""The commands that read projections through the query service when no database is named:
``state`` without ``--db`` / ``EVENTSTORE_DB`` (``remote_state``, called by
``consumers.cli_queries.cmd_state``) and ``query``.

``eventstore query PROJECTION [--type TYPE] [--where FIELD=VALUE ...] [--limit N]`` prints one
JSON object per matching aggregate, ``{"projection","aggregate_type","aggregate_id",
"version","seq","state"}``, from the query service, or from the file with ``--db``. A VALUE is
read as JSON when it parses (``n=3`` matches the number 3), else as a string (``tag=abc``).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from consumers.cli_connect import security
from consumers.cli_output import state_output
from consumers.client import DEFAULT_PROJECTION, ProjectionClient
from consumers.cliutil import EXIT_OK, aggregate_type, command, db_given, emit, positive_int, run
from eventstore import ForeignDatabase
from projections import (
    MAX_LIMIT,
    PastState,
    Point,
    ProjectionDB,
    Scalar,
    StateRecord,
    check_stream_name,
    load_config,
    query_states,
)

__all__ = ["cmd_query", "register", "remote_state", "where_item"]


def remote_state(args: argparse.Namespace, name: str, point: Point | None) -> dict[str, Any]:
    """``eventstore state`` of projection ``name`` answered by the query service (no database
    here at all)."""

    async def go() -> dict[str, Any]:
        async with await ProjectionClient.connect(
            args.url, stream=args.stream, **security(args)
        ) as client:
            p = point or Point()
            got = await client.state(
                args.aggregate_type,
                args.aggregate_id,
                projection=name,
                version=p.version,
                seq=p.seq,
                at=p.at,
            )
        state = PastState(
            aggregate_type=got.aggregate_type,
            aggregate_id=got.aggregate_id,
            version=got.version,
            seq=got.seq,
            state=got.state,
            vclock=got.vclock,
            lamport=got.lamport,
            recorded_at=got.recorded_at,
            snapshot_version=got.snapshot_version,
            replayed=got.replayed,
            rules_version=got.rules_version,
        )
        return state_output(state, past=point is not None)

    return run(go())


def where_item(text: str) -> tuple[str, Scalar]:
    """argparse type: ``FIELD=VALUE``, VALUE as JSON if it parses (a scalar), else a string."""
    field, sep, raw = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"use FIELD=VALUE, got {text[:60]!r}")
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return field, raw
    if isinstance(value, dict | list):
        raise argparse.ArgumentTypeError(
            f"{field}: compare with a string, number, true, false or null, not {raw[:60]!r}"
        )
    return field, value


async def _pages(args: argparse.Namespace, where: dict[str, Scalar]) -> AsyncIterator[StateRecord]:
    left = args.limit
    size = min(left or MAX_LIMIT, MAX_LIMIT)
    if db_given(args):
        db = await ProjectionDB.open(Path(args.db), readonly=True)
        async with db:
            problem = await check_stream_name(db, args.stream)
            if problem is not None:
                raise ForeignDatabase(str(args.db), problem)
            cursor = None
            while True:
                page = await query_states(
                    db, args.name, aggregate_type=args.type, where=where, limit=size, cursor=cursor
                )
                for item in page.items:
                    yield item
                if page.next_cursor is None:
                    return
                cursor = page.next_cursor
    async with await ProjectionClient.connect(
        args.url, stream=args.stream, **security(args)
    ) as client:
        async for reply in client.query_all(args.name, aggregate_type=args.type, where=where,
                                            limit=size):  # fmt: skip
            for item in reply.items:
                yield item


def cmd_query(args: argparse.Namespace) -> int:
    load_config(args.config)  # a broken config is one line, before anything connects
    where = dict(args.where)

    async def go() -> None:
        printed = 0
        async for item in _pages(args, where):
            emit(item)
            printed += 1
            if args.limit is not None and printed >= args.limit:
                return

    run(go())
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``query`` to the ``eventstore`` parser."""
    p = command(
        subparsers,
        "query",
        help="list a projection's aggregates and their current states, one JSON object per "
        "line (from the query service; from the file with --db)",
    )
    p.add_argument("name", metavar="PROJECTION", help=f"e.g. {DEFAULT_PROJECTION}")
    p.add_argument("--type", type=aggregate_type, metavar="TYPE", help="only this aggregate type")
    p.add_argument(
        "--where",
        type=where_item,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="top-level field equals VALUE (JSON if it parses: n=3 is the number, tag=abc a "
        "string); repeatable, all must match",
    )
    p.add_argument("--limit", type=positive_int, metavar="N", help="print at most N (default all)")
    p.set_defaults(func=cmd_query)
