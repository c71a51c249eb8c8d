"""The Python client of the query service: what an agent on another host needs, given only the
NATS URL.

``ProjectionClient(store)`` uses an open ``EventStore``'s connection and stream;
``await ProjectionClient.connect(url, stream=...)`` opens a plain NATS connection of its own
(no JetStream permissions needed) and closes it with the client (``async with``). Each call is
one request to ``_ES.Q.<stream>.<projection>.<op>`` (``consumers.protocol``), answered by any
worker of the stream that runs the projection; replies are decoded into the protocol's typed
structs and error replies raised as our exceptions:

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

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from consumers import protocol as wire
from consumers.connection import CONNECT_TIMEOUT
from consumers.liveview import LiveView, OnChange
from consumers.watching import DEFAULT_BUFFER, DEFAULT_PATIENCE, Watcher
from eventstore import (
    DEFAULT_URL,
    AggregateNotFound,
    EventStore,
    InvalidPoint,
    InvalidRequest,
    NotConnected,
    ProjectionError,
    RequestTimeout,
    UnknownProjection,
    client_options,
    guarded_connect,
    validate_stream_name,
)
from projections import DEFAULT_LIMIT, Point, Scalar, StateRecord

__all__ = ["DEFAULT_PROJECTION", "ProjectionClient"]

DEFAULT_PROJECTION = "entities"
# Beyond a request's own wait (min_seq), how long the reply may take to arrive.
_MARGIN = 2.0

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode
_error_decoder = msgspec.json.Decoder(wire.ErrorReply)
log = structlog.get_logger("consumers.client")


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback prints a traceback; ours logs (errors that matter
    reach the caller as exceptions)."""
    log.debug("nats connection error", error=str(exc) or type(exc).__name__)


async def _nothing() -> None:
    return None


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
        nc = Client()
        options = {
            "disconnected_cb": _nothing,
            "reconnected_cb": _nothing,
            "connect_timeout": max(1, int(connect_timeout)),
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            **client_options(creds, tls_ca),
        }
        try:
            await asyncio.wait_for(guarded_connect(nc, url, options, _quiet), connect_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise NotConnected(url, str(exc) or type(exc).__name__) from exc
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

    # -- one request -----------------------------------------------------------------------

    async def _call(
        self,
        projection: str | None,
        op: str,
        body: Any,
        reply_type: type[R],
        aggregate: tuple[str, str] | None = None,
    ) -> R:
        name = projection or self.projection
        subject = wire.endpoint_subject(self.stream, name, op)
        wait = self.timeout
        if body.min_seq is not None:
            wait = (body.timeout or wire.DEFAULT_TIMEOUT) + _MARGIN
        try:
            msg = await self.nc.request(subject, _encode(body), timeout=wait)
        except nats.errors.NoRespondersError:
            raise UnknownProjection(
                name,
                f"no worker serves projection {name} on stream {self.stream}: start "
                "`eventstore worker` (running that projection) for this stream",
            ) from None
        except nats.errors.TimeoutError:
            raise RequestTimeout(
                f"{op} of projection {name} on stream {self.stream}", wait
            ) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise NotConnected(self._url(), type(exc).__name__) from exc
        except nats.errors.Error as exc:
            raise ProjectionError(f"{op} of projection {name}: {exc}") from exc
        headers = msg.headers or {}
        if ERROR_CODE_HEADER in headers:
            raise self._error(name, op, headers, msg.data, aggregate, wait)
        try:
            return msgspec.json.decode(msg.data, type=reply_type)
        except msgspec.DecodeError as exc:
            raise ProjectionError(
                f"{op} of projection {name}: the worker's reply cannot be read ({exc}); is it "
                "the same eventstore version?"
            ) from exc

    def _url(self) -> str:
        url = self.nc.connected_url
        return url.geturl() if url is not None else "the NATS server"

    def _error(
        self,
        name: str,
        op: str,
        headers: Mapping[str, str],
        data: bytes,
        aggregate: tuple[str, str] | None,
        wait: float,
    ) -> Exception:
        try:
            body = _error_decoder.decode(data).error
        except msgspec.DecodeError:
            body = wire.ErrorBody(
                code=headers.get(ERROR_CODE_HEADER, "internal"),
                message=headers.get(ERROR_HEADER, "error without a message"),
            )
        code, message = body.code, body.message
        if code == "not_found" and aggregate is not None:
            prefix = f"{aggregate[0]}/{aggregate[1]}: "
            return AggregateNotFound(*aggregate, message.removeprefix(prefix))
        if code == "timeout":
            return RequestTimeout(
                f"{op} of projection {name} on stream {self.stream}",
                wait,
                message,
                projection=name,
                checkpoint=body.checkpoint,
            )
        if code == "unknown_projection":
            return UnknownProjection(name, message)
        if code == "bad_request" and body.reason == "invalid_point":
            return InvalidPoint(message)
        if code in ("bad_request", "too_large"):
            return InvalidRequest(message, code=code)
        return ProjectionError(f"the query service of stream {self.stream} failed: {message}")
