"""Logging: silent as a library, structured JSON lines as a service, decided here once.

As a library (``import eventstore`` in someone's application) nothing is printed: every module
logs through ``get_logger(name)``, a structlog logger that hands its records to the stdlib
logger of that name (``eventstore.*``, ``projections.*``, ``consumers.*``), and each package's
logger has a ``NullHandler``. The application decides with stdlib ``logging``, as with any
library: ``logging.basicConfig(level=logging.DEBUG)`` shows everything,
``logging.getLogger("projections").setLevel(logging.WARNING)`` quietens one package. Nothing is
configured at import time, so an application's own structlog or logging set-up keeps working
and receives our records like any other (each record also carries its fields as the
``event_dict`` attribute, for a structured formatter).

A process of ours (``eventstore`` commands, ``python -m consumers.cli_worker``) calls
``configure_logging``: a service (``worker``, ``up``, ``server``: long-running, its stdout is
what journald collects) logs on stdout; every other command's stdout is its output (JSON lines
a script reads), so it logs on stderr, beside its own messages. JSON lines when that stream is
not a terminal, key=value when it is one; the level from ``EVENTSTORE_LOG_LEVEL``, else info.
Loggers take their context with ``.bind()`` (``projection=``, ``db=``, ``stream=``) once.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

__all__ = ["FIELDS", "configure_logging", "get_logger", "log_stream"]

FIELDS = "event_dict"  # the LogRecord attribute holding a record's structured fields
_PACKAGES = ("eventstore", "projections", "consumers")
# stdlib keyword arguments a structlog call may carry (``log.exception`` sets exc_info).
_LOG_KWARGS = ("exc_info", "stack_info", "stacklevel")


def _text(event_dict: dict[str, Any]) -> str:
    """``event key=value ...``: what a plain ``logging`` formatter shows of a record."""
    fields = " ".join(f"{k}={v}" for k, v in event_dict.items() if k != "event")
    return f"{event_dict.get('event', '')} {fields}".rstrip()


def _to_stdlib(
    _: Any, method: str, event_dict: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: the arguments of the stdlib logger's call (message, fields)."""
    kwargs: dict[str, Any] = {kw: event_dict.pop(kw) for kw in _LOG_KWARGS if kw in event_dict}
    # The record names the line that called ``log.info`` (not structlog's frames in between).
    kwargs.setdefault("stacklevel", 5 if method == "exception" else 4)
    kwargs["extra"] = {FIELDS: event_dict}
    return (_text(event_dict),), kwargs


# The level is checked first: a disabled call (the per-batch debug line) costs one lookup.
_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    _to_stdlib,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The library's logger ``name`` (``eventstore.store``, ``projections.runner``): structlog's
    API (``.info("what", key=value)``, ``.bind``) on the stdlib logger of that name, whatever
    structlog's global configuration is (an application's, or none)."""
    package = logging.getLogger(name.partition(".")[0])
    if not any(isinstance(h, logging.NullHandler) for h in package.handlers):
        package.addHandler(logging.NullHandler())  # silent unless the application asks
    return structlog.stdlib.BoundLogger(logging.getLogger(name), _PROCESSORS, {})


def log_stream(*, service: bool = False) -> TextIO:
    """Where a process logs: stdout for a service, stderr for a command whose stdout is its
    output."""
    return sys.stdout if service else sys.stderr


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to the process's stdout or stderr as they are at each record
    (not as they were when configured: tests and tools swap them)."""

    def __init__(self, service: bool) -> None:
        super().__init__(log_stream(service=service))
        self.service = service
        self.gone = False  # the stream's reader went away (`eventstore worker | head`)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.gone:
            self.stream = log_stream(service=self.service)
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            self.gone = True  # nobody reads these logs any more: no traceback per record
            return
        super().handleError(record)


class _Formatter(logging.Formatter):
    """Renders a record as a JSON line or key=value: our fields, any other library's message."""

    def __init__(self, use_json: bool) -> None:
        super().__init__()
        self.render: Any = (
            structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
        )

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            out = dict(fields)
        else:  # a record of the application or of another library
            out = {"event": record.getMessage(), "logger": record.name}
        out["level"] = record.levelname.lower()
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat()
        out["timestamp"] = stamp.replace("+00:00", "Z")
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return str(self.render(None, out["level"], out))


def configure_logging(
    level: str | None = None, *, json: bool | None = None, service: bool = False
) -> None:
    """Configure logging for one of our processes (CLI, worker); a library never calls this.

    ``level``: else ``EVENTSTORE_LOG_LEVEL``, else info. ``json``: else JSON lines unless the
    stream is a terminal. ``service``: log on stdout instead of stderr (see the module). Calling
    it again replaces what an earlier call set up. structlog is configured too, so that code
    of the application run by it (a projection module a worker loads) logs the same way."""
    name = (level or os.environ.get("EVENTSTORE_LOG_LEVEL") or "info").upper()
    lvl = logging.getLevelNamesMapping().get(name, logging.INFO)
    use_json = (not log_stream(service=service).isatty()) if json is None else json
    handler = _Handler(service)
    handler.setFormatter(_Formatter(use_json))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    # aiosqlite logs every statement at debug: only ours are wanted at that level.
    logging.getLogger("aiosqlite").setLevel(max(lvl, logging.INFO))
    structlog.configure(
        processors=list(_PROCESSORS),  # a copy: structlog.testing edits the list in place
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
