"""Reading the log: bounded replays and a live follow, both on ordered push consumers.

An ordered consumer needs no acks and no durable state; the reader remembers the last stream
sequence it handed out and, after any interruption (reconnect, gap, stall), subscribes again
from the next one. It never yields a sequence twice and, on the unfiltered log (which has no
holes because deletes are denied), checks that sequences are contiguous.

Anyone may publish on the events subjects, so decoded reads never stop at a message that is
not a valid event: it is skipped and handed to the caller's ``on_malformed`` as a ``Malformed``
(without a callback, a logged warning), and the read goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventstore.errors import EventStoreError, InvalidEvent, NotConnected, PermissionDenied
from eventstore.events import Event, decode_event
from eventstore.subjects import parse_subject

__all__ = [
    "LogReader",
    "Malformed",
    "OnMalformed",
    "StoredMessage",
    "decode_message",
    "report_malformed",
]

log = structlog.get_logger("eventstore.reader")

_BACKLOG_HIGH = 20_000  # messages buffered before the subscription callback waits
# While the callback waits, nats-py keeps queueing what the server pushes, and silently drops
# past this limit (the reader then sees the gap and resubscribes, correct but slower): large
# enough that a catch-up behind a slow projection does not hit it.
_PENDING_MSGS = 500_000
_PENDING_BYTES = 512 << 20
_DIRECT_GET_TRIES = 6  # unanswered direct gets in a row (5 s each) before giving up
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoredMessage(NamedTuple):
    """One raw message of the log, before decoding: what a quarantine records."""

    seq: int
    subject: str
    data: bytes
    recorded_at: datetime
    headers: dict[str, str] | None


class Malformed(NamedTuple):
    """A message a reader skipped: not a valid event (``kind`` ``undecodable``) or, reading
    one aggregate by version, a valid event whose version takes no place in its history
    (``duplicate`` or ``gap``: projections quarantine it the same way)."""

    seq: int
    subject: str
    kind: str
    reason: str
    message: StoredMessage


OnMalformed = Callable[[Malformed], None]


def report_malformed(on_malformed: OnMalformed | None, skipped: Malformed) -> None:
    """Hand a skipped message to the caller's callback, or log a warning: never silent."""
    if on_malformed is not None:
        on_malformed(skipped)
        return
    log.warning(
        "skipped a message that is not an event of the history",
        seq=skipped.seq, subject=skipped.subject, kind=skipped.kind, reason=skipped.reason,
    )  # fmt: skip


def decode_message(prefix: str, msg: StoredMessage) -> Event:
    """Decode a stored message into an ``Event``; the subject must agree with the body.

    Anything wrong with the message (body or subject) is ``InvalidEvent``.
    """
    event = decode_event(msg.data, seq=msg.seq, recorded_at=msg.recorded_at)
    try:
        agg_type, agg_id = parse_subject(prefix, msg.subject)
    except InvalidEvent:
        raise
    except Exception as exc:  # a subject no aggregate could have: still just a bad message
        raise InvalidEvent(f"message at seq {msg.seq} has an unreadable subject: {exc}") from exc
    if (event.aggregate_type, event.aggregate_id) != (agg_type, agg_id):
        raise InvalidEvent(
            f"event at seq {msg.seq} names {event.aggregate_type}/{event.aggregate_id} "
            f"but was stored on the subject of {agg_type}/{agg_id}"
        )
    return event


def _parse_time(text: str) -> datetime:
    """RFC 3339 with nanoseconds (as JetStream writes it) to an aware datetime."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _parse_reply(reply: str) -> tuple[int, int]:
    """(stream seq, timestamp in µs) from a JetStream ack subject (with or without domain)."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[7]) // 1000
    return int(t[7]), int(t[9]) // 1000


class _Feed:
    """One ordered push subscription, buffered in a deque for batch consumption."""

    def __init__(self) -> None:
        self.buf: collections.deque[StoredMessage] = collections.deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.sub: Any = None

    async def on_msg(self, msg: Any) -> None:
        seq, us = _parse_reply(msg.reply)
        # Integer microseconds (truncated), exactly as _parse_time reads a direct get: the
        # same event must carry the same recorded_at whichever way it was read.
        buf = self.buf
        recorded = _EPOCH + timedelta(microseconds=us)
        buf.append(StoredMessage(seq, msg.subject, msg.data, recorded, msg.headers))
        self.ready.set()
        if len(buf) >= _BACKLOG_HIGH:
            self.room.clear()
            await self.room.wait()

    def take(self, limit: int) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        buf = self.buf
        while buf and len(out) < limit:
            out.append(buf.popleft())
        if not buf:
            self.ready.clear()
        if len(buf) < _BACKLOG_HIGH // 2:
            self.room.set()
        return out

    async def close(self) -> None:
        self.room.set()
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None


class _Replies:
    """The replies to one batched direct get at a time, on an inbox of their own.

    Collected by a subscription callback until the server's end-of-batch status, so a batch
    of replies costs one wait, not one timed wait per message.
    """

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self.msgs: list[Any] = []
        self.done = asyncio.Event()
        self.inbox = nc.new_inbox()
        self.sub: Any = None

    @classmethod
    async def open(cls, nc: Any, batch: int) -> _Replies:
        self = cls(nc)
        self.sub = await nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=4 * batch)
        return self

    async def _on_msg(self, msg: Any) -> None:
        self.msgs.append(msg)
        if msg.headers and msg.headers.get("Status"):
            self.done.set()

    async def ask(self, subject: str, payload: bytes, timeout: float) -> list[Any]:
        """Send one request; the replies up to and including its end-of-batch status."""
        self.msgs = []
        self.done.clear()
        await self._nc.publish(subject, payload, reply=self.inbox)
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        return self.msgs

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None


class LogReader:
    """Reads a stream with ordered consumers. Owned by an ``EventStore``; shares its connection."""

    def __init__(self, nc: Any, js: Any, stream: str, prefix: str, url: str) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream
        self.prefix = prefix
        self.url = url
        # Subjects the server refused this connection (lowercased, as nats-py reports them),
        # filled by the store's error callback: a request to one of them is never answered.
        self.denied: set[str] = set()

    def _refused(self, subject: str) -> PermissionDenied | None:
        """``PermissionDenied`` if the server refused this client ``subject`` or a subject
        below it (an API request that then never gets an answer)."""
        low = subject.lower()
        for pattern in self.denied:
            if pattern == low or pattern.startswith(low + "."):
                return PermissionDenied(pattern, "publish")
        return None

    async def last_seq(self, subject: str | None = None) -> int:
        """The stream's last sequence, or the last sequence on one subject (0 if none)."""
        try:
            if subject is None:
                info = await self._js.stream_info(self.stream)
                return int(info.state.last_seq)
            msg = await self._js.get_last_msg(self.stream, subject)
            return int(msg.seq)
        except nats.js.errors.NotFoundError:
            return 0
        except (nats.errors.ConnectionClosedError, nats.errors.NoRespondersError) as exc:
            raise NotConnected(self.url, str(exc) or type(exc).__name__) from exc
        except nats.errors.TimeoutError as exc:
            api = "STREAM.INFO" if subject is None else "STREAM.MSG.GET"
            if refused := self._refused(f"$JS.API.{api}.{self.stream}"):
                raise refused from exc
            raise

    async def direct_batches(
        self,
        subject: str,
        *,
        start_seq: int = 1,
        start_time: datetime | None = None,
        stop_seq: int | None = None,
        batch: int = 512,
        timeout: float = 5.0,
    ) -> AsyncIterator[list[StoredMessage]]:
        """Read one subject with batched direct gets: no consumer is created at all.

        The cheap path for one aggregate's history (a few hundred microseconds per batch),
        where an ordered consumer would cost a consumer create and delete per read. Direct
        get may lag on replicated streams, so nothing that decides a write relies on it alone.
        """
        replies = await _Replies.open(self._nc, batch)
        api = f"$JS.API.DIRECT.GET.{self.stream}"
        cursor = max(1, start_seq)
        by_time = start_time
        unanswered = 0
        try:
            while stop_seq is None or cursor <= stop_seq:
                req: dict[str, Any] = {"next_by_subj": subject, "batch": batch}
                if by_time is not None:
                    req["start_time"] = by_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
                else:
                    req["seq"] = cursor
                try:
                    got = await replies.ask(api, msgspec.json.encode(req), timeout)
                    unanswered = 0
                except nats.errors.TimeoutError:
                    if self._nc.is_closed:
                        raise NotConnected(self.url, "connection closed") from None
                    if refused := self._refused(api):
                        raise refused from None
                    unanswered += 1
                    if unanswered >= _DIRECT_GET_TRIES:
                        raise NotConnected(
                            self.url,
                            f"direct get on {self.stream} went unanswered "
                            f"{unanswered} times in a row",
                        ) from None
                    # Lost replies (a reconnect): ask again from where we are, on a fresh
                    # inbox so that late replies to this request cannot mix in.
                    await replies.close()
                    replies = await _Replies.open(self._nc, batch)
                    await asyncio.sleep(0.2)
                    continue
                except nats.errors.ConnectionClosedError as exc:
                    raise NotConnected(self.url, "connection closed") from exc
                out: list[StoredMessage] = []
                done = False
                for msg in got:
                    hdr = msg.headers or {}
                    status = hdr.get("Status")
                    if status == "204":  # end of this batch
                        done = hdr.get("Nats-Num-Pending", "1") == "0"
                        break
                    if status == "404":
                        done = True
                        break
                    if status:
                        raise EventStoreError(
                            f"direct get on {self.stream} failed: {status} "
                            f"{hdr.get('Description', '')}"
                        )
                    seq = int(hdr["Nats-Sequence"])
                    if stop_seq is not None and seq > stop_seq:
                        done = True
                        continue
                    out.append(
                        StoredMessage(
                            seq,
                            hdr.get("Nats-Subject", subject),
                            msg.data,
                            _parse_time(hdr["Nats-Time-Stamp"]),
                            hdr,
                        )
                    )
                if out:
                    by_time = None
                    cursor = out[-1].seq + 1
                    yield out
                if done or not out:
                    return
        finally:
            await replies.close()

    async def _subscribe(
        self, feed: _Feed, subject: str, start_seq: int | None, start_time: datetime | None
    ) -> None:
        if start_time is not None:
            cfg = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start_time.astimezone(UTC),
            )
        else:
            cfg = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq or 1)
            )
        feed.sub = await self._js.subscribe(
            subject,
            stream=self.stream,
            cb=feed.on_msg,
            ordered_consumer=True,
            config=cfg,
            idle_heartbeat=2.0,
            pending_msgs_limit=_PENDING_MSGS,
            pending_bytes_limit=_PENDING_BYTES,
        )

    async def batches(
        self,
        subject: str,
        *,
        start_seq: int = 1,
        start_time: datetime | None = None,
        stop_seq: int | None = None,
        follow: bool = False,
        max_batch: int = 1000,
        idle_timeout: float = 30.0,
        contiguous: bool = False,
    ) -> AsyncIterator[list[StoredMessage]]:
        """Yield batches of raw messages on ``subject`` from ``start_seq`` (or ``start_time``).

        Bounded (``follow=False``): stops after ``stop_seq`` (default: the head when called).
        Live (``follow=True``): never stops; resubscribes from the next sequence after any
        interruption. ``contiguous`` asserts there are no holes (the unfiltered log).
        """
        end: int | None = None
        if not follow:
            # A bounded read knows where it ends: the last matching sequence right now.
            matching = await self.last_seq(None if subject.endswith(">") else subject)
            end = matching if stop_seq is None else min(stop_seq, matching)
            if end < start_seq:
                return
        last = start_seq - 1
        use_time = start_time
        reconnects = self._nc.stats.get("reconnects", 0)
        while True:
            feed = _Feed()
            try:
                await self._subscribe(feed, subject, last + 1, use_time)
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.NoRespondersError,
                nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError,
            ) as exc:
                if self._nc.is_closed:
                    raise NotConnected(self.url, "connection closed") from exc
                if refused := self._refused(f"$JS.API.CONSUMER.CREATE.{self.stream}"):
                    raise refused from exc
                await asyncio.sleep(0.25)
                continue
            idle = 0.0
            restart = False
            try:
                while not restart:
                    if not feed.buf:
                        try:
                            await asyncio.wait_for(feed.ready.wait(), 1.0)
                            idle = 0.0
                        except TimeoutError:
                            if self._nc.is_closed:
                                raise NotConnected(self.url, "connection closed") from None
                            now = self._nc.stats.get("reconnects", 0)
                            if now != reconnects:
                                reconnects = now
                                restart = True  # be sure the consumer survived the reconnect
                                continue
                            idle += 1.0
                            if refused := self._refused(f"$JS.FC.{self.stream}"):
                                raise refused from None  # the server waits for our reply
                            if not follow and idle >= idle_timeout:
                                raise EventStoreError(
                                    f"reading {subject} stalled after seq {last}"
                                ) from None
                            continue
                    out: list[StoredMessage] = []
                    for m in feed.take(max_batch):
                        if m.seq <= last:
                            continue  # a redelivery after a consumer reset: never repeat
                        if contiguous and use_time is None and m.seq != last + 1:
                            log.warning("gap in log, resubscribing", expected=last + 1, got=m.seq)
                            restart = True
                            break
                        if end is not None and m.seq > end:
                            break
                        out.append(m)
                        last = m.seq
                    if out:
                        use_time = None
                        yield out
                    if end is not None and last >= end:
                        return
            finally:
                await feed.close()

    async def events(
        self, subject: str, *, on_malformed: OnMalformed | None = None, **kwargs: Any
    ) -> AsyncIterator[Event]:
        """Decoded events of :meth:`batches`; a message that is not a valid event is skipped
        and reported (``on_malformed``, else a logged warning)."""
        async for batch in self.batches(subject, **kwargs):
            for m in batch:
                if (ev := self._decode(m, on_malformed)) is not None:
                    yield ev

    async def aggregate_events(
        self, subject: str, *, on_malformed: OnMalformed | None = None, **kwargs: Any
    ) -> AsyncIterator[Event]:
        """Decoded events of one aggregate, via :meth:`direct_batches` (malformed messages
        skipped and reported as in :meth:`events`)."""
        async for batch in self.direct_batches(subject, **kwargs):
            for m in batch:
                if (ev := self._decode(m, on_malformed)) is not None:
                    yield ev

    def _decode(self, m: StoredMessage, on_malformed: OnMalformed | None) -> Event | None:
        try:
            return decode_message(self.prefix, m)
        except InvalidEvent as exc:
            skipped = Malformed(m.seq, m.subject, "undecodable", exc.reason, m)
            report_malformed(on_malformed, skipped)
            return None
