"""Seed 004's L1 cache without a TTL: a ``LiveView`` of the chats' read-model states, kept
current by the change feed.

An entry is never expired by time: it is replaced when the feed says the chat changed, so it
is stale at most by the feed's delay. ``get(id)`` answers from memory; a chat the view does
not hold yet (created a moment ago), or a read that must see the caller's own write to that
chat (``min_seq``: the seq of that append) that the view has not delivered yet, goes to the
query service instead (a miss). The cache counts hits and misses and, per chat, when each
version reached it: that is how the example measures staleness.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consumers import LiveView, ProjectionClient
from projections import StateRecord


class ChatCache:
    def __init__(self, client: ProjectionClient, projection: str = "vrooli") -> None:
        self.client = client
        self.projection = projection
        self.view: LiveView | None = None
        self.hits = 0
        self.misses = 0
        self.delivered: dict[str, list[tuple[int, float]]] = {}  # id -> (version, when)
        self._moved = asyncio.Event()

    async def start(self) -> ChatCache:
        self.view = await self.client.view(self.projection, "chat", on_change=self._changed)
        return self

    async def close(self) -> None:
        if self.view is not None:
            await self.view.close()

    def _changed(self, record: StateRecord) -> None:
        self.delivered.setdefault(record.aggregate_id, []).append(
            (record.version, time.monotonic())
        )
        self._moved.set()

    async def get(self, chat_id: str, *, min_seq: int | None = None) -> tuple[int, Any]:
        """``(version, state)`` of a chat: from memory when it can, else from the service."""
        assert self.view is not None, "start() the cache first"
        record = self.view.get(chat_id)
        fresh = min_seq is None or self.view.seq >= min_seq
        if record is not None and (fresh or record.seq >= (min_seq or 0)):
            self.hits += 1
            return record.version, record.state
        self.misses += 1
        reply = await self.client.state(
            "chat", chat_id, projection=self.projection, min_seq=min_seq
        )
        return reply.version, reply.state

    async def holds(self, versions: dict[str, int], timeout: float = 10.0) -> bool:
        """Wait until the cache holds at least these versions (False after ``timeout``)."""
        assert self.view is not None, "start() the cache first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        view = self.view
        while any((r := view.get(c)) is None or r.version < v for c, v in versions.items()):
            self._moved.clear()
            try:
                await asyncio.wait_for(self._moved.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return False
        return True

    def reached(self, chat_id: str, version: int) -> float | None:
        """When the cache first held ``version`` of the chat or a later one (None: never)."""
        times = [t for v, t in self.delivered.get(chat_id, []) if v >= version]
        return min(times) if times else None
