"""Opening the store for a consumer: the one place a worker or a command connects.

``connect_store(url, ...)`` is ``EventStore.connect`` bounded by ``CONNECT_TIMEOUT``: nats-py
retries the first connection forever when reconnects are unlimited, so a consumer that finds
nothing at the URL says so (``NotConnected``, naming the URL) instead of waiting forever.
"""

from __future__ import annotations

import asyncio

from eventstore import EventStore, NotConnected, StreamSettings

__all__ = ["CONNECT_TIMEOUT", "connect_store"]

# How long to wait for a server to answer before saying there is none.
CONNECT_TIMEOUT = 5.0


async def connect_store(
    url: str,
    *,
    producer: str,
    stream: StreamSettings,
    clock_block: int = 1000,
    timeout: float = CONNECT_TIMEOUT,
    presence: bool = False,
    creds: str | None = None,
    tls_ca: str | None = None,
) -> EventStore:
    """Connect to ``url`` (ensuring ``stream``), or raise ``NotConnected`` after ``timeout``.

    ``presence``: hold the producer name and warn if another live connection does (see
    ``eventstore.presence``); off by default, for workers and readers that never append.
    ``creds``/``tls_ca``: see ``ConnectSettings``."""
    try:
        return await asyncio.wait_for(
            EventStore.connect(
                url,
                producer=producer,
                stream=stream,
                clock_block=clock_block,
                presence=presence,
                creds=creds,
                tls_ca=tls_ca,
            ),
            timeout,
        )
    except TimeoutError as exc:
        raise NotConnected(url, f"nothing answered within {timeout:g}s") from exc
