"""The projection commands of ``eventstore``: worker, state, diff, conflicts, quarantine,
rebuild, verify, status and up. Each parses, calls one library function, prints.

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
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from consumers.cliutil import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    CliParser,
    add_global_options,
    aggregate_id,
    aggregate_type,
    command,
    emit,
    non_empty,
    non_negative_int,
    open_store,
    port_number,
    run,
    run_command,
    shutdown_signals,
    stream_settings,
    url_port,
)
from consumers.worker import WORKER_PRODUCER, run_worker
from eventstore.errors import ForeignDatabase, ProjectionError
from eventstore.health import server_health
from eventstore.logging import configure_logging
from eventstore.store import EventStore
from projections import list_conflicts, list_quarantine, resolver_from_spec
from projections.db import ProjectionDB
from projections.identity import check_database, check_stream_name
from projections.loading import (
    BUILTIN_PROJECTIONS,
    ProjectionsConfig,
    load_config,
    load_projection,
    load_projections,
)
from projections.projection import Projection
from projections.rebuild import rebuild
from projections.status import ProjectionStatus, projection_status
from projections.timetravel import Point, TimeTravel, current_state
from projections.verify import verify

__all__ = ["main", "register"]

DEFAULT_PROJECTION = "entities"


# -- shared --------------------------------------------------------------------------------


def _projections(args: argparse.Namespace) -> tuple[list[Projection[Any]], ProjectionsConfig]:
    """The projections a worker of these options runs (config ``load`` + ``--projection``)."""
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


# -- worker / up ---------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    projections, config = _projections(args)

    async def go() -> None:
        with shutdown_signals() as stop:
            async with open_store(args, producer=WORKER_PRODUCER) as store:
                await run_worker(
                    store,
                    args.db,
                    projections,
                    stop=stop,
                    settings=config.runner_settings(),
                    reset=args.reset,
                )

    run(go())
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from consumers.serve import DEFAULT_STORE_DIR, embedded_server, serve_until

    projections, config = _projections(args)
    port = args.port if args.port is not None else url_port(args.url)
    store_dir = Path(args.store_dir or DEFAULT_STORE_DIR)

    async def go() -> None:
        with shutdown_signals() as stop:
            async with embedded_server(store_dir, port, stream_settings(args)) as server:
                store = await EventStore.connect(
                    server.url, producer=WORKER_PRODUCER, stream=stream_settings(args)
                )
                try:
                    worker = asyncio.create_task(
                        run_worker(
                            store,
                            args.db,
                            projections,
                            stop=stop,
                            settings=config.runner_settings(),
                            on_ready=lambda _: _say_up(server.url, store_dir, args),
                            reset=args.reset,
                        )
                    )
                    serving = asyncio.create_task(serve_until(server, stop))
                    await asyncio.wait({worker, serving}, return_when=asyncio.FIRST_COMPLETED)
                    stop.set()
                    for task in (worker, serving):
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                finally:
                    await store.close()

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


# -- queries -------------------------------------------------------------------------------


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
    projection = _one_projection(args)
    point = _point_args(args)

    async def now() -> dict[str, Any]:
        # The state now is in the database: no server needed.
        db = await _open_db(args, required=True)
        assert db is not None
        async with db:
            state = await current_state(db, projection, args.aggregate_type, args.aggregate_id)
            return state.output(past=False)

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
                return past.output(past=True)
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
                return (await tt.diff(args.aggregate_type, args.aggregate_id, start, end)).output()
            finally:
                if db is not None:
                    await db.close()

    emit(run(go()))
    return EXIT_OK


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


# -- rebuild / verify ----------------------------------------------------------------------


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
    projections, config = _projections(args)
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


def cmd_verify(args: argparse.Namespace) -> int:
    projections, _ = _projections(args)

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


def _builtins(obj: Any) -> dict[str, Any]:
    import msgspec

    out: dict[str, Any] = msgspec.to_builtins(obj)
    return out


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
    _reset_option(p)
    p.set_defaults(func=cmd_worker)

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
        help="per projection: checkpoint, stream head, lag, snapshot/conflict/quarantine counts",
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
    p.set_defaults(func=cmd_up)


def main(argv: list[str] | None = None) -> int:
    """The projection commands alone (``python -m consumers.cli_projections``)."""
    parser = CliParser(prog="eventstore", description=__doc__)
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
