"""Direct delivery (``eventstore.delivery``) against a real server: the reader's ordered
consumer takes plain data messages straight from the parser, in order and exactly once, and
hands everything else to nats-py, whose rules (status messages, subjects that are not UTF-8,
consumer resets) still hold with the two ways mixed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from test_hostile_messages import publish_unreadable

from eventstore import AppendRequest, EventStore, NewEvent, ordered, reader
from eventstore.replies import StoredMessage, parse_reply, recorded_at


class Ways:
    """How many messages each way brought into the reader's buffers, and how many ordered
    subscriptions the reader made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.direct = 0
        self.nats_py = 0
        self.subscriptions = 0
        direct, on_msg, subscribe = (
            ordered.OrderedFeed.direct,
            ordered.OrderedFeed.on_msg,
            reader.subscribe_ordered,
        )

        def counted_direct(feed: ordered.OrderedFeed, *args: Any) -> bool:
            taken = direct(feed, *args)
            self.direct += taken
            return taken

        async def counted_on_msg(feed: ordered.OrderedFeed, msg: Any) -> None:
            self.nats_py += 1
            await on_msg(feed, msg)

        async def counted_subscribe(*args: Any, **kwargs: Any) -> Any:
            self.subscriptions += 1
            return await subscribe(*args, **kwargs)

        monkeypatch.setattr(ordered.OrderedFeed, "direct", counted_direct)
        monkeypatch.setattr(ordered.OrderedFeed, "on_msg", counted_on_msg)
        monkeypatch.setattr(reader, "subscribe_ordered", counted_subscribe)


async def fill(store: EventStore, count: int, start: int = 0) -> None:
    requests = [AppendRequest("agent", f"a{i % 20}", [NewEvent("E", {"i": i})])
                for i in range(start, start + count)]  # fmt: skip
    for r in await store.append_many(requests):
        assert not isinstance(r, BaseException), r


async def read_all(store: EventStore, **kwargs: Any) -> list[StoredMessage]:
    out: list[StoredMessage] = []
    async with asyncio.timeout(60):
        async for batch in store.reader.batches(f"{store.settings.prefix}.>", **kwargs):
            out.extend(batch)
    return out


async def nats_py_messages(url: str, stream: str, count: int) -> list[Any]:
    """The first ``count`` messages as a plain nats-py ordered consumer delivers them."""
    nc = await nats.connect(url)
    try:
        got: list[Any] = []
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            got.append(msg)
            if len(got) >= count:
                done.set()

        sub = await nc.jetstream().subscribe(
            ">", stream=stream, cb=on_msg, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )  # fmt: skip
        async with asyncio.timeout(30):
            await done.wait()
        await sub.unsubscribe()
        return got
    finally:
        await nc.close()


async def test_plain_messages_come_directly_as_nats_py_delivers_them(
    store: EventStore, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message of a catch-up is taken directly (none through nats-py's queue), in log
    order, with the sequence, subject, data, recorded time and headers a plain nats-py
    ordered consumer gives for it."""
    await fill(store, 3000)
    ways = Ways(monkeypatch)
    got = await read_all(store, contiguous=True)
    assert [m.seq for m in got] == list(range(1, 3001))
    assert (ways.direct, ways.nats_py, ways.subscriptions) == (3000, 0, 1)
    theirs = await nats_py_messages(nats_url, store.settings.name, 3000)
    assert [m.headers for m in theirs] == [dict(m.headers or {}) for m in got]
    assert [(m.metadata.sequence.stream, m.subject, m.data) for m in theirs] == [
        (m.seq, m.subject, m.data) for m in got
    ]
    assert [recorded_at(parse_reply(m.reply)[1]) for m in theirs] == [m.recorded_at for m in got]
    assert all(m.headers and "Nats-Msg-Id" in m.headers for m in got)


async def test_a_message_nats_py_must_handle_keeps_the_order(
    store: EventStore, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subject that is not UTF-8 goes through nats-py (whose guard makes it printable);
    the messages around it still arrive exactly once, in order, on one subscription."""
    await fill(store, 500)
    p = store.settings.prefix.encode()
    bad = await publish_unreadable(store, nats_url, p + b".agent.\xff\xfe", b"{}")
    await fill(store, 500, 500)
    ways = Ways(monkeypatch)
    got = await read_all(store, contiguous=True)
    assert [m.seq for m in got] == list(range(1, 1002))
    assert "(not UTF-8)" in got[bad - 1].subject
    assert ways.subscriptions == 1
    assert ways.nats_py >= 1 and ways.direct >= 500
    assert ways.direct + ways.nats_py == 1001


async def test_a_consumer_deleted_mid_read_is_replaced_without_a_gap_or_repeat(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server loses the reader's consumer half-way (deleted here): nats-py's heartbeat
    check recreates it from the last sequence taken directly, and the read ends with every
    message once."""
    await fill(store, 4000)
    ways = Ways(monkeypatch)
    got: list[StoredMessage] = []
    reading = store.reader.batches(
        f"{store.settings.prefix}.>", contiguous=True, max_batch=100, backlog=200
    )
    async with asyncio.timeout(60), contextlib.aclosing(reading) as batches:
        got.extend(await anext(batches))
        names = [c.name for c in await store.js.consumers_info(store.settings.name)]
        assert len(names) == 1
        await store.js.delete_consumer(store.settings.name, names[0])
        async for batch in batches:
            got.extend(batch)
            if got[-1].seq >= 4000:
                break
    assert [m.seq for m in got] == list(range(1, 4001))
    assert ways.subscriptions == 1  # the same subscription, its consumer replaced by nats-py
    now = await store.js.consumers_info(store.settings.name)
    assert len(now) == 1 and now[0].name != names[0]
    assert (now[0].config.opt_start_seq or 0) > 100  # after what was taken, not from 1 again


async def test_a_nats_py_without_those_fields_keeps_its_own_delivery(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the subscription lacks a field the direct way keeps (another nats-py release),
    nothing is taken directly and the read is the same through nats-py's callback."""
    await fill(store, 1000)
    monkeypatch.setattr(ordered, "_JSI_FIELDS", (*ordered._JSI_FIELDS, "_not_in_this_nats_py"))
    ways = Ways(monkeypatch)
    got = await read_all(store, contiguous=True)
    assert [m.seq for m in got] == list(range(1, 1001))
    assert (ways.direct, ways.nats_py, ways.subscriptions) == (0, 1000, 1)
    assert all(isinstance(m.headers, dict) and "Nats-Msg-Id" in m.headers for m in got)


async def test_a_stalled_reader_s_buffer_stops_at_its_cap(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that stops taking still gets a window per idle heartbeat (nats-py answers the
    server's stall notice): past ``STALL_FACTOR`` backlogs its buffer takes nothing more
    directly, and the rest waits in nats-py's queue, under its pending limits, as before."""
    await fill(store, 6000)
    feeds: list[ordered.OrderedFeed] = []
    attach = ordered.OrderedFeed.attach

    def recorded(feed: ordered.OrderedFeed, sub: Any) -> None:
        feeds.append(feed)
        attach(feed, sub)

    monkeypatch.setattr(ordered.OrderedFeed, "attach", recorded)
    reading = store.reader.batches(f"{store.settings.prefix}.>", max_batch=10, backlog=50)
    async with asyncio.timeout(60), contextlib.aclosing(reading) as batches:
        await anext(batches)
        (feed,) = feeds
        queue = feed.sub._sub._pending_queue
        for _ in range(100):  # windows keep coming, one per heartbeat (2 s)
            if queue.qsize():
                break
            await asyncio.sleep(0.2)
        assert queue.qsize() > 0
        assert len(feed.buf) <= feed.cap + 1 == ordered.STALL_FACTOR * 50 + 1
