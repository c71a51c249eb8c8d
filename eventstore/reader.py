"""Reading the log: bounded replays and a live follow, both on ordered push consumers
(``eventstore.ordered``).

An ordered consumer needs no acks and no durable state; the reader remembers the last stream
sequence it handed out and, after any interruption (reconnect, gap, stall), subscribes again
from the next one. It never yields a sequence twice and, on the unfiltered log (which has no
holes because deletes are denied), checks that sequences are contiguous.

Decoded reads hand out ``data`` at its type's current schema (``Event.current``: the
registered upcasters). Anyone may publish on the events subjects, so decoded reads never stop
at a message that is not a valid event (or whose data cannot be upcast): it is skipped and
handed to the caller's ``on_malformed`` as a ``Malformed`` (without a callback, a logged
warning), and the read goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, NamedTuple

from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import directget
from eventstore.errors import (
    InvalidEvent,
    NotConnected,
    PermissionDenied,
    RequestTimeout,
    Retryable,
    UpcastFailed,
)
from eventstore.events import Event, decode_event
from eventstore.jetstream import (
    StoredMessage,
    last_msg,
    stream_info,
    translate,
)
from eventstore.logging import get_logger
from eventstore.ordered import (
    BACKLOG_HIGH,
    PENDING_BYTES,
    PENDING_MSGS,
    OrderedFeed,
    subscribe_ordered,
)
from eventstore.subjects import parse_subject
from eventstore.versions import misplaced, next_version

__all__ = [
    "LogReader",
    "Malformed",
    "OnMalformed",
    "StoredMessage",
    "decode_message",
    "report_malformed",
]

# How long a bounded read keeps trying to subscribe (from its first failure) before it gives
# up with the last error: long enough for a server restart, short enough never to hang.
SUBSCRIBE_PATIENCE = 10.0

log = get_logger("eventstore.reader")


class Malformed(NamedTuple):
    """A message a reader skipped: not a valid event (``kind`` ``undecodable``), a valid
    event whose data cannot be brought to its type's current schema (``upcast``, ``typed``:
    ``eventstore.upcasting``) or, reading one aggregate by version, a valid event whose version
    takes no place in its history (``duplicate`` or ``gap``); projections quarantine the same."""

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


class LogReader:
    """Reads a stream with ordered consumers. Owned by an ``EventStore``; shares its connection."""

    def __init__(
        self, nc: Client, js: JetStreamContext, stream: str, prefix: str, url: str
    ) -> None:
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

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (for the leader's gets of ``eventstore.duplicates``)."""
        return self._js

    async def last_seq(self, subject: str | None = None) -> int:
        """The stream's last sequence, or the last sequence on one subject (0 if none)."""
        what = f"last sequence of {subject or self.stream}"
        try:
            if subject is None:
                info = await stream_info(self._js, self.stream)
                return int(info.state.last_seq) if info is not None else 0
            msg = await last_msg(self._js, self.stream, subject)
            return int(msg.seq or 0) if msg is not None else 0
        except Exception as exc:
            err = translate(exc, what=what, url=self.url, timeout=5.0, closed=self._nc.is_closed)
            if isinstance(err, RequestTimeout):
                api = "STREAM.INFO" if subject is None else "STREAM.MSG.GET"
                if refused := self._refused(f"$JS.API.{api}.{self.stream}"):
                    raise refused from exc
            raise err from exc

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
        async for got in directget.direct_batches(
            self._nc,
            self.stream,
            subject,
            url=self.url,
            refused=self._refused,
            start_seq=start_seq,
            start_time=start_time,
            stop_seq=stop_seq,
            batch=batch,
            timeout=timeout,
        ):
            yield got

    async def last_messages(self, subjects: list[str]) -> dict[str, StoredMessage]:
        """The last message of each subject that has one, in a few batched direct gets
        (``directget.last_messages``: may lag on a replicated stream)."""
        return await directget.last_messages(
            self._nc, self.stream, subjects, url=self.url, refused=self._refused
        )

    async def history(
        self,
        subject: str,
        agg: str,
        from_version: int,
        to_version: int | None,
        on_malformed: OnMalformed | None,
    ) -> AsyncIterator[Event]:
        """One aggregate's events by version range, as projections fold them (see
        ``EventStore.read``): what takes no place in the history is reported, not yielded."""
        version = 0
        async for batch in self.direct_batches(subject):
            for m in batch:
                try:
                    ev: Event | None = decode_message(self.prefix, m)
                    why = ""
                except InvalidEvent as exc:
                    ev, why = None, exc.reason
                taken = next_version(version, m.data if ev is None else ev)
                failed: UpcastFailed | None = None
                if ev is not None and taken is not None:
                    try:
                        ev = ev.current()  # data at its type's current schema
                    except UpcastFailed as exc:
                        failed = exc  # it still takes its version, as in the fold
                if ev is None or taken is None or failed is not None:
                    if failed is not None:
                        kind, why = failed.kind, failed.reason
                    elif ev is None:
                        kind = "undecodable"
                        if taken is not None:
                            why += f" (it still takes version {taken})"
                    else:
                        kind, why = misplaced(agg, version, ev.version)
                    if version >= from_version - 1:
                        report_malformed(on_malformed, Malformed(m.seq, m.subject, kind, why, m))
                    if taken is not None:
                        version = taken
                else:
                    version = taken
                    if version >= from_version:
                        yield ev
                if to_version is not None and version >= to_version:
                    return

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
        backlog: int = BACKLOG_HIGH,
    ) -> AsyncIterator[list[StoredMessage]]:
        """Yield batches of raw messages on ``subject`` from ``start_seq`` (or ``start_time``).

        Bounded (``follow=False``): stops after ``stop_seq`` (default: the head when called);
        it fails (the translated error) once subscribing has failed for ``SUBSCRIBE_PATIENCE``.
        Live (``follow=True``): never stops; resubscribes from the next sequence after any
        interruption. ``contiguous`` asserts there are no holes (the unfiltered log).
        ``backlog``: messages buffered before the server is held back (``flowcontrol``).
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
        failing_since: float | None = None
        while True:
            feed = OrderedFeed(backlog)
            try:
                sub = await subscribe_ordered(
                    self._js,
                    subject,
                    self.stream,
                    feed.on_msg,
                    start_seq=last + 1,
                    start_time=use_time,
                    pending_msgs=PENDING_MSGS,
                    pending_bytes=PENDING_BYTES,
                    flow=feed.flow,
                )
                feed.attach(sub)
            except Exception as exc:
                err = translate(exc, what=f"subscribing to {subject}", url=self.url,
                                closed=self._nc.is_closed)  # fmt: skip
                if not isinstance(err, Retryable) or self._nc.is_closed:
                    raise err from exc
                if refused := self._refused(f"$JS.API.CONSUMER.CREATE.{self.stream}"):
                    raise refused from exc
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if not follow and now - failing_since >= SUBSCRIBE_PATIENCE:
                    raise err from exc  # a bounded read ends; only a live follow waits on
                await asyncio.sleep(0.25)
                continue
            failing_since = None
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
                                raise RequestTimeout(
                                    f"reading {subject} after seq {last}", idle_timeout
                                ) from None
                            continue
                    got = feed.take(max_batch)
                    if feed.flow.pending():  # held by the backlog: ``direct`` never waits
                        await feed.flow.answer()
                    n = len(got)
                    if (
                        n and contiguous and use_time is None
                        and (end is None or got[-1].seq <= end)
                        and [m.seq for m in got] == list(range(last + 1, last + 1 + n))
                    ):  # fmt: skip
                        last += n  # the usual case, checked at once: the next n, in order
                        yield got
                        if end is not None and last >= end:
                            return
                        continue
                    out: list[StoredMessage] = []
                    for m in got:
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
            return decode_message(self.prefix, m).current()
        except InvalidEvent as exc:
            kind = exc.kind if isinstance(exc, UpcastFailed) else "undecodable"
            skipped = Malformed(m.seq, m.subject, kind, exc.reason, m)
            report_malformed(on_malformed, skipped)
            return None
