"""structlog set-up, decided here once for every process: where logs go and in which form.

A service (``eventstore worker``, ``up``, ``server``, ``python -m consumers.worker``: a
long-running process whose stdout journald collects) logs on stdout; every other command's
stdout is its output (JSON lines a script reads), so it logs on stderr, beside its own
messages. JSON lines when that stream is not a terminal (journald, a pipe, a file), key=value
when it is one. Loggers take their context with ``.bind()`` (``projection=``, ``db=``,
``stream=``) once, not on every call.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

__all__ = ["configure_logging", "log_stream"]


def log_stream(*, service: bool = False) -> TextIO:
    """Where a process logs: stdout for a service, stderr for a command whose stdout is its
    output."""
    return sys.stdout if service else sys.stderr


def configure_logging(
    level: str | None = None, *, json: bool | None = None, service: bool = False
) -> None:
    """Configure structlog once for a process (CLI, worker); libraries never call this.

    ``level``: else ``EVENTSTORE_LOG_LEVEL``, else info. ``json``: else JSON lines unless the
    stream is a terminal. ``service``: log on stdout instead of stderr (see the module)."""
    name = (level or os.environ.get("EVENTSTORE_LOG_LEVEL") or "info").upper()
    lvl = logging.getLevelNamesMapping().get(name, logging.INFO)
    stream = log_stream(service=service)
    use_json = (not stream.isatty()) if json is None else json
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
