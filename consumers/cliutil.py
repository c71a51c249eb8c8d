"""What every ``eventstore`` command shares: global options, opening the store, output, errors.

A command is a function ``(args) -> int`` set on its sub-parser with ``set_defaults(func=...)``;
``run_command`` calls it and turns the errors a user can cause into one line on stderr and an
exit code (``EXIT_ERROR``), so no user ever sees a traceback for a mistake of theirs. Commands
of other modules (``consumers.cli_projections``) use the same helpers:

* ``command(subparsers, name, help=...)`` adds a sub-command that also accepts the global
  options after its name;
* ``open_store(args)`` opens the ``EventStore`` the global options describe;
* ``emit(obj)`` prints one JSON line (msgspec, RFC 3339 datetimes) and flushes it;
* ``json_object`` is an argparse ``type=`` for options that take a JSON object;
* ``shutdown_signals()`` gives an event set by SIGINT/SIGTERM, for commands that run until
  stopped;
* ``url_port(args.url)`` is the port an embedded server should listen on by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import msgspec

from eventstore.errors import EventStoreError, NotConnected
from eventstore.machines import load_machines
from eventstore.store import DEFAULT_URL, EventStore
from eventstore.streams import StreamSettings

__all__ = [
    "CONNECT_TIMEOUT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "CliParser",
    "Command",
    "add_global_options",
    "command",
    "default_producer",
    "emit",
    "json_object",
    "non_negative_int",
    "open_store",
    "run",
    "run_command",
    "sanitize_producer",
    "shutdown_signals",
    "stream_settings",
    "url_port",
]

EXIT_OK = 0
EXIT_ERROR = 1  # the command failed: one line on stderr says why
EXIT_USAGE = 2  # bad arguments (argparse): one line on stderr says which
EXIT_INTERRUPTED = 130  # a one-shot command interrupted by Ctrl-C

# How long to wait for a server to answer before saying there is none. nats-py retries the
# first connection forever when reconnects are unlimited, so the CLI bounds it itself.
CONNECT_TIMEOUT = 5.0

Command = Callable[[argparse.Namespace], int]
T = TypeVar("T")

_PRODUCER_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_encoder = msgspec.json.Encoder()


class CliError(EventStoreError):
    """A mistake in what the user asked for, found by the CLI itself (exit code 1)."""


class CliParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``eventstore publish: error: ... (try --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (try `{self.prog} --help`)\n")


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(name) or default


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The options every command understands.

    On the top-level parser they carry their defaults; on a sub-command (``suppress=True``)
    they only override what was given before the sub-command's name.
    """

    def default(value: str | None) -> str | None:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options")
    g.add_argument(
        "--url",
        default=default(_env("EVENTSTORE_URL", DEFAULT_URL)),
        help=f"NATS server URL (env EVENTSTORE_URL, default {DEFAULT_URL})",
    )
    g.add_argument(
        "--stream",
        default=default(_env("EVENTSTORE_STREAM", "EVENTS")),
        help="JetStream stream holding the log (env EVENTSTORE_STREAM, default EVENTS)",
    )
    g.add_argument(
        "--prefix",
        default=default(_env("EVENTSTORE_PREFIX", "events")),
        help="subject prefix of the log (env EVENTSTORE_PREFIX, default events)",
    )
    g.add_argument(
        "--db",
        default=default(_env("EVENTSTORE_DB", "./eventstore.db")),
        help="projection SQLite database (env EVENTSTORE_DB, default ./eventstore.db)",
    )
    g.add_argument(
        "--config",
        default=default(_env("EVENTSTORE_CONFIG", None)),
        help="TOML config: [machines.*] state machines, [projections] (env EVENTSTORE_CONFIG)",
    )
    g.add_argument(
        "--log-level",
        default=default(_env("EVENTSTORE_LOG_LEVEL", "warning")),
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="log level of the structured logs on stderr (env EVENTSTORE_LOG_LEVEL, "
        "default warning)",
    )


def command(
    subparsers: argparse._SubParsersAction[Any],
    name: str,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add a sub-command that accepts the global options after its name as well."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description or help
    )
    add_global_options(parser, suppress=True)
    return parser


def stream_settings(args: argparse.Namespace) -> StreamSettings:
    """The stream and subject prefix the global options name."""
    return StreamSettings(name=args.stream, prefix=args.prefix)


def url_port(url: str, default: int = 4222) -> int:
    """The port of a ``nats://`` URL: where ``server``/``up`` listen when no --port is given."""
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


def sanitize_producer(name: str) -> str:
    """Turn any text (a host name) into a valid producer name: ``[A-Za-z0-9_][A-Za-z0-9_.-]*``."""
    cleaned = _PRODUCER_BAD.sub("-", name).lstrip(".-")
    return (cleaned or "unknown")[:128]


def default_producer() -> str:
    """``EVENTSTORE_PRODUCER``, else ``cli-<hostname>`` made into a valid producer name."""
    return os.environ.get("EVENTSTORE_PRODUCER") or sanitize_producer(f"cli-{socket.gethostname()}")


@contextlib.asynccontextmanager
async def open_store(
    args: argparse.Namespace,
    *,
    producer: str | None = None,
    clock_block: int = 1000,
) -> AsyncIterator[EventStore]:
    """Connect to the store the global options describe; close it on the way out.

    Fails with ``NotConnected`` (naming the URL and how to start a server) when nothing
    answers within ``CONNECT_TIMEOUT`` seconds.
    """
    machines = load_machines(args.config)
    try:
        store = await asyncio.wait_for(
            EventStore.connect(
                args.url,
                producer=producer or default_producer(),
                stream=stream_settings(args),
                machines=machines,
                clock_block=clock_block,
            ),
            CONNECT_TIMEOUT,
        )
    except TimeoutError as exc:
        raise NotConnected(args.url, f"nothing answered within {CONNECT_TIMEOUT:g}s") from exc
    try:
        yield store
    finally:
        await store.close()


def emit(obj: Any) -> None:
    """Print one JSON line on stdout and flush it (datetimes as RFC 3339)."""
    out = sys.stdout.buffer
    out.write(_encoder.encode(obj) + b"\n")
    out.flush()


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (versions, sequences, ports)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """argparse ``type=``: a JSON object, or a clear usage error."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object like '{{\"key\": 1}}', got {type(value).__name__}: {text!r}"
        )
    return value


@contextlib.contextmanager
def shutdown_signals() -> Iterator[asyncio.Event]:
    """Within a running event loop: an ``asyncio.Event`` set by the first SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion."""
    return asyncio.run(coro)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_command(func: Command, args: argparse.Namespace, prog: str = "eventstore") -> int:
    """Call a command; map user errors to one stderr line and ``EXIT_ERROR``."""
    try:
        return func(args)
    except EventStoreError as exc:
        label = "error" if isinstance(exc, CliError) else type(exc).__name__
        sys.stderr.write(f"{prog}: {label}: {_one_line(str(exc))}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`eventstore tail | head`): not an error of ours.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
