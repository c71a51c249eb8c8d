"""The runner's intake: the log read ahead into a queue, and taken from it batch by batch.

A reader task puts what ``EventStore.raw`` yields into a queue (at most ``queue_batches``
of them ahead, so reading goes on while a batch commits but memory stays bounded); the runner
takes what is queued, up to ``batch_size`` messages, waiting at most ``batch_delay`` for more.
So batches size themselves: a quiet stream commits each event a couple of milliseconds after
its append, a catch-up thousands per transaction.

While the reading is behind its ``target`` (the head it is catching up to), a batch waits up
to ``CATCH_UP_DELAY`` for more messages, up to ``batch_size`` (a reading idle for
``CATCH_UP_IDLE`` is caught up, whatever the target said): the reading goes on meanwhile
(and so does the commit of the batch before, ``projections.inflight``), and fewer, larger
transactions write each changed state and each touched index page once for more events.
While it is behind, the garbage collector runs less often (``eventstore.collector``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from eventstore import EventStore, EventStoreError, StoredMessage, cancel_and_wait, collecting_less

__all__ = ["Intake"]

CATCH_UP_DELAY = 0.25  # seconds a batch waits for more while the reading is behind its target
# ... unless nothing arrives for this long: then it is caught up. A busy machine pauses a
# delivery for 20 ms now and then, which ended catch-ups early (small batches from there on).
CATCH_UP_IDLE = 0.1
# Behind the target, the last batch holds at most 1/LAST_SHARE of batch_size: nothing overlaps
# a catch-up's last commit, so it should be short.
LAST_SHARE = 8
_END = object()
_STOP = object()


class Intake:
    """One reading of the log from ``start`` (following it, or up to ``until``)."""

    def __init__(
        self,
        store: EventStore,
        start: int,
        *,
        follow: bool,
        until: int | None,
        batch_size: int,
        batch_delay: float,
        queue_batches: int,
        stopping: Callable[[], bool],
        target: int | None = None,
    ) -> None:
        self._target = target  # the head this reading catches up to (None: the head now)
        self._taken = start - 1  # the last seq ``next`` returned
        self._carry: list[StoredMessage] = []  # read, past the last batch's end: the next's
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()
        self._size = batch_size
        self._delay = batch_delay
        self._limit = queue_batches
        self._stopping = stopping
        self._feeder = asyncio.create_task(self._feed(store, start, follow, until))
        self._collector = contextlib.ExitStack()  # collecting_less() while behind
        self._collecting = False
        self._collect()  # behind from the start: the first batch is read collecting less too

    def behind(self) -> bool:
        """Whether the messages taken so far are short of the target (catching up)."""
        return self._target is not None and self._taken < self._target

    def left(self) -> int:
        """How many seqs the messages taken so far are short of the target (0: none known)."""
        return 0 if self._target is None else max(0, self._target - self._taken)

    def last_part(self) -> int:
        """How many messages a catch-up leaves for its last batch, at most."""
        return self._size // LAST_SHARE

    def stop(self) -> None:
        """Let ``next`` return None as soon as it can (the runner is stopping)."""
        self._queue.put_nowait(_STOP)
        self._room.set()

    def _collect(self) -> None:
        """Collect garbage less often while behind, as usual once caught up (decided when a
        reading starts and when the next batch is asked for: the batch that reaches the target
        is folded and committed still collecting less)."""
        behind = self.behind()
        if behind and not self._collecting:
            self._collector.enter_context(collecting_less())
        elif not behind and self._collecting:
            self._collector.close()
        self._collecting = behind

    async def close(self) -> None:
        """Stop reading the log."""
        self._collector.close()
        self._collecting = False
        await cancel_and_wait(self._feeder)  # a lost cancel would leave it following the log

    async def _feed(self, store: EventStore, start: int, follow: bool, until: int | None) -> None:
        queue, limit = self._queue, self._limit
        if self._target is None:  # following: catching up to the head as it is now, first
            with contextlib.suppress(EventStoreError):
                self._target = await store.head()
        reading = cast(
            AsyncGenerator[list[StoredMessage], None],
            store.raw(start, follow=follow, stop_seq=until),
        )
        try:
            async with contextlib.aclosing(reading) as batches:
                async for batch in batches:
                    queue.put_nowait(batch)
                    while queue.qsize() >= limit and not self._stopping():
                        self._room.clear()
                        await self._room.wait()
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)

    async def next(self) -> list[StoredMessage] | None:
        """The next batch: what is queued, up to ``batch_size``, waiting ``batch_delay`` at
        most; None at the end of the reading or when stopping. A failed reading raises.

        Behind the target, a batch leaves ``last_part()`` messages for the last one: the last
        commit of a catch-up overlaps no fold, so it should be short (what a piece of the
        reading brings past a batch's end is kept for the next one)."""
        self._collect()
        if self._stopping():
            return None
        queue = self._queue
        if self._carry:
            batch, self._carry = self._carry, []
        else:
            item = await queue.get()
            if item is _END or item is _STOP:
                return None
            if isinstance(item, BaseException):
                raise item
            batch = list(item)
        size, part = self._size, self.last_part()
        if self._target is not None and self._target - self._taken > part:
            size = min(size, self._target - self._taken - part)  # the last part left for last
        loop = asyncio.get_running_loop()
        behind = self._target is not None and batch[-1].seq < self._target
        started = loop.time()
        deadline = started + (max(self._delay, CATCH_UP_DELAY) if behind else self._delay)
        while len(batch) < size and batch[-1].seq != self._target:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                now = loop.time()
                remaining = deadline - now
                if remaining <= 0 or self._stopping():
                    break
                # Behind, past batch_delay: a reading idle for CATCH_UP_IDLE is at the live
                # edge whatever the target said (it may name a message never delivered).
                idle = behind and now - started >= self._delay and remaining > CATCH_UP_IDLE
                try:
                    item = await asyncio.wait_for(queue.get(), CATCH_UP_IDLE if idle else remaining)
                except TimeoutError:
                    if idle:
                        self._target = None
                    break
            if item is _END or item is _STOP:
                queue.put_nowait(item)  # seen again by the next call
                break
            if isinstance(item, BaseException):
                queue.put_nowait(item)
                break
            batch.extend(item)
        if len(batch) > size:
            batch, self._carry = batch[:size], batch[size:]
        if queue.qsize() < self._limit // 2:
            self._room.set()
        self._taken = batch[-1].seq
        return batch
