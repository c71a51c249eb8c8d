"""What every ``eventstore`` command shares: global options, opening the store, output, errors.

A command is a function ``(args) -> int`` set on its sub-parser with ``set_defaults(func=...)``;
``run_command`` calls it and turns the errors a user can cause into one line on stderr and an
exit code (``EXIT_ERROR``), never a traceback. Other command modules use the same helpers:

* ``command(subparsers, name, help=...)``: a sub-command that takes the global options too;
* ``open_store(args)`` opens the ``EventStore`` the global options describe;
* ``emit(obj)`` prints one JSON line (msgspec, RFC 3339 datetimes) and flushes it;
* argparse ``type=`` functions (``json_object``, ``positive_int``, ``nats_url``, ...): a bad
  value is a one-line usage error (exit 2) before anything connects or starts;
* ``shutdown_signals()``: an event set by SIGINT/SIGTERM, for commands that run until stopped;
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
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import msgspec

from consumers.cli_connect import add_connection_options, security
from consumers.clioptions import add_replicas_option, nats_url
from consumers.connection import CONNECT_TIMEOUT, connect_store
from eventstore import (
    DEFAULT_URL,
    MAX_INT,
    EventStore,
    EventStoreError,
    StreamSettings,
    encode_id,
    get_logger,
    load_upcasters,
    read_local_rules,
    validate_aggregate_type,
    validate_stream_name,
    validate_stream_prefix,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_DB",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "CliParser",
    "Command",
    "add_global_options",
    "aggregate_id",
    "aggregate_type",
    "command",
    "db_given",
    "default_producer",
    "directory",
    "emit",
    "json_object",
    "log_level",
    "nats_url",
    "non_empty",
    "non_negative_int",
    "open_store",
    "port_number",
    "positive_int",
    "run",
    "run_command",
    "sanitize_producer",
    "shutdown_signals",
    "stream_name",
    "stream_settings",
    "subject_prefix",
    "url_port",
]

EXIT_OK = 0
EXIT_ERROR = 1  # the command failed: one line on stderr says why
EXIT_USAGE = 2  # bad arguments (argparse): one line on stderr says which
EXIT_INTERRUPTED = 130  # a one-shot command interrupted by Ctrl-C


Command = Callable[[argparse.Namespace], int]
T = TypeVar("T")

_PRODUCER_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_encoder = msgspec.json.Encoder()
LOG_LEVELS = ("debug", "info", "warning", "error")

log = get_logger("consumers.cli")


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
    # The defaults taken from the environment go through the same ``type=`` checks.
    g.add_argument(
        "--url",
        default=default(_env("EVENTSTORE_URL", DEFAULT_URL)),
        type=nats_url,
        help=f"NATS server URL (env EVENTSTORE_URL, default {DEFAULT_URL})",
    )
    g.add_argument(
        "--stream",
        default=default(_env("EVENTSTORE_STREAM", "EVENTS")),
        type=stream_name,
        help="JetStream stream holding the log (env EVENTSTORE_STREAM, default EVENTS)",
    )
    g.add_argument(
        "--prefix",
        default=default(_env("EVENTSTORE_PREFIX", "events")),
        type=subject_prefix,
        help="subject prefix of the log (env EVENTSTORE_PREFIX, default events)",
    )
    add_replicas_option(g, default)  # consumers.clioptions
    g.add_argument(
        "--db",
        default=default(_env("EVENTSTORE_DB", DEFAULT_DB)),
        type=non_empty,
        help="projection SQLite database (env EVENTSTORE_DB, default ./eventstore.db)",
    )
    g.add_argument(
        "--config",
        default=default(_env("EVENTSTORE_CONFIG", None)),
        type=non_empty,
        help="TOML config: [projections] to run and tuning (env EVENTSTORE_CONFIG); the state "
        "machines and resolvers are the rules stored with the log (`eventstore rules`)",
    )
    g.add_argument(
        "--producer",
        default=default(default_producer()),
        metavar="NAME",
        help="writer name of publish: one per process (env EVENTSTORE_PRODUCER, default "
        "cli-<hostname>)",
    )
    g.add_argument(
        "--log-level",
        default=default(_env("EVENTSTORE_LOG_LEVEL", "warning")),
        choices=LOG_LEVELS,
        type=log_level,
        help="log level of the structured logs, on stderr (on stdout for the services: worker, "
        "up, server) (env EVENTSTORE_LOG_LEVEL, default warning)",
    )
    add_connection_options(g, default)  # --creds, --tls-ca


class _DefaultPath(str):
    """The --db default, told apart from a --db or EVENTSTORE_DB naming the same file."""

    __slots__ = ()


DEFAULT_DB = _DefaultPath("./eventstore.db")


def db_given(args: argparse.Namespace) -> bool:
    """Whether --db or EVENTSTORE_DB named a database (else ``state`` and ``query`` ask the
    query service)."""
    return not isinstance(getattr(args, "db", DEFAULT_DB), _DefaultPath)


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
    replicas = getattr(args, "replicas", 1)  # parsers without the global options: 1
    return StreamSettings(name=args.stream, prefix=args.prefix, replicas=replicas)


def url_port(url: str, default: int = 4222) -> int:
    """The port of a ``nats://`` URL: where ``server``/``up`` listen when no --port is given."""
    try:
        url = url.split(",")[0]  # a cluster's URLs: the first
        return urlsplit(url if "://" in url else f"nats://{url}").port or default
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
    presence: bool = False,
    local_rules: bool = True,
) -> AsyncIterator[EventStore]:
    """Connect to the store the global options describe; close it on the way out.

    Fails with ``NotConnected`` (naming the URL and how to start a server) when nothing
    answers within ``CONNECT_TIMEOUT`` seconds, and with ``ConfigError`` when the config file
    declares ``[machines]`` or resolvers other than the rules stored with the log (unless
    ``local_rules`` is False: the ``rules`` commands). ``presence`` (for commands that append):
    warn, on one stderr line, when another live connection uses the same producer name.
    """
    local = read_local_rules(args.config) if local_rules else None  # broken: before connecting
    load_upcasters(args.config)  # [upcasters] modules: every read here sees current schemas
    store = await connect_store(
        args.url,
        # An empty --producer is an invalid name, not a reason to pick another one.
        producer=producer if producer is not None else default_producer(),
        stream=stream_settings(args),
        clock_block=clock_block,
        presence=presence,
        **security(args),
    )
    try:
        if local is not None:
            local.check(store.rules)
        yield store
    finally:
        await store.close()


def emit(obj: Any) -> None:
    """Print one JSON line on stdout and flush it (datetimes as RFC 3339)."""
    out = sys.stdout.buffer
    out.write(_encoder.encode(obj) + b"\n")
    out.flush()


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, shortened if long (an argument can be megabytes)."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + "...'"


def _bounded_int(text: str, minimum: int, maximum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {_shown(text)}") from None
    if not minimum <= value <= maximum:
        shown = str(value) if len(text) <= 40 else _shown(text)
        raise argparse.ArgumentTypeError(f"must be {minimum} to {maximum}, got {shown}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer 0 to 2**63 - 1 (versions, sequences, counts)."""
    return _bounded_int(text, 0, MAX_INT)


def positive_int(text: str) -> int:
    """argparse type: an integer 1 to 2**63 - 1."""
    return _bounded_int(text, 1, MAX_INT)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    try:
        return _bounded_int(text, 1, 65535)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"a TCP port {exc}") from None


def non_empty(text: str) -> str:
    """argparse type: any text but the empty string (a path, a name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain a NUL character")
    return text


def directory(text: str) -> Path:
    """argparse type: a directory path (it need not exist yet), never the empty string."""
    return Path(non_empty(text))


def log_level(text: str) -> str:
    """argparse type: one of ``LOG_LEVELS``, in any case (also checks EVENTSTORE_LOG_LEVEL)."""
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(LOG_LEVELS)}, got {_shown(text)}"
        )
    return value


def _checked(check: Callable[[str], object], name: str) -> Callable[[str], str]:
    """An argparse type from a library validator: its error becomes the usage error."""

    def parse(text: str) -> str:
        try:
            check(text)
        except EventStoreError as exc:
            raise argparse.ArgumentTypeError(_one_line(str(exc))) from None
        return text

    parse.__name__ = parse.__qualname__ = name
    return parse


stream_name = _checked(validate_stream_name, "stream_name")
subject_prefix = _checked(validate_stream_prefix, "subject_prefix")
aggregate_type = _checked(validate_aggregate_type, "aggregate_type")
aggregate_id = _checked(encode_id, "aggregate_id")


def json_object(text: str) -> dict[str, Any]:
    """argparse ``type=``: a JSON object, or a clear usage error."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {_shown(text)}") from exc
    except RecursionError:
        raise argparse.ArgumentTypeError(
            f"nested too deeply to be an event's JSON: {_shown(text)}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object like '{{\"key\": 1}}', got {type(value).__name__}: "
            f"{_shown(text)}"
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
    """Call a command; map user errors to one stderr line and ``EXIT_ERROR``.

    An ``OSError`` about a file (a path given on the command line that cannot be used: a
    regular file where a directory must be, no permission) is such an error too: one line
    naming the file; its traceback goes to the debug log.
    """
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
    except OSError as exc:
        if exc.filename is None:
            raise
        log.debug("file error", exc_info=True)
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        sys.stderr.write(f"{prog}: error: {where}: {exc.strerror or exc}\n")
        return EXIT_ERROR
