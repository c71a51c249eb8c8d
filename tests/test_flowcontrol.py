"""Flow control of the reader's ordered consumers holds against a real server: a reader that
stops taking messages is not sent the rest of the log (nats-py alone would buffer it all)."""

from __future__ import annotations

import asyncio
import contextlib

from eventstore import AppendRequest, EventStore, NewEvent

EVENTS = 30_000


async def received(store: EventStore, before: int) -> int:
    """Messages the client has received since ``before`` (its ``in_msgs``), once that stops
    changing: whether they wait in nats-py's pending queue or in the reader's buffer."""
    last = -1
    for _ in range(60):  # at most 30 s: the server has long finished sending by then
        now = int(store.nc.stats["in_msgs"]) - before
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.5)
    return last


async def test_a_reader_that_stops_taking_is_sent_a_window_not_the_log(
    store: EventStore,
) -> None:
    """After one batch the reader takes nothing more: the client then has received at most
    its backlog plus one flow-control window of the 30,000 events (about 2 kB each), not the
    whole remainder."""
    pad = "x" * 2000
    for start in range(0, EVENTS, 1000):
        requests = [AppendRequest("agent", f"a{i % 50}", [NewEvent("Padded", {"i": i, "pad": pad})])
                    for i in range(start, start + 1000)]  # fmt: skip
        for r in await store.append_many(requests):
            assert not isinstance(r, BaseException), r
    subject = f"{store.settings.prefix}.>"
    before = int(store.nc.stats["in_msgs"])
    reading = store.reader.batches(subject, max_batch=100, backlog=500)
    async with contextlib.aclosing(reading) as batches:
        first = await anext(batches)
        assert first[0].seq == 1
        got = await received(store, before)
    assert 600 <= got < EVENTS // 2, got
