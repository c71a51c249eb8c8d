"""The read commands of ``eventstore``: state, diff, conflicts, quarantine, status, verify.

Each parses, calls one library function, prints (the JSON shapes in ``consumers.cli_output``).
They open the database read only and never create or migrate it; ``state`` of the current
state needs no server. A database that is not a fold of the stream is refused (``status``
prints it flagged and exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from consumers.cli_output import diff_output, state_output
from consumers.cli_serving import remote_state
from consumers.cliutil import EXIT_ERROR, EXIT_OK, CliError, db_given, emit, open_store, run
from eventstore import EventStore, ForeignDatabase, ProjectionError, server_health
from projections import (
    BUILTIN_PROJECTIONS,
    Point,
    Projection,
    ProjectionDB,
    ProjectionsConfig,
    ProjectionStatus,
    TimeTravel,
    check_database,
    check_stream_name,
    current_state,
    list_conflicts,
    list_quarantine,
    load_config,
    load_projection,
    load_projections,
    projection_status,
    resolver_from_spec,
    verify,
)

__all__ = [
    "DEFAULT_PROJECTION",
    "cmd_conflicts",
    "cmd_diff",
    "cmd_quarantine",
    "cmd_state",
    "cmd_status",
    "cmd_verify",
    "configured_projections",
]

DEFAULT_PROJECTION = "entities"


# -- shared --------------------------------------------------------------------------------


def configured_projections(
    args: argparse.Namespace,
) -> tuple[list[Projection[Any]], ProjectionsConfig]:
    """The projections the config's ``load`` and ``--projection`` name, and the config."""
    config = load_config(args.config)
    return load_projections(getattr(args, "projection", None) or (), config), config


def _one_projection(args: argparse.Namespace) -> Projection[Any]:
    """The projection a query names (``--projection``, default ``entities``), as configured."""
    config = load_config(args.config)
    projection = load_projection(args.projection or DEFAULT_PROJECTION)
    chosen = config.resolvers.get(projection.name)
    if chosen:
        projection.resolver = resolver_from_spec(chosen)
        projection.validate()
    return projection


async def _open_db(
    args: argparse.Namespace, *, required: bool, store: EventStore | None = None
) -> ProjectionDB | None:
    """The database, read-only: read commands never create, migrate or write it; a missing
    (when ``required``), empty or foreign file is an error, and so is another stream's file:
    by the stream name it records, and with ``store`` by the stream's identity and head.
    ``None`` when it does not exist and is not required (time travel then folds from the log).
    """
    path = Path(args.db)
    if not required and not await asyncio.to_thread(path.exists):
        return None
    db = await ProjectionDB.open(path, readonly=True)
    try:
        if store is not None:
            problem = await check_database(store, db)
        else:
            problem = await check_stream_name(db, args.stream)
        if problem is not None:
            raise ForeignDatabase(str(path), problem)
    except BaseException:
        await db.close()
        raise
    return db


# -- state / diff --------------------------------------------------------------------------


def _point_args(args: argparse.Namespace) -> Point | None:
    given = [
        (name, value)
        for name, value in (("version", args.version), ("seq", args.seq), ("at", args.at))
        if value is not None
    ]
    if len(given) > 1:
        raise CliError("give one of --version, --seq, --at")
    if not given:
        return None
    name, value = given[0]
    return Point.parse(f"{name}:{value}")


def cmd_state(args: argparse.Namespace) -> int:
    point = _point_args(args)
    if not db_given(args):  # neither --db nor EVENTSTORE_DB: ask the query service
        spec = args.projection or DEFAULT_PROJECTION
        if ":" in spec or spec in BUILTIN_PROJECTIONS:
            spec = _one_projection(args).name  # checked (and its config) before connecting
        else:  # a name only the worker's code knows: the worker answers for it
            load_config(args.config)
        emit(remote_state(args, spec, point))
        return EXIT_OK
    projection = _one_projection(args)

    async def now() -> dict[str, Any]:
        # The state now is in the database: no server needed.
        db = await _open_db(args, required=True)
        assert db is not None
        async with db:
            state = await current_state(db, projection, args.aggregate_type, args.aggregate_id)
            return state_output(state, past=False)

    async def go() -> dict[str, Any]:
        async with open_store(args) as store:
            db = await _open_db(args, required=False, store=store)
            try:
                tt = TimeTravel(store, projection, db)
                assert point is not None
                past = await tt.state_at(
                    args.aggregate_type,
                    args.aggregate_id,
                    version=point.version,
                    seq=point.seq,
                    at=point.at,
                )
                return state_output(past, past=True)
            finally:
                if db is not None:
                    await db.close()

    emit(run(now() if point is None else go()))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    projection = _one_projection(args)
    start, end = Point.parse(args.from_point), Point.parse(args.to_point)

    async def go() -> dict[str, Any]:
        async with open_store(args) as store:
            db = await _open_db(args, required=False, store=store)
            try:
                tt = TimeTravel(store, projection, db)
                return diff_output(
                    await tt.diff(args.aggregate_type, args.aggregate_id, start, end)
                )
            finally:
                if db is not None:
                    await db.close()

    emit(run(go()))
    return EXIT_OK


# -- records, status -----------------------------------------------------------------------


def _emit_records(
    args: argparse.Namespace,
    lister: Callable[[ProjectionDB, str, str | None, str | None], Awaitable[list[Any]]],
) -> int:
    """One JSON line per record a projection's lister returns (conflicts, quarantine)."""
    name = _one_projection(args).name

    async def go() -> list[Any]:
        db = await _open_db(args, required=True)
        assert db is not None
        async with db:
            return await lister(db, name, args.aggregate_type, args.aggregate_id)

    for record in run(go()):
        emit(record)
    return EXIT_OK


def cmd_conflicts(args: argparse.Namespace) -> int:
    return _emit_records(args, list_conflicts)


def cmd_quarantine(args: argparse.Namespace) -> int:
    return _emit_records(args, list_quarantine)


def cmd_status(args: argparse.Namespace) -> int:
    async def go() -> tuple[list[ProjectionStatus], Any]:
        async with open_store(args) as store:
            db = await _open_db(args, required=True)
            assert db is not None
            async with db:
                statuses = await projection_status(store, db)
            if not statuses:
                raise ProjectionError(
                    f"no projection in {args.db} yet: start `eventstore worker` (or `eventstore "
                    "up`) to fold the log into it"
                )
            # The last line: the server's JetStream and its store (a full disk shows here).
            return statuses, await server_health(store.nc, store.settings.name, store.url)

    statuses, health = run(go())
    for item in (*statuses, health):
        emit(item)
    problem = next((s.problem for s in statuses if s.problem), None)
    if problem is not None:
        sys.stderr.write(f"eventstore status: {ForeignDatabase(args.db, problem)}\n")
        return EXIT_ERROR
    return EXIT_OK


# -- verify --------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    projections, _ = configured_projections(args)

    async def go() -> Any:
        async with open_store(args) as store:
            db = await _open_db(args, required=True, store=store)
            assert db is not None
            async with db:
                return await verify(store, db, projections)

    report = run(go())
    for line in report.lines():
        emit(line)
    if (verdict := report.verdict(args.db)) is not None:
        sys.stderr.write(f"eventstore verify: {verdict}\n")
        return EXIT_ERROR
    return EXIT_OK
