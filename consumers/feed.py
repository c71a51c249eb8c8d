"""The change feed: after every commit, one JSON notification per changed aggregate.

``ChangeFeed(store, runner)`` hooks ``Runner.on_commit``: for each aggregate a batch
changed it publishes a ``consumers.protocol.Notification`` on
``_ES.CHANGES.<stream>.<projection>.<aggregate_type>.<id token>`` (core NATS, outside every
events stream), in commit order, and a ``Heartbeat`` on ``..._beat`` every ``beat_interval``
seconds carrying the seq notified through, so a subscriber can tell it is behind.

Crash safety. Core NATS keeps nothing, so a worker killed between its commit and its
notifications would leave subscribers without them. The feed records in the database (meta
key ``feed.notified.<projection>``, on a connection of its own, at most every
``mark_interval`` seconds) the seq whose notifications the server has confirmed (a flush
after publishing them); at start it re-publishes the current state of every aggregate whose
state seq is above that mark before the runner folds anything new. A subscriber may thus see
a version twice (it deduplicates by version), never miss the last one. A batch whose
notifications could not be handed to the connection (its buffer full during a long
disconnect) holds the mark before it until the next start or the re-publication after the
reconnect (below).

Publishing happens inside the commit callback without waiting for the server (the flush and
the mark are a background task's, one flush confirming every commit published before it, a
few milliseconds apart at most), so the fold waits only for encoding and buffering.

A batch's notifications go out sorted by aggregate type, each carrying the checkpoint of its
commit, and the last one of each type (``last_of_type``) and of the batch (``last_of_batch``)
say so: a subscriber then knows it has every notification up to that checkpoint for its
filter (``consumers.watching``'s floor, ``LiveView.seq``) without waiting for a heartbeat.
Once a batch failed to publish, that checkpoint is held before it, as the heartbeats' is.

Reconnects. A flush that completes on a connection re-established since the last confirmed
one says nothing of what the old connection lost (core NATS publications written before the
drop that never reached the server): the feed remembers the connection's reconnect count at
each confirmed flush, and when it changed it confirms nothing but re-publishes every state
past the confirmed seq (as a start does, ``last=False``: no floor moves on them), flushes
again and confirms only then. Until then a batch's notifications carry the confirmed seq as
their checkpoint, so no watcher's floor passes what may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import structlog

from consumers.protocol import Heartbeat, Notification, beat_subject, feed_subject
from eventstore import EventStore, cancel_and_wait
from projections import MAX_LIMIT, CommitInfo, ProjectionDB, Runner, query_states

__all__ = ["MARK_KEY", "ChangeFeed"]

log = structlog.get_logger("consumers.feed")

MARK_KEY = "feed.notified."  # + projection name: the seq notified (and flushed) through
_encode = msgspec.json.Encoder().encode
_FLUSH_TIMEOUT = 10  # seconds (nats-py takes an int)
_TICK = 0.1  # how often a flush in progress looks at the connection's reconnect count
_CONFIRM_GAP = 0.005  # seconds between two flushes of the background task at least


def _retrieve(task: asyncio.Future[None]) -> None:
    """Consume the outcome of a flush given up on (its PING went to a dropped connection)."""
    if not task.cancelled():
        task.exception()


class ChangeFeed:
    """Publishes a worker's changes (see the module doc); ``start`` before the runner runs,
    ``stop`` after it stopped."""

    def __init__(
        self,
        store: EventStore,
        runner: Runner,
        *,
        worker: str = "",
        beat_interval: float = 2.0,
        mark_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.nc = store.nc
        self.stream = store.settings.name
        self.runner = runner
        self.db_path = runner.db.path
        self.worker = worker
        self.beat_interval = beat_interval
        self.mark_interval = mark_interval
        self.names = [p.name for p in runner.projections]
        self.published: dict[str, int] = {}  # seq whose notifications are handed to nats-py
        self.flushed: dict[str, int] = {}  # ... and confirmed by the server
        self.marked: dict[str, int] = {}  # ... and recorded in the database
        self.hold: dict[str, int] = {}  # the mark may not pass this (a batch failed to publish)
        self.failures = 0  # batches that failed to publish
        self._reconnects = 0  # the connection's reconnect count at the last confirmed flush
        self.notifications = 0
        self.truncated = 0
        self._db: ProjectionDB | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(stream=self.stream, db=str(self.db_path))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-publish what a previous run may not have delivered, then follow the commits."""
        self._db = db = await self.runner.db.sibling()
        self._reconnects = self._count()
        checkpoints = self.runner.checkpoints()
        for name in self.names:
            mark = int(await db.meta(MARK_KEY + name) or 0)
            self.flushed[name] = mark
            again = await self._republish(db, name, mark)
            if again:
                self._log.info(
                    "change feed re-published states past its mark",
                    projection=name,
                    mark=mark,
                    aggregates=again,
                )
            self.published[name] = checkpoints[name]
        pending = dict(self.published)
        if await self._confirm():  # else the background task re-publishes past the marks
            self.flushed = pending
        await self._write_marks()
        self.runner.on_commit.append(self._on_commit)
        self._task = asyncio.create_task(self._background())

    async def stop(self) -> None:
        """Flush what is published, record the mark, close the feed's connection."""
        with contextlib.suppress(ValueError):
            self.runner.on_commit.remove(self._on_commit)
        task, self._task = self._task, None
        if task is not None:  # asked to finish, not cancelled: a cancel can be lost (3.11)
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=_FLUSH_TIMEOUT + 5)
            if not done:
                await cancel_and_wait(task)
        try:
            if not self.nc.is_closed:
                pending = dict(self.published)
                if await self._confirm():  # else the next start re-publishes past the mark
                    self.flushed = pending
                    await self._write_marks()
        except Exception:  # a lost server at shutdown: the next start re-publishes
            self._log.warning("change feed could not record its last mark", exc_info=True)
        finally:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    # -- publishing ------------------------------------------------------------------------

    async def _republish(self, db: ProjectionDB, name: str, mark: int) -> int:
        count, cursor = 0, None
        while True:
            page = await query_states(db, name, since=mark, limit=MAX_LIMIT, cursor=cursor)
            at = self.runner.checkpoints()[name]  # each state is current as of the checkpoint
            await self._publish(
                name, ((r.aggregate_type, r.aggregate_id, r.version, r.seq, r.state, None)
                       for r in page.items), at, last=False,
            )  # fmt: skip
            count += len(page.items)
            if page.next_cursor is None:
                return count
            cursor = page.next_cursor

    async def _on_commit(self, info: CommitInfo) -> None:
        for name, states in info.states.items():
            try:
                if states:
                    ordered = sorted(states, key=lambda s: s[0].aggregate_type)
                    at = min(info.last_seq, self.hold.get(name, info.last_seq))
                    if self._unsure():  # what the old connection held may be lost
                        at = min(at, self.flushed.get(name, 0))
                    await self._publish(
                        name, ((a.aggregate_type, a.aggregate_id, a.version, a.seq, a.state, prev)
                               for a, prev in ordered), at,
                    )  # fmt: skip
            except Exception:  # the connection's buffer is full, or it is closed
                self.failures += 1
                # Never record a mark past this batch: the next start re-publishes it.
                self.hold.setdefault(name, info.first_seq - 1)
                self._log.warning(
                    "change feed could not publish a batch's notifications; a restart "
                    "re-publishes them",
                    projection=name,
                    first=info.first_seq,
                    last=info.last_seq,
                    exc_info=True,
                )
            self.published[name] = info.last_seq
        self._wake.set()

    async def _publish(
        self,
        name: str,
        changes: Iterable[tuple[str, str, int, int, Any, int | None]],
        checkpoint: int,
        *,
        last: bool = True,
    ) -> None:
        """Publish ``changes`` (grouped by aggregate type); ``last``: they are a whole batch, so
        mark the last of each type and the last of all."""
        nc, stream, limit = self.nc, self.stream, self.nc.max_payload
        items = list(changes)
        for n, (agg_type, agg_id, version, seq, state, previous) in enumerate(items, 1):
            final = last and n == len(items)
            note = Notification(
                projection=name,
                aggregate_type=agg_type,
                aggregate_id=agg_id,
                version=version,
                seq=seq,
                state=state,
                previous_version=previous,
                checkpoint=checkpoint,
                last_of_type=final or (last and items[n][0] != agg_type),
                last_of_batch=final,
            )
            payload = _encode(note)
            if len(payload) > limit:
                payload = _encode(msgspec.structs.replace(note, state=None, truncated=True))
                self.truncated += 1
            await nc.publish(feed_subject(stream, name, agg_type, agg_id), payload)
            self.notifications += 1

    # -- flush, mark, beat -----------------------------------------------------------------

    async def _background(self) -> None:
        last_mark = last_beat = last_flush = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.beat_interval):
                    await self._wake.wait()
            # One flush (a PING round trip) confirms every commit published before it: at most
            # one per _CONFIRM_GAP, so a busy worker does not pay a round trip per commit.
            if (gap := last_flush + _CONFIRM_GAP - time.monotonic()) > 0:
                await asyncio.sleep(gap)
            last_flush = time.monotonic()
            self._wake.clear()
            if self._stopping:
                return
            try:
                pending = dict(self.published)
                if await self._confirm():
                    self.flushed = pending
                elif self.nc.is_connected:
                    await self._recover()
                else:  # reconnecting: look again soon
                    await asyncio.sleep(_TICK)
                    self._wake.set()
                now = time.monotonic()
                if now - last_mark >= self.mark_interval:
                    await self._write_marks()
                    last_mark = now
                if now - last_beat >= self.beat_interval:
                    await self._beat()
                    last_beat = now
            except asyncio.CancelledError:
                raise
            except Exception:  # a reconnect in progress, a busy file: try again next round
                self._log.warning("change feed flush or mark failed", exc_info=True)
                await asyncio.sleep(min(1.0, self.beat_interval))

    def _count(self) -> int:
        return int(self.nc.stats["reconnects"])

    def _unsure(self) -> bool:
        """Whether the connection dropped since the last confirmed flush (or is down now)."""
        return not self.nc.is_connected or self._count() != self._reconnects

    async def _confirm(self) -> bool:
        """Flush; whether the server has received everything published before the call."""
        return not self._unsure() and await self._flush_on(self._reconnects)

    async def _flush_on(self, count: int) -> bool:
        """Flush; whether it completed with the connection still the one of reconnect
        ``count`` (a PING sent before a drop is never answered: no waiting for its timeout)."""
        nc = self.nc
        # nats-py writes a flush's PING ahead of what its flusher task has not written yet.
        await asyncio.wait_for(nc._flush_pending(force_flush=True), _FLUSH_TIMEOUT)
        flush = asyncio.ensure_future(nc.flush(_FLUSH_TIMEOUT))
        flush.add_done_callback(_retrieve)
        while not flush.done():
            if not nc.is_connected or self._count() != count:
                return False
            await asyncio.wait({flush}, timeout=_TICK)
        flush.result()
        return nc.is_connected and self._count() == count

    async def _recover(self) -> None:
        """The connection was re-established since the last confirmed flush: re-publish every
        state past the confirmed seqs (and past a hold), then confirm them."""
        db = self._db
        if db is None or not self.nc.is_connected:
            return
        count, failures = self._count(), self.failures
        pending, holds = dict(self.published), dict(self.hold)
        again = 0
        for name in self.names:
            since = min(self.flushed.get(name, 0), holds.get(name, 1 << 62))
            again += await self._republish(db, name, since)
        if not await self._flush_on(count):
            return  # dropped again: the next round starts over
        self._reconnects = count
        self.flushed = pending
        if self.failures == failures:  # every batch that failed is re-published
            for name, seq in holds.items():
                if self.hold.get(name) == seq:
                    del self.hold[name]
        self._log.info(
            "change feed re-published states past its confirmed mark after a reconnect",
            aggregates=again,
            marks=self.flushed,
        )

    async def _beat(self) -> None:
        for name in self.names:
            beat = Heartbeat(
                projection=name,
                # What the server confirmed, never past a batch that failed to publish: a
                # watcher takes this as the floor it resyncs from.
                checkpoint=min(self.flushed.get(name, 0), self.hold.get(name, 1 << 62)),
                stream=self.stream,
                worker=self.worker,
            )
            await self.nc.publish(beat_subject(self.stream, name), _encode(beat))

    async def _write_marks(self) -> None:
        db = self._db
        marks = {n: min(s, self.hold.get(n, s)) for n, s in self.flushed.items()}
        changed = {n: s for n, s in marks.items() if self.marked.get(n) != s}
        if db is None or not changed:
            return
        async with db.transaction():
            for name, seq in changed.items():
                await db.set_meta(MARK_KEY + name, str(seq))
        self.marked.update(changed)
