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

from eventstore.delivery import deliver
from eventstore.flowcontrol import FlowControl
from eventstore.headers import HeaderBlock
from eventstore.replies import StoredMessage, parse_reply, recorded_at

__all__ = ["BACKLOG_HIGH", "PENDING_BYTES", "PENDING_MSGS", "OrderedFeed", "subscribe_ordered"]

BACKLOG_HIGH = 20_000  # messages buffered before the subscription callback waits
STALL_FACTOR = 4  # a buffer this many backlogs long takes no more messages directly
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


# nats-py 2.16's ordered-consumer state that ``OrderedFeed.direct`` keeps as nats-py would
_JSI_FIELDS = ("_ordered", "_dseq", "_sseq", "_active", "_fciseq", "_cmeta")


def _headers(raw: bytes | None) -> HeaderBlock | None:
    """The headers of a message that is not a status message, parsed when first read as
    nats-py's ``_process_headers`` parses them; None when there are none (lines that all
    parse away give an empty mapping where nats-py gives None)."""
    if raw is None or len(raw) <= 12:  # b"NATS/1.0\r\n" and at most a CRLF
        return None
    return HeaderBlock(raw[10:])


class OrderedFeed:
    """One ordered push subscription, buffered in a deque for batch consumption.

    Its messages arrive two ways. The usual one is ``direct`` (see ``eventstore.delivery``):
    straight from the protocol parser, the ordered consumer's checks done here. What
    ``direct`` declines goes through nats-py to ``on_msg``. The two never overtake each
    other: while a message is on nats-py's way (queued, or in ``on_msg`` before its append),
    ``direct`` declines too.
    """

    def __init__(self, backlog: int = BACKLOG_HIGH) -> None:
        self.backlog = backlog
        # nats-py answers the server's stall notice at each idle heartbeat, which lets one more
        # window in however full the buffer is: past this, what comes waits in nats-py's queue
        # (bounded by the pending limits) as it did before direct delivery.
        self.cap = STALL_FACTOR * backlog
        self.buf: collections.deque[StoredMessage] = collections.deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.sub: Any = None
        self.flow = FlowControl(self.held)
        self._jsi: Any = None
        self._queue: Any = None
        self._in_callback = False

    def attach(self, sub: Any) -> None:
        """Take ``sub``'s plain data messages straight from its client (when it can)."""
        self.sub = sub
        inner = getattr(sub, "_sub", sub)
        jsi, queue = getattr(inner, "_jsi", None), getattr(inner, "_pending_queue", None)
        if jsi is None or queue is None or not all(hasattr(jsi, f) for f in _JSI_FIELDS):
            return  # another nats-py: its own delivery, correct and slower
        if not jsi._ordered:
            return
        if deliver(sub, self.direct):
            self._jsi, self._queue = jsi, queue

    def held(self) -> int:
        """Messages received past the backlog: the server's flow control waits for them."""
        return max(0, len(self.buf) - self.backlog)

    def direct(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """Take one data message from the parser, as nats-py's ordered consumer would (the
        sequence check of its ``_process_msg``, then its ``track_sequences``); False leaves
        it to nats-py."""
        jsi = self._jsi
        if self._in_callback or self._queue.qsize():
            return False  # one is on nats-py's way: it goes first
        if len(self.buf) >= self.cap:
            return False  # a stalled reader: nats-py's queue and its pending limits take over
        t = reply.split(b".")
        if len(t) != 9 or t[0] != b"$JS" or t[1] != b"ACK":
            return False
        try:
            dseq, seq, ns = int(t[6]), int(t[5]), int(t[7])
            text = subject.decode()
            reply_text = reply.decode()
        except ValueError:  # not digits, not UTF-8 (UnicodeDecodeError is a ValueError)
            return False
        if dseq != jsi._dseq:
            return False  # a gap: nats-py resets the consumer
        jsi._active = True
        jsi._dseq, jsi._sseq = dseq + 1, seq
        jsi._fciseq += 1
        jsi._cmeta = reply_text
        self.buf.append(StoredMessage(seq, text, data, recorded_at(ns // 1000), _headers(headers)))
        self.ready.set()
        return True

    async def on_msg(self, msg: Msg) -> None:
        self._in_callback = True
        try:
            flow = self.flow
            if flow.pending():  # a flow-control request waits (rarely: once a window)
                await flow.answer()
            seq, us = parse_reply(msg.reply)
            buf = self.buf
            buf.append(StoredMessage(seq, msg.subject, msg.data, recorded_at(us), msg.headers))
        finally:
            self._in_callback = False
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
            deliver(self.sub, None)
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
