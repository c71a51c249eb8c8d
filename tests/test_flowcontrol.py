"""Flow control of the reader's ordered consumers holds against a real server: a reader that
stops taking messages is not sent the rest of the log (nats-py alone would buffer it all)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from eventstore import AppendRequest, EventStore, NewEvent

EVENTS = 30_000


async def received(store: EventStore) -> int:
    """Messages the client has received on its subscriptions, once that stops changing."""
    last = -1
    for _ in range(60):  # at most 30 s: the server has long finished sending by then
        subs: Any = store.nc._subs.values()
        now = sum(s._pending_queue.qsize() for s in subs)
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.5)
    return last


async def test_a_reader_that_stops_taking_is_sent_a_window_not_the_log(
    store: EventStore,
) -> None:
    """After one batch the reader takes nothing more: the client then holds at most its
    backlog plus one flow-control window of the 30,000 events (about 2 kB each) in its
    pending queue, not the whole remainder."""
    pad = "x" * 2000
    for start in range(0, EVENTS, 1000):
        requests = [AppendRequest("agent", f"a{i % 50}", [NewEvent("Padded", {"i": i, "pad": pad})])
                    for i in range(start, start + 1000)]  # fmt: skip
        for r in await store.append_many(requests):
            assert not isinstance(r, BaseException), r
    subject = f"{store.settings.prefix}.>"
    reading = store.reader.batches(subject, max_batch=100, backlog=500)
    async with contextlib.aclosing(reading) as batches:
        first = await anext(batches)
        assert first[0].seq == 1
        queued = await received(store)
    assert queued < EVENTS // 2, queued
