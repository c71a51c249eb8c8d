"""The ``eventstore`` command: a thin shell over the library (parse, call, print).

Exit codes: 0 success; 1 the command failed (one line on stderr says why: a version conflict,
an invalid transition, no server at the URL ...); 2 bad arguments (one line on stderr);
130 a one-shot command interrupted by Ctrl-C. ``tail`` and ``server`` run until SIGINT or
SIGTERM and then exit 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from consumers import (
    cli_auth,
    cli_cluster,
    cli_console,
    cli_locks,
    cli_ops,
    cli_projections,
    cli_rules,
    cli_serving,
    cli_watch,
)
from consumers.cli_example import register as register_example
from consumers.cliutil import (
    EXIT_OK,
    CliParser,
    add_global_options,
    aggregate_id,
    aggregate_type,
    command,
    directory,
    emit,
    json_object,
    non_empty,
    non_negative_int,
    open_store,
    port_number,
    positive_int,
    run,
    run_command,
    shutdown_signals,
    stream_settings,
    url_port,
)
from consumers.demo import run_demo
from consumers.pipes import reader_gone, until_stopped
from consumers.serve import DEFAULT_STORE_DIR, embedded_server, serve_until
from eventstore import (
    ROLES,
    Malformed,
    NewEvent,
    configure_logging,
    get_logger,
    load_upcasters,
    permissions,
)

__all__ = ["build_parser", "main"]

log = get_logger("consumers.cli")

EPILOG = """\
exit codes: 0 ok; 1 the command failed (one line on stderr says why); 2 bad arguments;
130 interrupted. `tail` and `server` stop cleanly on SIGINT/SIGTERM and exit 0.
"""


# -- publish -----------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    load_upcasters(args.config)  # the current schema of the type, unless --schema says
    event = NewEvent(
        args.event_type,
        data=args.data or {},
        transition=args.transition,
        metadata=args.metadata or {},
        id=args.id,
        schema=args.schema or 0,
    )

    async def go() -> None:
        # Its one reservation covers exactly this append: one-shot publishes stay dense.
        async with open_store(args, producer=args.producer, presence=True) as store:
            res = await store.append(
                args.aggregate_type, args.aggregate_id, [event],
                expected_version=args.expect_version,
            )  # fmt: skip
            if args.wait is not None:  # read your writes: the default projection has it
                await cli_watch.wait_applied(store, res.last_seq, args.wait)
        emit({"id": res.ids[-1], "seq": res.last_seq, "version": res.version,
              "duplicate": res.duplicate})  # fmt: skip

    run(go())
    return EXIT_OK


# -- history -----------------------------------------------------------------------------------


def warn_skipped(skipped: Malformed) -> None:
    """One stderr line per message a reader skipped (history and tail go on)."""
    reason = " ".join(skipped.reason.split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    sys.stderr.write(
        f"eventstore: warning: skipped the message at seq {skipped.seq} on {skipped.subject} "
        f"({skipped.kind}): {reason}\n"
    )
    sys.stderr.flush()


def cmd_history(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with open_store(args) as store:
            async for ev in store.read(
                args.aggregate_type, args.aggregate_id, args.from_version, args.to_version,
                on_malformed=warn_skipped,
            ):  # fmt: skip
                emit(ev)

    run(go())
    return EXIT_OK


# -- tail --------------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    async def go() -> None:
        with shutdown_signals() as stop, reader_gone(stop):  # `tail | head -1` ends
            async with open_store(args) as store:
                start = args.from_seq if args.from_seq is not None else await store.head() + 1
                log.info("tail following", from_seq=start, stream=store.settings.name)

                async def follow() -> None:
                    async for ev in store.follow(
                        start, args.aggregate_type, args.aggregate_id, on_malformed=warn_skipped
                    ):
                        emit(ev)

                await until_stopped(follow(), stop)

    run(go())
    return EXIT_OK


# -- server ------------------------------------------------------------------------------------


def cmd_permissions(args: argparse.Namespace) -> int:
    emit(permissions(args.role, stream_settings(args)))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    port = args.port if args.port is not None else url_port(args.url)
    store_dir = Path(args.store_dir)

    async def go() -> None:
        with shutdown_signals() as stop:
            secure = cli_auth.server_security(args)  # --auth DIR, --tls-cert/--tls-key
            async with embedded_server(store_dir, port, stream_settings(args), **secure) as server:
                print(
                    f"eventstore server listening on {server.url} (store {store_dir}, "
                    f"stream {args.stream} on {args.prefix}.>)",
                    flush=True,
                )
                await serve_until(server, stop)

    run(go())
    return EXIT_OK


# -- demo --------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    return run(run_demo(stream_settings(args), workdir=args.dir))


# -- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="eventstore",
        description="Event-sourced state for multi-agent systems on NATS JetStream.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    sub.required = True

    p = command(sub, "publish", help="append one event to an aggregate; prints where it landed")
    p.add_argument(
        "aggregate_type", metavar="TYPE", type=aggregate_type, help="aggregate type, e.g. agent"
    )
    p.add_argument(
        "aggregate_id", metavar="ID", type=aggregate_id, help="aggregate id, e.g. asst_qa"
    )
    p.add_argument("event_type", metavar="EVENT_TYPE", help="event type, e.g. Started")
    p.add_argument(
        "--data", type=json_object, metavar="JSON", help="payload, a JSON object (default {})"
    )
    p.add_argument(
        "--metadata", type=json_object, metavar="JSON", help="who/why, a JSON object (default {})"
    )
    p.add_argument(
        "--expect-version", type=non_negative_int, metavar="N",
        help="fail unless the aggregate is at version N (0: a new aggregate)",
    )  # fmt: skip
    p.add_argument("--id", help="event id; the same id again is stored once (default: UUIDv7)")
    p.add_argument(
        "--schema", type=positive_int, metavar="N",
        help="schema number of --data (default: the type's current schema, see [upcasters])",
    )  # fmt: skip
    p.add_argument(
        "--transition", metavar="FROM:TO", help="state-machine step, e.g. Created:Starting"
    )
    p.add_argument(
        "--wait", nargs="?", type=cli_watch.seconds, const=cli_watch.DEFAULT_WAIT,
        metavar="SECONDS", help="return once the entities projection has applied the event "
        f"(a worker must run; default {cli_watch.DEFAULT_WAIT:g}s, then exit 1)",
    )  # fmt: skip
    p.set_defaults(func=cmd_publish)

    p = command(sub, "history", help="one aggregate's events, one JSON object per line")
    p.add_argument("aggregate_type", metavar="TYPE", type=aggregate_type)
    p.add_argument("aggregate_id", metavar="ID", type=aggregate_id)
    p.add_argument("--from-version", type=positive_int, default=1, metavar="N")
    p.add_argument("--to-version", type=non_negative_int, default=None, metavar="N")
    p.set_defaults(func=cmd_history)

    p = command(sub, "tail", help="follow the log live, one JSON object per line, until Ctrl-C")
    p.add_argument(
        "aggregate_type", metavar="TYPE", nargs="?", type=aggregate_type,
        help="only this aggregate type",
    )  # fmt: skip
    p.add_argument(
        "aggregate_id", metavar="ID", nargs="?", type=aggregate_id, help="only this aggregate"
    )
    p.add_argument(
        "--from-seq", type=non_negative_int, metavar="N",
        help="start at stream sequence N (default: only events published from now on)",
    )  # fmt: skip
    p.set_defaults(func=cmd_tail)

    p = command(sub, "server", help="run the embedded nats-server in the foreground")
    p.add_argument(
        "--port", type=port_number, help="port on 127.0.0.1 (default: the port of --url, 4222)"
    )
    p.add_argument(
        "--store-dir", default=str(DEFAULT_STORE_DIR), type=non_empty,
        help=f"JetStream store directory (default ./{DEFAULT_STORE_DIR})",
    )  # fmt: skip
    cli_auth.add_server_options(p)
    p.set_defaults(func=cmd_server, service=True)

    p = command(
        sub, "demo", help="simulated agents publish their lifecycles on a fresh server, "
        "then a projection worker folds them into SQLite",
    )  # fmt: skip
    p.add_argument(
        "--dir", type=directory,
        help="keep the demo's server store (and database) here (default: a temp dir, removed)",
    )  # fmt: skip
    p.set_defaults(func=cmd_demo)

    p = command(
        sub, "permissions", help="print the nats-server permissions a producer or a reader "
        "of the stream needs (JSON: paste it as a user's `permissions` in the server config)",
    )  # fmt: skip
    p.add_argument(
        "role",
        choices=ROLES,
        help="producer: appends; reader: queries, watch; worker: folds and serves",
    )
    p.set_defaults(func=cmd_permissions)

    cli_projections.register(sub)  # issue 3: worker, state, diff, conflicts, ..., up
    cli_rules.register(sub)  # issue 9: rules set, rules show
    cli_ops.register(sub)  # issue 12: systemd render, export, import
    cli_serving.register(sub)  # issue 10: query
    cli_locks.register(sub)  # issue 13: lock acquire, release, show
    cli_watch.register(sub)  # issue 10: watch
    cli_auth.register(sub)  # issue 14: auth init
    cli_cluster.register(sub)  # issue 14: cluster local
    register_example(sub)  # issue 16: example NAME
    cli_console.register(sub)  # issue 17: console
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``eventstore`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, service=getattr(args, "service", False))
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
