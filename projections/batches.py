"""The runner's intake: the log read ahead into a queue, and taken from it batch by batch.

A reader task puts what ``EventStore.raw`` yields into a queue (at most ``queue_batches``
of them ahead, so reading goes on while a batch commits but memory stays bounded); the runner
takes what is queued, up to ``batch_size`` messages, waiting at most ``batch_delay`` for more.
So batches size themselves: a quiet stream commits each event a couple of milliseconds after
its append, a catch-up thousands per transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from eventstore import EventStore, StoredMessage

__all__ = ["Intake"]

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
    ) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()
        self._size = batch_size
        self._delay = batch_delay
        self._limit = queue_batches
        self._stopping = stopping
        self._feeder = asyncio.create_task(self._feed(store, start, follow, until))

    def stop(self) -> None:
        """Let ``next`` return None as soon as it can (the runner is stopping)."""
        self._queue.put_nowait(_STOP)
        self._room.set()

    async def close(self) -> None:
        """Stop reading the log."""
        self._feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._feeder

    async def _feed(self, store: EventStore, start: int, follow: bool, until: int | None) -> None:
        queue, limit = self._queue, self._limit
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
        most; None at the end of the reading or when stopping. A failed reading raises."""
        if self._stopping():
            return None
        queue = self._queue
        item = await queue.get()
        if item is _END or item is _STOP:
            return None
        if isinstance(item, BaseException):
            raise item
        batch: list[StoredMessage] = list(item)
        size = self._size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._delay
        while len(batch) < size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping():
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _END or item is _STOP:
                queue.put_nowait(item)  # seen again by the next call
                break
            if isinstance(item, BaseException):
                queue.put_nowait(item)
                break
            batch.extend(item)
        if queue.qsize() < self._limit // 2:
            self._room.set()
        return batch
