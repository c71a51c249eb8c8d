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
import time

from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore.batching import BatchBuilder, Message
from eventstore.clocks import VectorClock
from eventstore.clockstore import ProducerClock
from eventstore.counters import AppendCounters
from eventstore.duplicates import Reconciler
from eventstore.errors import (
    AppendTimeout,
    EventStoreError,
    InvalidEvent,
    NotConnected,
    PermissionDenied,
    Retryable,
    ServerError,
)
from eventstore.events import AppendResult
from eventstore.failfast import FailFast, refused_publish, subject_matches
from eventstore.heads import Head, HeadCache, HeadReader
from eventstore.health import unanswered_detail
from eventstore.jetstream import (
    BATCH_INCOMPLETE,
    DUPLICATE_ID,
    MAXIMUM_MESSAGE_SIZE,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_CONSTANT,
    Ack,
    Refusal,
    publish_batch,
    refusal_hint,
    request,
    translate,
)
from eventstore.logging import get_logger
from eventstore.machines import Machines
from eventstore.pending import MAX_EVENTS_PER_APPEND, Pending
from eventstore.reader import LogReader

__all__ = ["MAX_EVENTS_PER_APPEND", "Committer", "refused_publish"]

log = get_logger("eventstore.producer")


class Committer:
    """Owns the append queue, the head cache and the producer's clocks."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        reader: LogReader,
        producer: str,
        clock: ProducerClock,
        machines: Machines,
        url: str,
        max_batch: int = 500,
        cache_size: int = 100_000,
    ) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream = reader.stream
        self.producer = producer
        self.clock = clock
        self.machines = machines
        self.url = url
        self.max_batch = max_batch
        self._heads = HeadCache(cache_size)
        self._head_reader = HeadReader(js, reader, self._heads, machines=machines, clock=clock)
        self._reconciler = Reconciler(js, stream, self._heads, url=url, transient=self._transient)
        self.fail_fast = FailFast()
        self.counters = AppendCounters()
        self._builder = BatchBuilder(
            producer=producer,
            clock=clock,
            machines=machines,
            counters=self.counters,
            reserve=self._reserve,
            max_payload=lambda: self._nc.max_payload,
        )
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
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
        self.fail_fast.violation(message)

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
            except Exception as exc:  # as the committer task reports it
                raise self._translate(exc, p.subject) from exc
        return await p.future

    @property
    def vclock(self) -> VectorClock:
        return self._builder.vc

    # -- heads -----------------------------------------------------------------------------

    async def fetch_head(self, subject: str, agg_type: str) -> Head:
        """The aggregate's head from the server (see ``HeadReader.fetch``)."""
        return await self._head_reader.fetch(subject, agg_type)

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
                        p.future.set_exception(self._translate(exc, p.subject))

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
                heads = await self._head_reader.lookup(group, refresh, self._translate)
            except Exception as exc:
                if not self._transient(exc):
                    raise
                backoff = await self._sleep_backoff(backoff)
                continue
            group = [p for p in group if not p.future.done()]
            try:
                ready = await self._prepare(group, heads, fresh=refresh)
            except Exception as exc:  # reserving clock values met a restart: try again
                if not self._transient(exc):
                    raise
                backoff = await self._sleep_backoff(backoff)
                continue
            if not ready:
                if any(not p.future.done() for p in group):
                    refresh = True  # a cached head looked stale: check with the server
                    continue
                return
            for p in ready:
                self.counters.retries += bool(p.tried)  # sent before: this is a retry
                p.tried.add((p.base_seq, p.offset))
            try:
                answer = await self._send(ready)
            except PermissionDenied as exc:
                for p in ready:
                    p.fail(exc)
                continue
            except Exception as exc:
                if not self._transient(exc):
                    err = self._translate(exc, ready[0].subject)
                    for p in ready:
                        p.fail(err)
                    continue
                log.info("append not confirmed, retrying with the same ids", error=str(exc) or
                         type(exc).__name__, events=sum(p.size for p in ready))  # fmt: skip
                backoff = await self._sleep_backoff(backoff)
                # The batch may have been stored: next round checks heads with the server and
                # recognises our own ids after the expected sequence.
                refresh = True
                for p in ready:
                    p.unsure.add((p.base_seq, p.offset))
                await self._reconciler.recognise_own(ready)
                continue
            if isinstance(answer, Refusal):
                await self._settle_rejection(ready, answer)
                refresh = True
                continue
            if answer.duplicate and len(ready) == 1 and ready[0].size == 1:
                await self._reconciler.settle_duplicate(ready[0], answer.seq)
            else:
                self._settle_success(ready, answer.first_seq)
            group = [p for p in group if not p.future.done()]
            refresh = False

    async def _sleep_backoff(self, base: float) -> float:
        return await asyncio.sleep(base * (0.5 + random.random()), min(base * 2, 2.0))  # next

    def _transient(self, exc: BaseException) -> bool:
        """Whether a failure may pass by itself (retry with the same ids, after a backoff)."""
        if self._nc.is_closed:
            return False
        return isinstance(translate(exc, url=self.url), Retryable)

    def _translate(self, exc: BaseException, subject: str) -> EventStoreError:
        return translate(exc, what="append", subject=subject, url=self.url,
                         closed=self._nc.is_closed)  # fmt: skip

    # -- preparing a batch -----------------------------------------------------------------

    async def _reserve(self, events: int, observed: int) -> None:
        """Reserve clock values; a clock bucket this client may not use is ``PermissionDenied``
        as soon as the server says so."""
        bucket = self.clock.bucket.lower()
        async with self.fail_fast.block(
            lambda pattern: bucket in pattern.lower(), "reserving this producer's clock values"
        ):
            await self.clock.reserve(events, observed)

    async def _prepare(
        self, group: list[Pending], heads: dict[str, Head], *, fresh: bool
    ) -> list[Pending]:
        """Assign versions, clocks and bodies (``BatchBuilder.prepare``)."""
        return await self._builder.prepare(group, heads, fresh=fresh)

    # -- sending ---------------------------------------------------------------------------

    def _messages(self, ready: list[Pending]) -> list[Message]:
        return self._builder.messages(ready)

    async def _send(self, ready: list[Pending]) -> Ack | Refusal:
        """Publish the batch (one atomic batch; one event: a plain publish)."""
        msgs = self._messages(ready)
        self.fail_fast.clear()
        timeout = max(0.5, min(p.deadline for p in ready) - time.monotonic())
        timeout = min(timeout, 5.0)
        batch_id = ""
        if len(msgs) > 1:
            self._batch_no += 1
            batch_id = f"{self._batch_prefix}-{self._batch_no}"
        return await publish_batch(self._nc, msgs, batch_id, timeout, self._request)

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
        async with self.fail_fast.block(lambda p: any(subject_matches(p, s) for s in subjects)):
            return await request(self._nc, subject, body, headers, timeout)

    # -- outcomes --------------------------------------------------------------------------

    def _settle_success(self, ready: list[Pending], first_seq: int) -> None:
        seq = first_seq
        for p in ready:
            first, last = seq, seq + p.size - 1
            seq += p.size
            env = p.envelopes[-1]
            self._heads.remember(
                p.subject, Head(last, env.version, dict(env.vclock), env.lamport, p.state_after)
            )
            if not p.future.done():
                ids = tuple(e.id for e in p.envelopes)
                p.future.set_result(AppendResult.of(first, env, last, ids, duplicate=False))

    async def _settle_rejection(self, ready: list[Pending], rej: Refusal) -> None:
        if rej.code in (WRONG_LAST_SEQUENCE, DUPLICATE_ID, WRONG_LAST_SEQUENCE_CONSTANT):
            # Wrong last sequence or duplicate id: perhaps our own earlier attempt was stored.
            checked = await self._reconciler.recognise_own(ready)
            for p in ready:
                self._heads.mark_stale(p.subject)
                if p.future.done() or rej.code == WRONG_LAST_SEQUENCE or not checked:
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
        if "incomplete" in rej.description.lower() or rej.code in BATCH_INCOMPLETE:
            # Part of the batch was lost on the way (a reconnect): nothing was stored.
            log.info("atomic batch arrived incomplete, resending", error=rej.description)
            await asyncio.sleep(0.05)
            return
        if rej.code == MAXIMUM_MESSAGE_SIZE or "maximum" in rej.description.lower():
            err: EventStoreError = InvalidEvent(f"the server refused the events: {rej.description}")
        else:
            hint = refusal_hint(rej.code)  # a full store says what to do
            err = ServerError(f"the server refused the append: {rej.description}{hint}")
        for p in ready:
            p.fail(err)
