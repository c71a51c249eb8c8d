"""The Python client of the query service: what an agent on another host needs, given only the
NATS URL.

``ProjectionClient(store)`` uses an open ``EventStore``'s connection and stream;
``await ProjectionClient.connect(url, stream=...)`` opens a plain NATS connection of its own
(no JetStream permissions needed) and closes it with the client (``async with``). Each call is
one request to ``_ES.Q.<stream>.<projection>.<op>`` (``consumers.protocol``), answered by any
worker of the stream that runs the projection; replies are decoded into the protocol's typed
structs and error replies raised as our exceptions (the one table: ``consumers.querycall``):

* ``not_found``: ``AggregateNotFound``;
* ``timeout`` (``min_seq`` not reached in time): ``RequestTimeout`` with ``.projection`` and
  ``.checkpoint`` (the seq it had applied);
* ``unknown_projection``, or no worker answering at all: ``UnknownProjection`` ("no worker
  serves projection X on stream S");
* ``bad_request``: ``InvalidPoint`` for a point not in the history, else ``InvalidRequest``
  (``too_large`` too: ask for fewer items);
* ``internal``: ``ProjectionError``; no reply within the timeout: ``RequestTimeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from nats.aio.client import Client

from consumers import protocol as wire
from consumers.connection import CONNECT_TIMEOUT
from consumers.liveview import LiveView, OnChange
from consumers.querycall import call, connect_plain
from consumers.watching import DEFAULT_BUFFER, DEFAULT_PATIENCE, Watcher
from eventstore import (
    DEFAULT_URL,
    EventStore,
    InvalidRequest,
    RequestTimeout,
    validate_stream_name,
)
from projections import DEFAULT_LIMIT, Point, Scalar, StateRecord

__all__ = ["DEFAULT_PROJECTION", "ProjectionClient"]

DEFAULT_PROJECTION = "entities"

R = TypeVar("R")


class ProjectionClient:
    """Queries of the projections a stream's workers serve (see the module doc)."""

    def __init__(
        self,
        store: EventStore,
        *,
        projection: str = DEFAULT_PROJECTION,
        timeout: float = wire.DEFAULT_TIMEOUT,
    ) -> None:
        self._setup(store.nc, store.settings.name, projection, timeout, owns=False)

    def _setup(
        self, nc: Client, stream: str, projection: str, timeout: float, *, owns: bool
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.projection = projection
        self.timeout = timeout
        self._owns = owns

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_URL,
        *,
        stream: str = "EVENTS",
        projection: str = DEFAULT_PROJECTION,
        timeout: float = wire.DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        creds: str | None = None,
        tls_ca: str | None = None,
    ) -> ProjectionClient:
        """A client on a NATS connection of its own; ``NotConnected`` if nothing answers
        (``creds``/``tls_ca``: see ``ConnectSettings``; refused: ``PermissionDenied`` or
        ``ConfigError``)."""
        validate_stream_name(stream)
        nc = await connect_plain(url, connect_timeout=connect_timeout, creds=creds, tls_ca=tls_ca)
        client = cls.__new__(cls)
        client._setup(nc, stream, projection, timeout, owns=True)
        return client

    async def close(self) -> None:
        """Close the connection if this client opened it (``connect``)."""
        if self._owns and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already gone: nothing to drain
                await self.nc.close()

    async def __aenter__(self) -> ProjectionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the calls -------------------------------------------------------------------------

    async def state(
        self,
        aggregate_type: str,
        aggregate_id: str,
        *,
        projection: str | None = None,
        version: int | None = None,
        seq: int | None = None,
        at: datetime | None = None,
        min_seq: int | None = None,
        timeout: float | None = None,
    ) -> wire.StateReply:
        """One aggregate's state now, or at ``version`` / ``seq`` / recorded time ``at``."""
        Point(version=version, seq=seq, at=at)  # several, negative or naive: InvalidPoint here
        body = wire.StateRequest(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            version=version,
            seq=seq,
            at=at,
            min_seq=min_seq,
            timeout=timeout,
        )
        return await self._call(
            projection, "state", body, wire.StateReply, (aggregate_type, aggregate_id)
        )

    async def history(
        self,
        aggregate_type: str,
        aggregate_id: str,
        *,
        projection: str | None = None,
        from_version: int = 1,
        limit: int = DEFAULT_LIMIT,
        min_seq: int | None = None,
        timeout: float | None = None,
    ) -> wire.HistoryReply:
        """One aggregate's messages from ``from_version`` (``next_version``: the next page)."""
        body = wire.HistoryRequest(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            from_version=from_version,
            limit=limit,
            min_seq=min_seq,
            timeout=timeout,
        )
        return await self._call(
            projection, "history", body, wire.HistoryReply, (aggregate_type, aggregate_id)
        )

    async def state_range(
        self,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int,
        to_version: int | None = None,
        *,
        projection: str | None = None,
        limit: int = wire.RANGE_LIMIT,
        min_seq: int | None = None,
        timeout: float | None = None,
    ) -> wire.RangeReply:
        """One aggregate's states at versions ``from_version`` to ``to_version`` (default: its
        last), one per version in order, from one replay in the worker; a page holds at most
        ``limit`` states and what fits in max_payload (``next_version``: the next page)."""
        body = wire.RangeRequest(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            from_version=from_version,
            to_version=to_version,
            limit=limit,
            min_seq=min_seq,
            timeout=timeout,
        )
        return await self._call(
            projection, "range", body, wire.RangeReply, (aggregate_type, aggregate_id)
        )

    async def query(
        self,
        projection: str | None = None,
        *,
        aggregate_type: str | None = None,
        where: Mapping[str, Scalar] | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        min_seq: int | None = None,
        timeout: float | None = None,
    ) -> wire.PageReply:
        """A page of the projection's aggregates (by type and id), filtered by aggregate type
        and by equality on top-level fields of the state; ``next_cursor`` for the next."""
        body = wire.ListRequest(
            aggregate_type=aggregate_type,
            where=dict(where) if where is not None else None,
            limit=limit,
            cursor=cursor,
            min_seq=min_seq,
            timeout=timeout,
        )
        return await self._call(projection, "list", body, wire.PageReply)

    async def query_all(
        self,
        projection: str | None = None,
        *,
        aggregate_type: str | None = None,
        where: Mapping[str, Scalar] | None = None,
        limit: int = DEFAULT_LIMIT,
        min_seq: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[wire.PageReply]:
        """Every page of ``query``, in order (``min_seq`` applies to the first)."""
        cursor: str | None = None
        while True:
            page = await self.query(
                projection, aggregate_type=aggregate_type, where=where, limit=limit,
                cursor=cursor, min_seq=min_seq, timeout=timeout,
            )  # fmt: skip
            yield page
            if page.next_cursor is None:
                return
            cursor, min_seq = page.next_cursor, None

    async def changes(
        self,
        since: int,
        *,
        projection: str | None = None,
        aggregate_type: str | None = None,
        where: Mapping[str, Scalar] | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        min_seq: int | None = None,
        timeout: float | None = None,
    ) -> wire.PageReply:
        """A page of the aggregates whose current state's seq is above ``since``, by seq:
        what a subscriber that missed notifications reads to resynchronise."""
        body = wire.ChangesRequest(
            since=since,
            aggregate_type=aggregate_type,
            where=dict(where) if where is not None else None,
            limit=limit,
            cursor=cursor,
            min_seq=min_seq,
            timeout=timeout,
        )
        return await self._call(projection, "changes", body, wire.PageReply)

    async def status(
        self, projection: str | None = None, *, min_seq: int | None = None
    ) -> wire.StatusReply:
        """The answering worker's checkpoints, the log's head and the lag."""
        body = wire.StatusRequest(min_seq=min_seq)
        return await self._call(projection, "status", body, wire.StatusReply)

    # -- subscriptions and read-your-writes (consumers.watching) --------------------------

    def watch(
        self,
        projection: str | None = None,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        *,
        latest: bool = False,
        buffer: int = DEFAULT_BUFFER,
        patience: float = DEFAULT_PATIENCE,
    ) -> AsyncGenerator[StateRecord, None]:
        """``async for change in client.watch(...)``: the current state of every matching
        aggregate, then every later change; per aggregate every version once, in order
        (``latest``: may skip versions, never goes backwards). See ``consumers.watching``."""
        watcher = Watcher(
            self, projection or self.projection, aggregate_type, aggregate_id,
            latest=latest, buffer=buffer, patience=patience,
        )  # fmt: skip
        return watcher.__aiter__()

    async def view(
        self,
        projection: str | None = None,
        aggregate_type: str | None = None,
        *,
        on_change: OnChange | None = None,
        buffer: int = DEFAULT_BUFFER,
        patience: float = DEFAULT_PATIENCE,
    ) -> LiveView:
        """A ``LiveView`` loaded with the current states and kept current by the feed
        (``async with`` it, or ``close()``)."""
        view = LiveView(
            self, projection or self.projection, aggregate_type,
            on_change=on_change, buffer=buffer, patience=patience,
        )  # fmt: skip
        return await view.start()

    async def wait_for(
        self, seq: int, *, projection: str | None = None, timeout: float = wire.DEFAULT_TIMEOUT
    ) -> wire.StatusReply:
        """Return once the projection has applied stream sequence ``seq`` (read your writes:
        ``res = await store.append(...); await client.wait_for(res.last_seq)``), else raise
        ``RequestTimeout`` with ``.projection`` and ``.checkpoint`` (how far it got).
        With several workers, a later read may reach another one: pass ``min_seq=seq``."""
        if timeout <= 0:
            raise InvalidRequest(f"wait_for: timeout must be positive, got {timeout}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:  # one request waits at most MAX_TIMEOUT on the worker
            left = min(max(deadline - loop.time(), 0.001), wire.MAX_TIMEOUT)
            body = wire.StatusRequest(min_seq=seq, timeout=left)
            try:
                return await self._call(projection, "status", body, wire.StatusReply)
            except RequestTimeout as exc:
                if exc.projection is None or loop.time() >= deadline - 0.001:
                    raise

    # -- one request (consumers.querycall) -------------------------------------------------

    async def _call(
        self,
        projection: str | None,
        op: str,
        body: Any,
        reply_type: type[R],
        aggregate: tuple[str, str] | None = None,
    ) -> R:
        return await call(
            self.nc, self.stream, projection or self.projection, op, body, reply_type,
            timeout=self.timeout, aggregate=aggregate,
        )  # fmt: skip
