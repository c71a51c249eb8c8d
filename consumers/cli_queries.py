"""The read commands of ``eventstore``: state, diff, conflicts, quarantine, status, verify.

Each parses, calls one library function, prints (the JSON shapes in ``consumers.cli_output``).
They open the database read only and never create or migrate it; ``state`` of the current
state needs no server. A database that is not a fold of the stream is refused (``status``
prints it flagged and exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from consumers.cli_output import diff_output, failed_line, state_output
from consumers.cli_serving import remote_state
from consumers.cliutil import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    db_given,
    emit,
    open_store,
    run,
    shutdown_signals,
)
from eventstore import EventStore, ForeignDatabase, ProjectionError
from projections import (
    BUILTIN_PROJECTIONS,
    Point,
    Projection,
    ProjectionDB,
    ProjectionsConfig,
    StatusReport,
    TimeTravel,
    check_database,
    check_stream_name,
    current_state,
    list_conflicts,
    list_quarantine,
    load_config,
    load_projection,
    load_projections,
    needs_origin,
    recorded_origin,
    status_report,
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
    specs = getattr(args, "projection", None) or ()
    wanted = [s.strip() for s in (*config.load, *specs) if needs_origin(s)]
    origins = run(_origins(args, wanted)) if wanted else None
    return load_projections(specs, config, origins), config


async def _origins(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    """Where the database (if there is one) says the projections ``names`` came from."""
    path = Path(args.db)
    if not await asyncio.to_thread(path.exists):
        return {}
    async with await ProjectionDB.open(path, readonly=True) as db:
        found = {name: await recorded_origin(db, name) for name in names}
    return {name: spec for name, spec in found.items() if spec is not None}


def _one_projection(args: argparse.Namespace) -> Projection[Any]:
    """The projection a query names (``--projection``, default ``entities``); a custom one
    by its name alone if the database recorded where it came from. The config file is checked
    like every command's (the rules stored with the log give the resolvers)."""
    load_config(args.config)
    name = (args.projection or DEFAULT_PROJECTION).strip()
    origin = run(_origins(args, [name])).get(name) if needs_origin(name) else None
    return load_projection(name, origin=origin)


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
    """One JSON document: the stream, every projection's progress and lag, the server; with
    ``--watch N`` a new one every N seconds until Ctrl-C/SIGTERM (exit 0)."""

    async def report(store: EventStore) -> StatusReport:
        db = await _open_db(args, required=True)
        assert db is not None
        async with db:
            got = await status_report(store, db)
        if not got.projections:
            raise ProjectionError(
                f"no projection in {args.db} yet: start `eventstore worker` (or `eventstore "
                "up`) to fold the log into it"
            )
        return got

    async def watch(store: EventStore) -> None:
        with shutdown_signals() as stop:
            while not stop.is_set():
                show_refreshed(await report(store))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.watch)

    async def go() -> StatusReport | None:
        async with open_store(args) as store:
            if args.watch:
                await watch(store)
                return None
            return await report(store)

    got = run(go())
    if got is None:
        return EXIT_OK
    emit(got)
    for failed in (s.failed for s in got.projections if s.failed is not None):
        sys.stderr.write(f"eventstore status: {failed_line(failed)}\n")
    problem = next((s.problem for s in got.projections if s.problem), None)
    if problem is not None:
        sys.stderr.write(f"eventstore status: {ForeignDatabase(args.db, problem)}\n")
    if problem is not None or any(s.failed for s in got.projections):
        return EXIT_ERROR
    return EXIT_OK


def show_refreshed(report: StatusReport) -> None:
    """A refresh of ``status --watch``: the screen redrawn on a terminal, else one more line."""
    if not sys.stdout.isatty():
        emit(report)
        return
    text = msgspec.json.format(msgspec.json.encode(report), indent=2).decode()
    sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
    sys.stdout.flush()


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
