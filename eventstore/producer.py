"""The write path: group commit of appends into JetStream atomic batches.

Every ``append`` becomes a pending request on a queue. One committer task takes whatever is
queued (up to ``max_batch`` events), checks versions and state machines against its cache of
each aggregate's head, assigns versions and clocks, and publishes the lot as ONE atomic batch:
one fsync for hundreds of events, which is how a durable log stays fast. Up to ``depth`` (2)
batches are in flight at once on disjoint aggregates, so the client prepares the next batch
while the server stores the one before. Each aggregate's first
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
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore.appendqueue import AppendQueue
from eventstore.batching import BatchBuilder, Message
from eventstore.cancelling import cancel_and_wait
from eventstore.clocks import VectorClock
from eventstore.clockstore import ProducerClock
from eventstore.counters import AppendCounters
from eventstore.duplicates import Reconciler
from eventstore.errors import (
    AppendTimeout,
    EventStoreError,
    NotConnected,
    PermissionDenied,
    Retryable,
)
from eventstore.events import AppendResult
from eventstore.failfast import FailFast, refused_publish, subject_matches
from eventstore.heads import Head, HeadCache, HeadReader
from eventstore.health import unanswered_detail
from eventstore.jetstream import Ack, Refusal, request, translate
from eventstore.logging import get_logger
from eventstore.machines import Machines
from eventstore.outcomes import Outcomes
from eventstore.pending import MAX_EVENTS_PER_APPEND, Pending
from eventstore.publishing import publish_batch
from eventstore.reader import LogReader

__all__ = ["MAX_EVENTS_PER_APPEND", "Committer", "refused_publish"]

log = get_logger("eventstore.producer")


_SINGLES = 8  # one-event appends a group may hold at most to go as single publishes
_MAX_FLYING = 32  # single publishes (and batches) in flight at once at most


def _singles(group: list[Pending]) -> bool:
    """Whether ``group`` goes as single publishes: a few one-event appends, one per aggregate."""
    return (
        1 < len(group) <= _SINGLES
        and all(p.size == 1 for p in group)
        and len({p.subject for p in group}) == len(group)
    )


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
        direct_refresh: bool = False,
        guess_new: bool = True,
    ) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream = reader.stream
        self.producer = producer
        self.clock = clock
        self.machines = machines
        self.url = url
        self.direct_refresh = direct_refresh  # the stream has one copy (see ``_commit``)
        self._heads = HeadCache(cache_size)
        self._head_reader = HeadReader(
            js, reader, self._heads, machines=machines, clock=clock, guess_new=guess_new
        )
        self._reconciler = Reconciler(js, stream, self._heads, url=url, transient=self._transient)
        self._outcomes = Outcomes(self._heads, self._reconciler)
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
        self._queue = AppendQueue(max_batch)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()  # batches in flight: held by the committer or a caller
        self._waiting = 0  # callers waiting for the lock (``exclusive``)
        self.depth = 2  # batches in flight at once (on disjoint subjects)
        self._batch_no = 0
        self._batch_prefix = f"{producer[:40]}-{random.getrandbits(48):012x}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="eventstore-committer")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task)
        self._queue.release()  # nobody waits for a committer that is gone
        await self.clock.close()
        for p in self._queue.drain():
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
        self._queue.put(p)

    @property
    def max_batch(self) -> int:
        return self._queue.max_batch

    @max_batch.setter
    def max_batch(self, events: int) -> None:
        self._queue.max_batch = events

    async def room(self) -> None:
        """Wait while a full batch is queued and not taken yet (``AppendQueue``)."""
        if not self._closed and self._task is not None and not self._task.done():
            await self._queue.room()

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
            if not carry:
                carry.append(await self._queue.get())
            try:
                async with self._lock:
                    carry = await self._pipeline(carry)
            except asyncio.CancelledError:  # closed while waiting for a transaction
                for p in carry:
                    p.fail(NotConnected(self.url, "event store closed"))
                raise

    async def _pipeline(self, carry: list[Pending]) -> list[Pending]:
        """Commit what is queued with up to ``depth`` batches in flight, on disjoint subjects.

        The next batch is prepared and sent while the server still stores the one before
        (the client's work hides behind the fsync). Batches in flight share no aggregate, so
        each stands or falls on its own; appends to an aggregate in flight wait for it, in
        order. Returns what is left when a transaction waits for the lock (or nothing).
        """
        flying: dict[asyncio.Task[None], tuple[set[str], list[Pending]]] = {}
        arrival: asyncio.Future[Any] | None = None
        try:
            while True:
                group: list[Pending] = []
                singles = False
                if not self._waiting:
                    busy: set[str] = set().union(*(s for s, _ in flying.values()))
                    group, carry = self._queue.collect(carry, busy)
                    singles = _singles(group)
                    if not singles and flying and sum(p.size for p in group) < self.max_batch // 2:
                        carry, group = group + carry, []  # a small one waits to grow
                # A few one-event appends to distinct aggregates go as plain publishes, each in
                # flight on its own: an atomic batch of four costs the server about eight single
                # publishes' time, which is what a light, steady load would wait for.
                for part in [[p] for p in group] if singles else [group] if group else []:
                    task = asyncio.create_task(self._commit_group(part))
                    flying[task] = ({p.subject for p in part}, part)
                if not flying:
                    return carry
                batches = sum(1 for _, g in flying.values() if len(g) > 1 or g[0].size > 1)
                if not group or batches >= self.depth or len(flying) >= _MAX_FLYING:
                    waits: set[asyncio.Future[Any]] = set(flying)
                    if batches < self.depth and len(flying) < _MAX_FLYING and not self._waiting:
                        # Room for another batch: wake when enough has been queued for one
                        # (``append_many`` submits as the batches go out), not only when one
                        # in flight is answered.
                        self._queue.enough.clear()
                        arrival = asyncio.ensure_future(self._queue.enough.wait())
                        waits.add(arrival)
                    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if arrival is not None:
                        arrival.cancel()
                        arrival = None
                    for finished in done:
                        flying.pop(finished, None)  # type: ignore[call-overload]
        except asyncio.CancelledError:
            if arrival is not None:
                arrival.cancel()
            try:
                await cancel_and_wait(*flying)
            finally:  # cancelled again meanwhile (close insists): no append is left waiting
                for p in carry + [p for _, g in flying.values() for p in g]:
                    if not p.future.done():
                        p.future.set_exception(NotConnected(self.url, "event store closed"))
            raise

    async def _commit_group(self, group: list[Pending]) -> None:
        try:
            await self._commit(group)
        except asyncio.CancelledError:
            for p in group:
                p.fail(NotConnected(self.url, "event store closed"))
            raise
        except Exception as exc:  # never let the committer die with callers waiting
            log.exception("committer failed a batch", error=str(exc))
            for p in group:
                p.fail(self._translate(exc, p.subject))

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the committer for one caller (a transaction): the pipeline drains first and
        takes nothing new while someone waits, so a caller never starves under load."""
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    async def _commit(self, group: list[Pending]) -> None:
        refresh = False
        direct = False  # the refresh may read the heads with batched direct gets
        refusals = 0  # in a row
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
                heads = await self._head_reader.lookup(
                    group, refresh, self._translate, direct, guess=True
                )
            except Exception as exc:
                if not self._transient(exc):
                    raise
                backoff = await self._sleep_backoff(backoff)
                continue
            group = [p for p in group if not p.future.done()]
            try:
                ready = await self._prepare(group, heads, fresh=refresh and not direct)
            except Exception as exc:  # reserving clock values met a restart: try again
                if not self._transient(exc):
                    raise
                backoff = await self._sleep_backoff(backoff)
                continue
            if not ready:
                if any(not p.future.done() for p in group):
                    refresh, direct = True, False  # a head looked stale: ask the leader
                    continue
                return
            for p in ready:
                self.counters.retries += p.sent()  # sent before: this is a retry
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
                refresh, direct = True, False
                for p in ready:
                    p.unanswered()
                await self._reconciler.recognise_own(ready)
                continue
            if isinstance(answer, Refusal):
                await self._settle_rejection(ready, answer)
                # Another writer moved on (contention): on a single-copy stream one batched
                # direct read of the heads is as good as the leader's get per subject; every
                # third refusal in a row asks the leader anyway (``HeadReader.lookup``).
                refusals += 1
                refresh, direct = True, self.direct_refresh and refusals % 3 != 0
                continue
            if answer.duplicate and len(ready) == 1 and ready[0].size == 1:
                await self._reconciler.settle_duplicate(ready[0], answer.seq)
            else:
                self._settle_success(ready, answer.first_seq)
            group = [p for p in group if not p.future.done()]
            refresh = direct = False
            refusals = 0

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

    # -- outcomes (``eventstore.outcomes``) ------------------------------------------------

    def _settle_success(self, ready: list[Pending], first_seq: int) -> None:
        self._outcomes.success(ready, first_seq)
        self._head_reader.guess.settled([p.subject for p in ready], refused=False)

    async def _settle_rejection(self, ready: list[Pending], rej: Refusal) -> None:
        self._head_reader.guess.settled([p.subject for p in ready], refused=True)
        await self._outcomes.refusal(ready, rej)
