"""consumers.console: the web console (``eventstore console``): browse the log, scrub through
an aggregate's past, watch it live.

It reads only through the query service, the change feed and the log's reader, so it runs
on any host that reaches NATS and never opens a projection's SQLite file. Read-only;
loopback by default, a token for any other address.

* ``ConsoleSettings``: what it reads and where it listens;
* ``build_app(settings)``: the ASGI application (Starlette);
* ``serve_console(settings)``: serve it with uvicorn until SIGINT/SIGTERM;
* ``check_exposure(settings)``: ``ConfigError`` for a non-loopback host without a token.
"""

from consumers.console.app import build_app
from consumers.console.server import serve_console
from consumers.console.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TOKEN_ENV,
    ConsoleSettings,
    check_exposure,
    is_loopback,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "ConsoleSettings",
    "build_app",
    "check_exposure",
    "is_loopback",
    "serve_console",
]
