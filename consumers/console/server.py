"""Running the console: uvicorn serving ``build_app`` in this process's event loop, until
SIGINT or SIGTERM (uvicorn's own handlers), refusing an exposed address without a token."""

from __future__ import annotations

import uvicorn

from consumers.console.app import build_app
from consumers.console.settings import ConsoleSettings, check_exposure

__all__ = ["serve_console"]


async def serve_console(settings: ConsoleSettings) -> None:
    """Serve the console on ``settings.host:port`` until stopped (``ConfigError`` first if it
    would be reachable from other machines without a token)."""
    check_exposure(settings)
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    await uvicorn.Server(config).serve()
