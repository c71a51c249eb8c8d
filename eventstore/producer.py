"""The write path: group commit of appends into JetStream atomic batches.

Every ``append`` becomes a pending request on a queue. One committer task takes whatever is
queued (up to ``max_batch`` events), checks versions and state machines against its cache of
each aggregate's head, assigns versions and clocks, and publishes the lot as ONE atomic batch:
one fsync for hundreds of events, which is how a durable log stays fast. Each aggregate's first
message carries the server-side expected-last-subject-sequence, so a stale cache can never
produce a gap or a second version N; the server rejects the batch instead, and the committer
refreshes the heads and retries (splitting nothing: requests whose explicit expectation no
longer holds fail with ``VersionConflict``, the others get new versions).

Retries keep the same event ids. nats-server 2.15 checks the expected sequence *before*
deduplication, so a retry of an append that was in fact stored comes back as "wrong last
sequence"; the committer then looks at the message right after the head it expected, and if
that is its own event the append is reported as a duplicate, not stored again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog

from eventstore.clocks import VectorClock, observable
from eventstore.clockstore import ProducerClock
from eventstore.errors import (
    AppendTimeout,
    EventStoreError,
    InvalidEvent,
    InvalidTransition,
    NotConnected,
    PermissionDenied,
    VersionConflict,
)
from eventstore.events import (
    MAX_INT,
    AppendResult,
    Envelope,
    Event,
    NewEvent,
    decode_event,
    encode_envelope,
    utcnow,
)
from eventstore.health import refusal_hint, unanswered_detail
from eventstore.machines import Machines
from eventstore.reader import LogReader, StoredMessage, decode_message
from eventstore.versions import next_version

__all__ = ["Committer", "Head", "refused_publish"]

log = structlog.get_logger("eventstore.producer")

STATE_HEADER = "Eventstore-State"
MAX_EVENTS_PER_APPEND = 1000  # the server's atomic batch limit
_BATCH_BYTES = 4 << 20
_PERM_RE = re.compile(r"for (publish|subscription) to \"?([^\"'\s]+)", re.I)


@dataclass(slots=True)
class Head:
    """What the committer knows of an aggregate's last stored event."""

    seq: int
    version: int
    vclock: dict[str, int]
    lamport: int
    state: str | None


@dataclass(slots=True, eq=False)
class Pending:
    """One ``append`` call waiting for the committer."""

    agg_type: str
    agg_id: str
    subject: str
    events: list[NewEvent]
    expected_version: int | None
    context: dict[str, int]
    future: asyncio.Future[AppendResult]
    deadline: float
    timeout: float
    # assigned per attempt
    envelopes: list[Envelope] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    base_seq: int = 0  # the head sequence this attempt expected
    state_after: str | None = None
    states: list[str] = field(default_factory=list)  # state after each event (machines only)
    # Head sequences of attempts that may have been stored (sent, never confirmed): a stored
    # copy of this append sits right after one of them.
    tried: set[tuple[int, int]] = field(default_factory=set)  # (head seq, offset after it)
    offset: int = 0  # events of earlier requests on the same subject in this attempt
    rejections: int = 0

    @property
    def size(self) -> int:
        return len(self.events)


class _Rejected(Exception):
    """The server refused a whole batch; ``code`` is its JetStream err_code."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class Committer:
    """Owns the append queue, the head cache and the producer's clocks."""

    def __init__(
        self,
        nc: Any,
        js: Any,
        *,
        stream: str,
        producer: str,
        clock: ProducerClock,
        machines: Machines,
        url: str,
        prefix: str = "",
        max_batch: int = 500,
        cache_size: int = 100_000,
    ) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream
        self.prefix = prefix
        self.producer = producer
        self.clock = clock
        self.machines = machines
        self.url = url
        self.max_batch = max_batch
        # Heads by subject, each exactly as the fold's version rule counts the subject up to
        # its seq: a head older than the log is still a correct place to count on from.
        self._cache: OrderedDict[str, Head] = OrderedDict()
        self._stale: set[str] = set()  # cached heads to check with the server before use
        self._cache_size = cache_size
        self._vc = VectorClock()
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # The block that fails fast on a permission violation: which subjects it uses, its task.
        self._inflight: tuple[Callable[[str], bool], asyncio.Task[Any]] | None = None
        self._denied_subject: str | None = None  # the violation that cancelled it
        self._violations: set[str] = set()  # denied subjects reported during this batch
        self._closed = False
        self._lock = asyncio.Lock()  # one batch in flight: held by the committer or a caller
        self._batch_no = 0
        self._batch_prefix = f"{producer[:40]}-{random.getrandbits(48):012x}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="eventstore-committer")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(NotConnected(self.url, "event store closed"))

    def permission_violation(self, message: str) -> None:
        """Called from the connection's error callback: fail the matching request now."""
        pattern = refused_publish(message)
        if pattern is None:
            return
        self._violations.add(pattern)
        if self._inflight is None:
            return
        refused, task = self._inflight
        if refused(pattern) and not task.done():
            self._denied_subject = pattern
            task.cancel()

    @contextlib.asynccontextmanager
    async def _failing_fast(
        self, refused: Callable[[str], bool], detail: str = ""
    ) -> AsyncIterator[None]:
        """Run the block so that a permission violation on a subject ``refused`` accepts
        raises ``PermissionDenied`` at once.

        nats-py reports a permission violation only to the error callback, and the request
        would then wait for its whole timeout; the callback cancels the block instead.
        """
        task = asyncio.current_task()
        assert task is not None
        for pattern in self._violations:  # refused while the middle of a batch was on its way
            if refused(pattern):
                raise PermissionDenied(pattern, "publish", detail)
        self._inflight = (refused, task)
        self._denied_subject = None
        try:
            yield
        except asyncio.CancelledError:
            if self._denied_subject is not None:
                task.uncancel()
                raise PermissionDenied(self._denied_subject, "publish", detail) from None
            raise
        finally:
            self._inflight = None

    def submit(self, p: Pending) -> None:
        if self._closed:
            raise NotConnected(self.url, "event store closed")
        if self._task is None or self._task.done():
            self.start()
        self._queue.put_nowait(p)

    async def append(self, p: Pending) -> AppendResult:
        """Commit ``p``: inline when the committer is idle, else through the queue.

        An idle committer lets the caller publish its own append: a lone writer then pays one
        round trip and no task hand-offs, while concurrent writers still coalesce in the queue.
        """
        if self._closed:
            raise NotConnected(self.url, "event store closed")
        if self._lock.locked() or not self._queue.empty():
            self.submit(p)
            return await p.future
        async with self._lock:
            try:
                await self._commit([p])
            except EventStoreError:
                raise
            except Exception as exc:  # as the committer task reports it
                raise EventStoreError(str(exc) or type(exc).__name__) from exc
        return await p.future

    @property
    def vclock(self) -> VectorClock:
        return self._vc

    # -- heads -----------------------------------------------------------------------------

    def _remember(self, subject: str, head: Head) -> None:
        self._cache[subject] = head
        self._cache.move_to_end(subject)
        self._stale.discard(subject)
        if len(self._cache) > self._cache_size:
            evicted, _ = self._cache.popitem(last=False)
            self._stale.discard(evicted)

    async def fetch_head(self, subject: str, agg_type: str) -> Head:
        """The aggregate's head from the server (not the cache's answer): it decides a write.

        ``seq`` is the subject's real last message (what the append must expect) and
        ``version`` the aggregate's version by the fold's rule (``eventstore.versions``): the
        messages after the cached head (all of them, the first time) are counted, so a raw
        stale, gap or malformed message never decides the next version. The clock is the last
        valid event's that took a position, the machine state the fold's.
        """
        try:
            msg = await self._js.get_last_msg(self.stream, subject)
        except nats.js.errors.NotFoundError:
            head = Head(0, 0, {}, 0, None)
            self._remember(subject, head)
            return head
        last_seq = int(msg.seq)
        known = self._cache.get(subject)
        head = (
            known if known is not None and 0 <= known.seq <= last_seq else Head(0, 0, {}, 0, None)
        )
        if head.seq != last_seq:
            head = await self._count(subject, agg_type, head, msg)
        self._remember(subject, head)
        return head

    async def _count(self, subject: str, agg_type: str, base: Head, last: Any) -> Head:
        """``base`` moved on over the subject's messages after it, up to its ``last`` message,
        by the version rule; transitions checked by the aggregate's machine, as the fold does."""
        last_seq = int(last.seq)
        machine = self.machines.get(agg_type)
        version, state = base.version, base.state
        valid: Event | None = None  # the last valid event that took a position
        unchecked: list[StoredMessage] = []  # took a position since; validity not looked at
        foreign = 0
        async for batch in self._messages_after(subject, base.seq, last):
            for m in batch:
                taken = next_version(version, m.data)
                if taken is None:
                    foreign += 1
                    continue
                version = taken
                if machine is None:
                    unchecked.append(m)
                    continue
                ev = self._valid(m)
                if ev is None:
                    continue
                if ev.transition is not None:
                    try:
                        state = machine.check(ev.aggregate_id, state, ev.transition)
                    except InvalidTransition:
                        continue  # quarantined by the fold: no new state, not its last event
                valid = ev
            # Only the last valid one matters: look from the end, usually one decode per batch.
            for m in reversed(unchecked):
                if (ev := self._valid(m)) is not None:
                    valid = ev
                    break
            unchecked.clear()
        if foreign:
            log.warning(
                "messages on the subject take no version (stale, gap or malformed); appends "
                "continue after the aggregate's real version",
                subject=subject, messages=foreign, version=version, seq=last_seq,
            )  # fmt: skip
        if valid is None:
            return Head(last_seq, version, base.vclock, base.lamport, state)
        self.clock.observe(valid.lamport)
        lamport = max(base.lamport, valid.lamport)
        return Head(last_seq, version, dict(valid.vclock), lamport, state)

    def _valid(self, m: StoredMessage) -> Event | None:
        try:
            return decode_message(self.prefix, m)
        except InvalidEvent:
            return None

    async def _messages_after(
        self, subject: str, after: int, last: Any
    ) -> AsyncIterator[list[StoredMessage]]:
        """The subject's messages after seq ``after`` up to its ``last`` message (as the
        leader returned it): batched direct gets, and the leader's get for any the direct read
        did not reach yet (a lagging replica)."""
        last_seq = int(last.seq)
        if last_seq == after + 1:  # nothing else was stored since, on any subject
            at = last.time or utcnow()
            yield [StoredMessage(last_seq, subject, last.data or b"", at, last.headers)]
            return
        reader = LogReader(self._nc, self._js, self.stream, self.prefix, self.url)
        seen = after
        async for batch in reader.direct_batches(subject, start_seq=after + 1, stop_seq=last_seq):
            seen = batch[-1].seq
            yield batch
        while seen < last_seq:
            try:
                msg = await self._js.get_msg(self.stream, seq=seen + 1, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return
            seen = int(msg.seq)
            if seen > last_seq:
                return
            at = msg.time or utcnow()
            yield [StoredMessage(seen, msg.subject or subject, msg.data or b"", at, msg.headers)]

    async def _heads(self, pendings: list[Pending], refresh: bool) -> dict[str, Head]:
        subjects = {p.subject: p.agg_type for p in pendings}
        missing = [s for s in subjects if refresh or s not in self._cache or s in self._stale]
        if missing:
            got = await asyncio.gather(
                *(self.fetch_head(s, subjects[s]) for s in missing), return_exceptions=True
            )
            for s, g in zip(missing, got, strict=True):
                if isinstance(g, BaseException):
                    for p in pendings:
                        if p.subject == s and not p.future.done():
                            p.future.set_exception(self._translate(g, s))
        return {s: self._cache[s] for s in subjects if s in self._cache}

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        carry: list[Pending] = []
        while True:
            group = carry
            carry = []
            if not group:
                group.append(await self._queue.get())
            try:
                async with self._lock:
                    # Collect under the lock: what queued up during an inline commit joins.
                    n = sum(p.size for p in group)
                    while not self._queue.empty() and n < self.max_batch:
                        p = self._queue.get_nowait()
                        if n + p.size > MAX_EVENTS_PER_APPEND:
                            carry.append(p)
                            break
                        group.append(p)
                        n += p.size
                    await self._commit(group)
            except asyncio.CancelledError:
                for p in group + carry:
                    if not p.future.done():
                        p.future.set_exception(NotConnected(self.url, "event store closed"))
                raise
            except Exception as exc:  # never let the committer die with callers waiting
                log.exception("committer failed a batch", error=str(exc))
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(
                            exc if isinstance(exc, EventStoreError) else EventStoreError(str(exc))
                        )

    async def _commit(self, group: list[Pending]) -> None:
        refresh = False
        backoff = 0.05
        while group:
            group = [p for p in group if not p.future.done()]
            now = time.monotonic()
            expired = [p for p in group if now >= p.deadline]
            if expired:  # say why nothing answered (a full disk, JetStream disabled), if known
                why = await unanswered_detail(self._nc, self.stream, expired[0].subject)
                for p in expired:
                    p.future.set_exception(AppendTimeout(p.subject, p.timeout, why))
            group = [p for p in group if not p.future.done()]
            if not group:
                return
            try:
                heads = await self._heads(group, refresh)
            except Exception as exc:
                if not self._transient(exc):
                    raise
                await self._sleep_backoff(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            group = [p for p in group if not p.future.done()]
            try:
                ready = await self._prepare(group, heads, fresh=refresh)
            except Exception as exc:  # reserving clock values met a restart: try again
                if not self._transient(exc):
                    raise
                await self._sleep_backoff(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not ready:
                if any(not p.future.done() for p in group):
                    refresh = True  # a cached head looked stale: check with the server
                    continue
                return
            for p in ready:
                p.tried.add((p.base_seq, p.offset))
            try:
                first_seq = await self._send(ready)
            except _Rejected as rej:
                await self._settle_rejection(ready, rej)
                refresh = True
                continue
            except PermissionDenied as exc:
                for p in ready:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            except (EventStoreError, nats.errors.Error, OSError) as exc:
                if not self._transient(exc):
                    err = self._translate(exc, ready[0].subject)
                    for p in ready:
                        if not p.future.done():
                            p.future.set_exception(err)
                    continue
                log.info("append not confirmed, retrying with the same ids", error=str(exc) or
                         type(exc).__name__, events=sum(p.size for p in ready))  # fmt: skip
                await self._sleep_backoff(backoff)
                backoff = min(backoff * 2, 2.0)
                # The batch may have been stored: next round checks heads with the server and
                # recognises our own ids after the expected sequence.
                refresh = True
                await self._recognise_own(ready)
                continue
            if first_seq < 0:
                await self._settle_duplicate(ready[0], -first_seq)
            else:
                self._settle_success(ready, first_seq)
            group = [p for p in group if not p.future.done()]
            refresh = False

    async def _sleep_backoff(self, base: float) -> None:
        await asyncio.sleep(base * (0.5 + random.random()))

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (AppendTimeout, NotConnected)):
            return not self._nc.is_closed
        return (
            isinstance(
                exc,
                (
                    nats.errors.TimeoutError,
                    nats.errors.NoRespondersError,
                    nats.errors.ConnectionReconnectingError,
                    nats.errors.OutboundBufferLimitError,
                    nats.errors.StaleConnectionError,
                    nats.js.errors.ServiceUnavailableError,
                    asyncio.TimeoutError,
                    OSError,
                ),
            )
            and not self._nc.is_closed
        )

    def _translate(self, exc: BaseException, subject: str) -> EventStoreError:
        if isinstance(exc, EventStoreError):
            return exc
        if isinstance(exc, nats.errors.ConnectionClosedError) or self._nc.is_closed:
            return NotConnected(self.url, "connection closed")
        if isinstance(exc, nats.js.errors.APIError):
            return EventStoreError(f"server refused the append to {subject}: {exc.description}")
        return EventStoreError(f"append to {subject} failed: {exc!r}")

    # -- preparing a batch -----------------------------------------------------------------

    async def _reserve(self, events: int, observed: int) -> None:
        """Reserve clock values; a clock bucket this client may not use is ``PermissionDenied``
        as soon as the server says so."""
        bucket = self.clock.bucket.lower()
        async with self._failing_fast(
            lambda pattern: bucket in pattern.lower(), "reserving this producer's clock values"
        ):
            await self.clock.reserve(events, observed)

    async def _prepare(
        self, group: list[Pending], heads: dict[str, Head], *, fresh: bool
    ) -> list[Pending]:
        """Assign versions, clocks and bodies; fail what cannot be appended. Returns the batch."""
        work: dict[str, Head] = {}
        bases: dict[str, tuple[int, int]] = {}  # subject -> (head seq, events so far)
        ready: list[Pending] = []
        stale = False
        total_bytes = 0
        for p in group:
            if p.future.done():
                continue
            head = work.get(p.subject) or heads.get(p.subject)
            if head is None:
                continue
            if p.expected_version is not None and head.version != p.expected_version:
                if p.subject in work or fresh:
                    p.future.set_exception(
                        VersionConflict(p.agg_type, p.agg_id, p.expected_version, head.version)
                    )
                else:
                    stale = True  # the cache may be behind: ask the server before failing
                continue
            machine = self.machines.get(p.agg_type)
            state = head.state
            states: list[str] = []
            try:
                if machine is not None:
                    state = state or machine.initial
                    for ev in p.events:
                        if ev.step is not None:
                            state = machine.check(p.agg_id, state, ev.step)
                        states.append(state)
            except InvalidEvent as exc:
                if p.subject in work or fresh:
                    p.future.set_exception(exc)
                else:
                    stale = True
                continue
            if len(ready) and total_bytes > _BATCH_BYTES:
                break  # the rest waits for the next round
            context = dict(p.context)
            if p.expected_version is not None:
                # A counter above the ceiling (a raw client's) is not taken in: see OBSERVE_MAX.
                context = VectorClock(context).merge(observable(head.vclock)).to_dict()
            context = observable(context)
            observed = max([head.lamport if p.expected_version is not None else 0])
            if self.clock.needs_reservation(p.size, observed):
                await self._reserve(p.size, observed)
            envelopes: list[Envelope] = []
            bodies: list[bytes] = []
            vc = self._vc.merge(context)
            lamport = 0
            version = head.version
            now = utcnow()
            try:
                for ev in p.events:
                    lamport, counter = self.clock.tick(observed)
                    if lamport > MAX_INT or counter > MAX_INT:
                        raise InvalidEvent(
                            f"producer {self.producer!r} cannot append: its Lamport time or "
                            f"counter would pass 2**63-1 (an event it read carries Lamport time "
                            f"{self.clock.lamport - 1}); no reader could decode such an event"
                        )
                    vc = vc.increment(self.producer, to=counter)
                    version += 1
                    env = Envelope(
                        id=ev.id or "",
                        type=ev.type,
                        aggregate_type=p.agg_type,
                        aggregate_id=p.agg_id,
                        version=version,
                        schema=ev.schema,
                        occurred_at=now,
                        producer=self.producer,
                        lamport=lamport,
                        vclock=vc.to_dict(),
                        transition=ev.step,
                        data=ev.data,
                        causation_id=ev.causation_id,
                        correlation_id=ev.correlation_id,
                        metadata=ev.metadata,
                    )
                    body = encode_envelope(env)
                    if len(body) > self._nc.max_payload:
                        raise InvalidEvent(
                            f"event {env.id} is {len(body)} bytes encoded; the server accepts "
                            f"at most {self._nc.max_payload} bytes per event"
                        )
                    envelopes.append(env)
                    bodies.append(body)
            except InvalidEvent as exc:
                p.future.set_exception(exc)
                continue
            self._vc = vc
            base, before = bases.get(p.subject, (head.seq, 0))
            bases[p.subject] = (base, before + p.size)
            p.envelopes, p.bodies, p.base_seq, p.offset = envelopes, bodies, base, before
            p.state_after, p.states = state, states
            total_bytes += sum(len(b) for b in bodies)
            work[p.subject] = Head(-1, version, vc.to_dict(), lamport, state)
            ready.append(p)
        if stale and not ready:
            return []
        return ready

    # -- sending ---------------------------------------------------------------------------

    def _messages(self, ready: list[Pending]) -> list[tuple[str, bytes, dict[str, str]]]:
        msgs: list[tuple[str, bytes, dict[str, str]]] = []
        first_of: set[str] = set()
        for p in ready:
            stateful = p.agg_type in self.machines
            for i, (env, body) in enumerate(zip(p.envelopes, p.bodies, strict=True)):
                h = {"Nats-Msg-Id": env.id}
                if p.subject not in first_of:
                    first_of.add(p.subject)
                    h["Nats-Expected-Last-Subject-Sequence"] = str(p.base_seq)
                if stateful:
                    h[STATE_HEADER] = p.states[i]
                msgs.append((p.subject, body, h))
        return msgs

    async def _send(self, ready: list[Pending]) -> int:
        """Publish the batch; return the first stream sequence it was stored at."""
        msgs = self._messages(ready)
        self._violations.clear()
        subjects = frozenset(m[0] for m in msgs) if len(msgs) > 1 else frozenset()
        timeout = max(0.5, min(p.deadline for p in ready) - time.monotonic())
        timeout = min(timeout, 5.0)
        if len(msgs) == 1:
            subject, body, headers = msgs[0]
            reply = await self._request(subject, body, headers, timeout)
            return self._parse_ack(reply, 1)
        self._batch_no += 1
        batch_id = f"{self._batch_prefix}-{self._batch_no}"
        last = len(msgs)
        for i, (subject, body, headers) in enumerate(msgs, 1):
            headers["Nats-Batch-Id"] = batch_id
            headers["Nats-Batch-Sequence"] = str(i)
            if i == last:
                headers["Nats-Batch-Commit"] = "1"
                reply = await self._request(subject, body, headers, timeout, subjects)
                return self._parse_ack(reply, last)
            if i == 1:
                # The first message by request: the server confirms the batch is open, and
                # an early refusal (permissions, no stream) surfaces before sending the rest.
                first = await self._request(subject, body, headers, timeout, subjects)
                if first:
                    self._parse_ack(first, last)
            else:
                await self._nc.publish(subject, body, headers=headers)
        raise AssertionError("unreachable")

    async def _request(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        batch_subjects: frozenset[str] = frozenset(),
    ) -> bytes:
        """A request that fails fast with ``PermissionDenied`` instead of timing out."""
        subjects = batch_subjects | {subject}
        async with self._failing_fast(lambda p: any(_subject_matches(p, s) for s in subjects)):
            msg = await self._nc.request(subject, body, timeout=timeout, headers=headers)
        data: bytes = msg.data
        return data

    def _parse_ack(self, data: bytes, count: int) -> int:
        try:
            resp = msgspec.json.decode(data) if data else {}
        except msgspec.DecodeError as exc:
            raise EventStoreError(f"unreadable acknowledgement from the server: {data!r}") from exc
        err = resp.get("error")
        if err:
            raise _Rejected(int(err.get("err_code", 0)), str(err.get("description", err)))
        if not data:
            return 0
        seq = int(resp.get("seq", 0))
        if resp.get("duplicate") and count == 1:
            return -seq  # stored before: the negative marks a duplicate
        n = int(resp.get("count", count))
        return seq - n + 1

    # -- outcomes --------------------------------------------------------------------------

    async def _settle_duplicate(self, p: Pending, seq: int) -> None:
        """The server already had this (single) event: report the stored copy if it is this
        append's, stored right after a head an attempt expected (so at the version it was
        given); any other copy of the id (a raw client's, outside the history) is refused."""
        self._stale.add(p.subject)
        msg = await self._js.get_msg(self.stream, seq=seq)
        try:
            ev: Event | None = decode_event(msg.data or b"", seq=seq)
        except InvalidEvent:
            ev = None
        own = p.envelopes[0].id
        if (
            msg.subject != p.subject
            or ev is None
            or ev.id != own
            or not await self._stored_by_attempt(p, seq)
        ):
            p.future.set_exception(
                InvalidEvent(
                    f"event id {own} is already used by the message at seq {seq} on "
                    f"{msg.subject}, which is not this append at its place in the history; "
                    "event ids must be unique in the stream"
                )
            )
            return
        if not p.future.done():
            p.future.set_result(AppendResult.of(seq, ev, seq, (ev.id,), duplicate=True))

    async def _stored_by_attempt(self, p: Pending, seq: int) -> bool:
        """Whether ``seq`` is where one of ``p``'s attempts would have been stored."""
        for base, offset in p.tried:
            found = await self._stored_after(p.subject, base, offset + 1)
            if len(found) > offset and found[offset][0] == seq:
                return True
        return False

    def _settle_success(self, ready: list[Pending], first_seq: int) -> None:
        seq = first_seq
        for p in ready:
            first, last = seq, seq + p.size - 1
            seq += p.size
            env = p.envelopes[-1]
            self._remember(
                p.subject, Head(last, env.version, dict(env.vclock), env.lamport, p.state_after)
            )
            if not p.future.done():
                ids = tuple(e.id for e in p.envelopes)
                p.future.set_result(AppendResult.of(first, env, last, ids, duplicate=False))

    async def _settle_rejection(self, ready: list[Pending], rej: _Rejected) -> None:
        if rej.code in (10071, 10201, 10164):
            # Wrong last sequence or duplicate id: perhaps our own earlier attempt was stored.
            checked = await self._recognise_own(ready)
            for p in ready:
                self._stale.add(p.subject)
                if p.future.done() or rej.code == 10071 or not checked:
                    continue
                p.rejections += 1
                if p.rejections >= 3:
                    # The id is stored somewhere we did not send it: another aggregate or an
                    # unrelated writer used it. Ids must be unique across the whole stream.
                    p.future.set_exception(
                        InvalidEvent(
                            f"the server already holds an event with one of the ids "
                            f"{[e.id for e in p.envelopes]}, but not as this append on "
                            f"{p.subject}; event ids must be unique in the stream"
                        )
                    )
            return
        if "incomplete" in rej.description.lower() or rej.code in (10176, 10177):
            # Part of the batch was lost on the way (a reconnect): nothing was stored.
            log.info("atomic batch arrived incomplete, resending", error=rej.description)
            await asyncio.sleep(0.05)
            return
        if rej.code == 10054 or "maximum" in rej.description.lower():
            err: EventStoreError = InvalidEvent(f"the server refused the events: {rej.description}")
        else:
            hint = refusal_hint(rej.code)  # a full store says what to do
            err = EventStoreError(f"the server refused the append: {rej.description}{hint}")
        for p in ready:
            if not p.future.done():
                p.future.set_exception(err)

    async def _recognise_own(self, ready: list[Pending]) -> bool:
        """Settle as duplicates the requests whose events are stored where an earlier attempt
        put them (after the head it expected, past the events batched before them).

        Returns False when the server could not be asked (the check is then retried later).
        """
        for p in ready:
            if p.future.done() or not p.envelopes:
                continue
            ours = [e.id for e in p.envelopes]
            stored: list[tuple[int, str, Any]] = []
            try:
                for base, offset in sorted(p.tried):
                    found = await self._stored_after(p.subject, base, offset + p.size)
                    stored = found[offset:]
                    if stored and stored[0][1] == ours[0]:
                        break
            except Exception as exc:
                if self._transient(exc):
                    return False  # not reachable now; the next round retries
                raise
            if not stored or stored[0][1] != ours[0]:
                continue
            if [i for _, i, _ in stored] != ours:
                p.future.set_exception(
                    InvalidEvent(
                        f"events {ours} were only partly found on {p.subject}; "
                        "a retry must resend exactly the same events"
                    )
                )
                continue
            last_seq, _, last_ev = stored[-1]
            self._stale.add(p.subject)
            p.future.set_result(
                AppendResult.of(stored[0][0], last_ev, last_seq, tuple(ours), duplicate=True)
            )
        return True

    async def _stored_after(
        self, subject: str, after_seq: int, n: int
    ) -> list[tuple[int, str, Any]]:
        out: list[tuple[int, str, Any]] = []
        seq = after_seq + 1
        for _ in range(n):
            try:
                msg = await self._js.get_msg(self.stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            try:
                ev = decode_event(msg.data or b"", seq=msg.seq)
            except InvalidEvent:
                break
            out.append((int(msg.seq), ev.id, ev))
            seq = int(msg.seq) + 1
        return out


def refused_publish(message: str) -> str | None:
    """The subject a permission-violation error names for a publish (None for any other)."""
    m = _PERM_RE.search(message)
    return m.group(2) if m and m.group(1).lower() == "publish" else None


def _subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subject is one a permission error names (nats-py lowercases those)."""
    pt, st = pattern.lower().split("."), subject.lower().split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


def merge_context(context: VectorClock | Mapping[str, int] | None) -> dict[str, int]:
    """A causal context as a plain clock; ``InvalidEvent`` unless it is ``{producer: counter}``
    with string names and counters from 0 to 2**63-1 (what every reader decodes)."""
    if context is None:
        return {}
    if isinstance(context, VectorClock):
        return context.to_dict()
    if not isinstance(context, Mapping):
        raise InvalidEvent(
            f"context must be a vector clock {{producer: counter}}, got {type(context).__name__}"
        )
    for name, counter in context.items():
        if type(name) is not str or not name or not _utf8(name):
            raise InvalidEvent(f"context entry {name!r}: a producer name must be a string")
        if type(counter) is not int or not 0 <= counter <= MAX_INT:
            raise InvalidEvent(
                f"context entry {name!r}: {counter!r} is not a counter from 0 to 2**63-1"
            )
    return VectorClock(context).to_dict()


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
