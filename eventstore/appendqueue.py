"""The appends waiting for the committer: a queue that counts its events, with backpressure.

``append_many`` of thousands of appends used to build every request before the committer sent
its first batch: the server idled through the client's work, then the client through the
server's. Now a submitter waits (``room``) while a full batch is queued and not yet taken, so
the first batch goes out after ``max_batch`` requests are built and the server stores one batch
while the client builds and prepares the next; and the committer, waiting for a batch in flight
with room for another, wakes once half a batch is queued (``enough``), not only when the one in
flight is answered.
"""

from __future__ import annotations

import asyncio

from eventstore.pending import MAX_EVENTS_PER_APPEND, Pending

__all__ = ["AppendQueue"]


class AppendQueue:
    """Pending appends in order, with the count of their events."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._events = 0  # events queued, not yet taken into a group
        self._room = asyncio.Event()  # set while less than a full batch is queued
        self._room.set()
        self.enough = asyncio.Event()  # set once half a batch is queued

    def empty(self) -> bool:
        return self._queue.empty()

    def put(self, p: Pending) -> None:
        self._queue.put_nowait(p)
        self._events += p.size
        if self._events >= self.max_batch // 2:
            self.enough.set()  # worth a batch of its own beside one in flight
            if self._events >= self.max_batch:
                self._room.clear()

    async def room(self) -> None:
        """Wait while a full batch is queued and not taken yet."""
        await self._room.wait()

    def release(self) -> None:
        """Let every submitter go on (the committer is gone)."""
        self._room.set()

    def _taken(self, p: Pending) -> Pending:
        self._events -= p.size
        if self._events < self.max_batch:
            self._room.set()
        return p

    async def get(self) -> Pending:
        return self._taken(await self._queue.get())

    def drain(self) -> list[Pending]:
        """Everything queued, taken out."""
        out = []
        while not self._queue.empty():
            out.append(self._taken(self._queue.get_nowait()))
        return out

    def collect(self, carry: list[Pending], busy: set[str]) -> tuple[list[Pending], list[Pending]]:
        """The next group (``carry`` first, then the queue) of about ``max_batch`` events, none
        on a ``busy`` subject; and what is left over, in order."""
        group: list[Pending] = []
        later: list[Pending] = []
        n = 0
        full = False
        max_batch = self.max_batch

        def take(p: Pending) -> None:
            nonlocal n, full
            if full or p.subject in busy:
                later.append(p)
            elif group and (n >= max_batch or n + p.size > MAX_EVENTS_PER_APPEND):
                full = True
                later.append(p)
            else:
                group.append(p)
                n += p.size

        for p in carry:
            take(p)
        queue = self._queue
        while not full and not queue.empty():
            take(self._taken(queue.get_nowait()))
        return group, later
