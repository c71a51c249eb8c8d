"""Watching a projection: every change of the aggregates one follows, in order, none lost.

``ProjectionClient.watch(...)`` is a ``Watcher``; ``ProjectionClient.view(...)`` a
``consumers.liveview.LiveView`` on top of one. Both build only on the query service and the
change feed (``consumers.protocol``), so what they do any client in any language can do too.

How a watcher keeps "every version exactly once, in order" (per aggregate) over a feed that is
core NATS (it keeps nothing, drops what a slow reader cannot take, and is re-sent after a
worker start):

1. It subscribes to the feed (and the heartbeats) first, into a buffer of its own, and only
   then lists the current states (``list``, or ``state`` for one aggregate): a change committed
   after the listing is in the buffer, one before it is in the listing.
2. It remembers the last version it yielded of each aggregate and ignores any notification at
   or below it (re-publications, a second worker's copy, what the listing already showed).
3. A notification above the last version + 1 is a gap (several versions folded in one batch,
   a notification lost): the missing versions are read with ``range`` (one replay in the
   worker for up to ``protocol.RANGE_LIMIT`` versions, with ``min_seq``, so a worker that is
   behind waits instead of answering stale), up to the highest version of that aggregate
   already buffered, so a subscriber far behind reads each aggregate's backlog in a request
   or two and skips the notifications it covered; then the notification itself (read with
   ``state`` when it came ``truncated``).
4. ``floor`` is a seq up to which every notification is known to be received: the listing's
   checkpoint, then each heartbeat's, and each notification that closes its batch for this
   watch's filter (``Notification.checkpoint``: one worker publishes in commit order, and
   NATS keeps one publisher's order). A full buffer (``buffer`` messages: the subscriber is
   slow) or a reconnect of the connection (a server restart: anything may have been lost
   meanwhile) makes the watcher resynchronise: ``changes(since=floor)`` gives every
   aggregate whose state moved after it, each applied as in 2 and 3.

``latest=True`` (coalesce) keeps 2 and 4 but skips 3's missing versions: it may skip
intermediate versions and never goes backwards. What is yielded is a
``projections.StateRecord``: ``projection, aggregate_type, aggregate_id, version, seq, state``.

A worker that restarts or dies only delays a watcher: its reads are retried (``patience``
seconds at most, then the error is raised); the first listing is not, so a watch with no
worker serving the projection fails at once with ``UnknownProjection``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from consumers import protocol as wire
from eventstore import AggregateNotFound, NotConnected, RequestTimeout, UnknownProjection
from projections import MAX_LIMIT, StateRecord

__all__ = ["DEFAULT_BUFFER", "DEFAULT_PATIENCE", "Queries", "Watcher"]

log = structlog.get_logger("consumers.watching")

DEFAULT_BUFFER = 100_000  # notifications a watcher holds for a slow consumer before resyncing
DEFAULT_PATIENCE = 120.0  # seconds a read may be retried while no worker answers
_TICK = 0.25  # how often a waiting watcher looks at the connection's reconnect count
_RETRYABLE = (UnknownProjection, RequestTimeout, NotConnected)
_notification = msgspec.json.Decoder(wire.Notification)
_heartbeat = msgspec.json.Decoder(wire.Heartbeat)

Key = tuple[str, str]


class Queries(Protocol):
    """What a watcher needs of ``ProjectionClient`` (kept apart: no import circle)."""

    nc: Client
    stream: str

    async def state(
        self, aggregate_type: str, aggregate_id: str, *, projection: str | None = None,
        version: int | None = None, min_seq: int | None = None,
    ) -> wire.StateReply: ...  # fmt: skip

    def query_all(
        self, projection: str | None = None, *, aggregate_type: str | None = None, limit: int = ...
    ) -> AsyncIterator[wire.PageReply]: ...

    async def changes(
        self, since: int, *, projection: str | None = None, aggregate_type: str | None = None,
        limit: int = ..., cursor: str | None = None,
    ) -> wire.PageReply: ...  # fmt: skip

    async def status(self, projection: str | None = None) -> wire.StatusReply: ...

    async def state_range(
        self, aggregate_type: str, aggregate_id: str, from_version: int,
        to_version: int | None = None, *, projection: str | None = None,
        min_seq: int | None = None,
    ) -> wire.RangeReply: ...  # fmt: skip


def _record(reply: wire.StateReply) -> StateRecord:
    return StateRecord(
        projection=reply.projection,
        aggregate_type=reply.aggregate_type,
        aggregate_id=reply.aggregate_id,
        version=reply.version,
        seq=reply.seq,
        state=reply.state,
    )


class Watcher:
    """``async for change in watcher``: the current states, then every change (module doc)."""

    def __init__(
        self,
        client: Queries,
        projection: str,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        *,
        latest: bool = False,
        buffer: int = DEFAULT_BUFFER,
        patience: float = DEFAULT_PATIENCE,
    ) -> None:
        if aggregate_id is not None and aggregate_type is None:
            raise ValueError("watching one aggregate needs its aggregate_type too")
        self.client = client
        self.projection = projection
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.latest = latest
        self.buffer = buffer
        self.patience = patience
        self.versions: dict[Key, int] = {}  # the last version yielded of each aggregate
        self.floor = 0  # every notification up to this seq has been received or read
        self.ready = asyncio.Event()  # set once the initial states are all yielded
        self.resyncs = 0
        self.filled = 0  # missing versions read with `range`
        self._buf: deque[wire.Notification | wire.Heartbeat | str] = deque()  # str: malformed
        self._ahead: dict[Key, tuple[int, int]] = {}  # highest (version, seq) notified
        self._wake = asyncio.Event()
        self._overflow = False
        self._reconnects = 0
        self._beat = wire.beat_subject(client.stream, projection)
        self._log = log.bind(stream=client.stream, projection=projection)

    # -- the feed --------------------------------------------------------------------------

    def _subject(self) -> str:
        stream, name = self.client.stream, self.projection
        if self.aggregate_id is not None and self.aggregate_type is not None:
            return wire.feed_subject(stream, name, self.aggregate_type, self.aggregate_id)
        return wire.feed_wildcard(stream, name, self.aggregate_type)

    async def _on_msg(self, msg: Msg) -> None:
        if len(self._buf) >= self.buffer:  # a slow consumer: drop it all, resync from floor
            self._buf.clear()
            self._ahead.clear()
            self._overflow = True
        item: wire.Notification | wire.Heartbeat | str = msg.subject
        with contextlib.suppress(msgspec.DecodeError):
            if msg.subject == self._beat:
                item = _heartbeat.decode(msg.data)
            else:
                item = note = _notification.decode(msg.data)
                key = (note.aggregate_type, note.aggregate_id)
                if note.version > self._ahead.get(key, (0, 0))[0]:
                    self._ahead[key] = (note.version, note.seq)
        self._buf.append(item)
        self._wake.set()

    async def _subscribe(self) -> list[Subscription]:
        nc = self.client.nc
        # nats-py's own queue never drops (ours decides, see _on_msg).
        limits: dict[str, Any] = {"pending_msgs_limit": 0, "pending_bytes_limit": 0}
        subs = [await nc.subscribe(self._subject(), cb=self._on_msg, **limits)]
        if self.aggregate_type is not None:  # the wildcard `.>` includes the beats already
            subs.append(await nc.subscribe(self._beat, cb=self._on_msg, **limits))
        await nc.flush()
        self._reconnects = nc.stats["reconnects"]
        return subs

    # -- reading ---------------------------------------------------------------------------

    async def _retry(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``, retried while no worker answers (a restart), ``patience`` at most."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.patience, 0.05
        while True:
            try:
                return await call()
            except _RETRYABLE as exc:
                if loop.time() + pause > deadline:
                    raise
                self._log.info("watch retries a read", what=what, error=str(exc))
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _fill(
        self, key: Key, first: int, last: int, min_seq: int
    ) -> AsyncIterator[StateRecord]:
        """Versions ``first`` to ``last`` of ``key``, page by page (``range``)."""
        while first <= last:
            reply: wire.RangeReply = await self._retry(
                f"versions of {key[0]}/{key[1]}", self._range(key, first, last, min_seq)
            )
            for item in reply.items:
                if item.version >= first:
                    self.filled += 1
                    yield item
            if reply.next_version is None or not reply.items:
                return
            first = reply.next_version

    def _range(self, key: Key, first: int, last: int, min_seq: int) -> Callable[[], Awaitable[Any]]:
        return lambda: self.client.state_range(
            *key, first, last, projection=self.projection, min_seq=min_seq
        )

    async def _state_at(self, key: Key, version: int | None, min_seq: int) -> StateRecord:
        reply = await self._retry(
            f"state of {key[0]}/{key[1]}",
            lambda: self.client.state(
                *key, projection=self.projection, version=version, min_seq=min_seq
            ),
        )
        return _record(reply)

    async def _initial(self) -> AsyncIterator[StateRecord]:
        if self.aggregate_id is not None and self.aggregate_type is not None:
            try:
                reply = await self.client.state(
                    self.aggregate_type, self.aggregate_id, projection=self.projection
                )
            except AggregateNotFound:  # no state yet: the floor is where the worker is
                self.floor = (await self.client.status(self.projection)).checkpoint
                return
            self.floor = reply.checkpoint
            yield _record(reply)
            return
        first = True
        async for page in self.client.query_all(
            self.projection, aggregate_type=self.aggregate_type, limit=MAX_LIMIT
        ):
            if first:  # later pages are newer still: the first checkpoint is the safe one
                self.floor, first = page.checkpoint, False
            for item in page.items:
                yield item

    async def _resync(self) -> AsyncIterator[StateRecord]:
        """Every aggregate that moved after ``floor``, through ``_accept``."""
        self.resyncs += 1
        self._overflow = False
        self._reconnects = self.client.nc.stats["reconnects"]
        since = self.floor
        self._log.info("watch resynchronises", since=since)
        if self.aggregate_id is not None and self.aggregate_type is not None:
            key = (self.aggregate_type, self.aggregate_id)
            try:
                reply = await self._retry(
                    "state", lambda: self.client.state(*key, projection=self.projection)
                )
            except AggregateNotFound:
                return
            self.floor = max(self.floor, reply.checkpoint)
            async for rec in self._accept(_record(reply), reply.seq):
                yield rec
            return
        cursor: str | None = None
        checkpoint: int | None = None
        while True:
            page: wire.PageReply = await self._retry("changes", self._changes(since, cursor))
            if checkpoint is None:  # later pages are newer: the first checkpoint is safe
                checkpoint = page.checkpoint
            for item in page.items:
                async for rec in self._accept(item, item.seq):
                    yield rec
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        self.floor = max(self.floor, checkpoint or 0)

    def _changes(self, since: int, cursor: str | None) -> Callable[[], Awaitable[Any]]:
        return lambda: self.client.changes(
            since, projection=self.projection, aggregate_type=self.aggregate_type,
            limit=MAX_LIMIT, cursor=cursor,
        )  # fmt: skip

    async def _accept(
        self, rec: StateRecord, seq: int, truncated: bool = False, *, fill: bool = True
    ) -> AsyncIterator[StateRecord]:
        """Yield what ``rec`` adds: nothing if seen, else the missing versions, then it."""
        key = (rec.aggregate_type, rec.aggregate_id)
        last = self.versions.get(key, 0)
        if rec.version <= last:
            return
        if fill and not self.latest and rec.version > last + 1:
            # Up to the highest version already buffered: its notifications are then old news.
            target, min_seq = rec.version, seq
            upto, upto_seq = self._ahead.get(key, (0, 0))
            if upto > target:
                target, min_seq = upto, max(seq, upto_seq)
            async for missing in self._fill(key, last + 1, target, min_seq):
                if missing.version > self.versions.get(key, 0):
                    self.versions[key] = missing.version
                    yield missing
            if self.versions.get(key, 0) >= rec.version:
                return
        if truncated:
            rec = await self._state_at(key, None if self.latest else rec.version, seq)
            if rec.version <= self.versions.get(key, 0):
                return
        self.versions[key] = rec.version
        yield rec

    def _closes(self, note: wire.Notification) -> bool:
        """Whether every notification this watch follows up to ``note.checkpoint`` came before
        ``note`` (from its worker): one aggregate has one notification per batch; the others
        need the last one of the batch for their filter."""
        if self.aggregate_id is not None:
            return True
        return note.last_of_type if self.aggregate_type is not None else note.last_of_batch

    async def _next(self) -> wire.Notification | wire.Heartbeat | str | None:
        if not self._buf:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK):
                    await self._wake.wait()
        return self._buf.popleft() if self._buf else None

    def _must_resync(self) -> bool:
        return self._overflow or self.client.nc.stats["reconnects"] != self._reconnects

    async def __aiter__(self) -> AsyncGenerator[StateRecord, None]:
        subs = await self._subscribe()
        try:
            async for item in self._initial():  # the current states first, no history
                async for rec in self._accept(item, item.seq, fill=False):
                    yield rec
            self.ready.set()
            while True:
                if self._must_resync():
                    async for rec in self._resync():
                        yield rec
                    continue
                note = await self._next()
                if note is None:
                    continue
                if isinstance(note, wire.Heartbeat):
                    self.floor = max(self.floor, note.checkpoint)
                    continue
                if isinstance(note, str):
                    self._log.warning("watch ignored a malformed message", subject=note)
                    continue
                rec = StateRecord(
                    projection=note.projection,
                    aggregate_type=note.aggregate_type,
                    aggregate_id=note.aggregate_id,
                    version=note.version,
                    seq=note.seq,
                    state=note.state,
                )
                async for out in self._accept(rec, note.seq, note.truncated):
                    yield out
                if note.checkpoint is not None and self._closes(note):
                    self.floor = max(self.floor, note.checkpoint)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):  # a connection already closed
                    await sub.unsubscribe()
