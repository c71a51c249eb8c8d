"""One ordered push subscription of the log, the way every read of ``eventstore.reader``
consumes it: the consumer's configuration (from a sequence or a time, no acks, no durable
state) and ``OrderedFeed``, the buffer between nats-py's callback and a reader taking batches.

The buffer holds the server back when it is full (the callback waits, and ``FlowControl``
answers the server's flow-control requests only at our pace), so a catch-up behind a slow
consumer neither grows without bound nor makes nats-py drop messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventstore.flowcontrol import FlowControl
from eventstore.replies import StoredMessage, parse_reply, recorded_at

__all__ = ["BACKLOG_HIGH", "PENDING_BYTES", "PENDING_MSGS", "OrderedFeed", "subscribe_ordered"]

BACKLOG_HIGH = 20_000  # messages buffered before the subscription callback waits
# While the callback waits, nats-py keeps queueing what the server pushes, and silently drops
# past this limit (the reader then sees the gap and resubscribes, correct but slower): large
# enough that a catch-up behind a slow projection does not hit it.
PENDING_MSGS = 500_000
PENDING_BYTES = 512 << 20


async def subscribe_ordered(
    js: JetStreamContext,
    subject: str,
    stream: str,
    cb: Callable[[Msg], Awaitable[None]],
    *,
    start_seq: int | None,
    start_time: datetime | None,
    pending_msgs: int,
    pending_bytes: int,
    flow: FlowControl | None = None,
) -> Any:
    """An ordered push consumer on ``subject`` from ``start_seq`` (or ``start_time``);
    ``flow`` (whose ``answer`` the callback awaits) holds the server back to our pace."""
    if start_time is not None:
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start_time.astimezone(UTC)
        )
    else:
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq or 1)
        )
    sub = await js.subscribe(
        subject,
        stream=stream,
        cb=cb,
        ordered_consumer=True,
        config=cfg,
        idle_heartbeat=2.0,
        pending_msgs_limit=pending_msgs,
        pending_bytes_limit=pending_bytes,
    )
    if flow is not None:
        flow.attach(sub)
    return sub


class OrderedFeed:
    """One ordered push subscription, buffered in a deque for batch consumption."""

    def __init__(self, backlog: int = BACKLOG_HIGH) -> None:
        self.backlog = backlog
        self.buf: collections.deque[StoredMessage] = collections.deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.sub: Any = None
        self.flow = FlowControl()

    async def on_msg(self, msg: Msg) -> None:
        flow = self.flow
        if flow.pending():  # a flow-control request waits (rarely: once a window)
            await flow.answer()
        seq, us = parse_reply(msg.reply)
        buf = self.buf
        buf.append(StoredMessage(seq, msg.subject, msg.data, recorded_at(us), msg.headers))
        self.ready.set()
        if len(buf) >= self.backlog:
            self.room.clear()
            await self.room.wait()

    def take(self, limit: int) -> list[StoredMessage]:
        buf = self.buf
        if len(buf) <= limit:  # all of it, in one C call
            out = list(buf)
            buf.clear()
        else:
            out = [buf.popleft() for _ in range(limit)]
        if not buf:
            self.ready.clear()
        if len(buf) < self.backlog // 2:
            self.room.set()
        return out

    async def close(self) -> None:
        self.room.set()
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
