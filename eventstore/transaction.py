"""Multi-aggregate transactions: appends to several aggregates stored as ONE atomic batch.

``async with store.transaction() as tx`` collects ``tx.append(...)`` calls and, on a clean
exit, commits them as one JetStream atomic batch: every event is stored or none is. Each
aggregate's first message carries its own expected-last-subject-sequence (the committer's
rule), so one stale expectation makes the server refuse the whole batch; the commit then
reads the heads again and raises the ``VersionConflict`` of the aggregate that moved. An
exception inside the block discards the transaction; nothing is sent.

The dynamic consistency boundary (``tx.expect_nothing_new``) is built on the server's
``Nats-Expected-Last-Subject-Sequence-Subject``: the expectation is checked against a wildcard
filter, atomically with the batch. Verified on the bundled nats-server (2.15): in an atomic
batch it is checked against the stream *before* the batch (the transaction's own messages on
the filter do not count), a stale one refuses the whole batch (10071), and a second
expectation on a subject already written in the batch is refused (10164). So the boundary
rides on a message that carries no expectation of its own (an aggregate's second event) or,
failing that, stands in for the own expectation of an aggregate under the filter: the
filter's last sequence is read first and that aggregate's head after it, so "nothing new on
the filter since" implies "nothing new on the aggregate since its head was read".

The commit runs under the committer's lock, with the committer's head cache, preparation
(versions, clocks, state machines) and outcome handling: a second entry point of
``eventstore.producer``, kept apart because that module is at its size limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple

from eventstore.clocks import VectorClock
from eventstore.errors import (
    AppendTimeout,
    BoundaryConflict,
    InvalidEvent,
    NotConnected,
    PermissionDenied,
    ServerError,
)
from eventstore.events import AppendResult, NewEvent, validate_aggregate_type
from eventstore.jetstream import Ack, Refusal
from eventstore.pending import MAX_EVENTS_PER_APPEND, Pending, checked_events, merge_context
from eventstore.producer import Committer
from eventstore.publishing import publish_batch
from eventstore.reader import LogReader
from eventstore.subjects import aggregate_subject, filter_subject
from eventstore.validate import check_int

__all__ = ["MAX_EVENTS_PER_TRANSACTION", "Boundary", "Transaction", "commit_atomic"]

MAX_EVENTS_PER_TRANSACTION = MAX_EVENTS_PER_APPEND  # the server's atomic batch limit

EXPECTED = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"

MakePending = Callable[
    [str, str, list[NewEvent], int | None, dict[str, int] | None, float | None],
    Awaitable[Pending | AppendResult],
]
Message = tuple[str, bytes, dict[str, str]]


class Boundary(NamedTuple):
    """Nothing may have been stored on ``subject`` (a filter) after stream seq ``since_seq``."""

    subject: str
    since_seq: int


class _Append(NamedTuple):
    aggregate_type: str
    aggregate_id: str
    events: list[NewEvent]
    expected_version: int | None
    context: dict[str, int] | None


class Transaction:
    """Appends to several aggregates, all or nothing; see the module docstring.

    Built by ``EventStore.transaction()``; ``append`` and ``expect_nothing_new`` only collect
    (and validate at once), the commit on leaving the ``async with`` block sends.
    """

    def __init__(
        self,
        committer: Committer,
        reader: LogReader,
        make_pending: MakePending,
        prefix: str,
        timeout: float | None = None,
    ) -> None:
        self._committer = committer
        self._reader = reader
        self._make_pending = make_pending
        self._prefix = prefix
        self._timeout = timeout
        self._appends: list[_Append] = []
        self._boundaries: list[Boundary] = []
        self._events = 0
        self._done = False
        self.results: list[AppendResult] = []  # one per append, in order, once committed

    def append(
        self,
        aggregate_type: str,
        aggregate_id: str,
        events: Sequence[NewEvent] | NewEvent,
        *,
        expected_version: int | None = None,
        context: VectorClock | Mapping[str, int] | None = None,
    ) -> None:
        """Add an append (as ``EventStore.append``) to the transaction; sent on commit.

        ``InvalidEvent`` at once for malformed input or past the limit of
        ``MAX_EVENTS_PER_TRANSACTION`` events in one transaction."""
        self._open()
        aggregate_subject(self._prefix, aggregate_type, aggregate_id)  # valid, or InvalidEvent
        batch = [events] if isinstance(events, NewEvent) else list(events)
        checked_events(batch, expected_version)
        if self._events + len(batch) > MAX_EVENTS_PER_TRANSACTION:
            raise InvalidEvent(
                f"a transaction holds at most {MAX_EVENTS_PER_TRANSACTION} events (the "
                f"server's atomic batch limit); this one would hold {self._events + len(batch)}"
                ": split it into transactions that are each consistent on their own"
            )
        ctx = merge_context(context) if context is not None else None
        self._appends.append(_Append(aggregate_type, aggregate_id, batch, expected_version, ctx))
        self._events += len(batch)

    def expect_nothing_new(
        self,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        *,
        since_seq: int,
        subject: str | None = None,
    ) -> None:
        """Commit only if nothing was stored after stream seq ``since_seq`` on: one aggregate
        (type and id), every aggregate of a type (type alone), the whole log (neither), or a
        ``subject`` filter under the stream's prefix. Else ``BoundaryConflict``, nothing stored.
        """
        self._open()
        check_int(since_seq, "since_seq")
        if subject is not None:
            if aggregate_type is not None or aggregate_id is not None:
                raise InvalidEvent("give a subject filter or an aggregate type (and id), not both")
            tokens = subject.split(".")
            if not subject.startswith(self._prefix + ".") or "" in tokens or (
                ">" in tokens[:-1]
            ) or any(c.isspace() for c in subject):  # fmt: skip
                raise InvalidEvent(
                    f"subject filter {subject!r} is not a filter under the stream's prefix "
                    f"{self._prefix!r} (e.g. {self._prefix}.request.*)"
                )
            filt = subject
        elif aggregate_id is not None:
            if aggregate_type is None:
                raise InvalidEvent("an aggregate id needs its aggregate type")
            filt = aggregate_subject(self._prefix, aggregate_type, aggregate_id)
        elif aggregate_type is not None:
            filt = filter_subject(self._prefix, validate_aggregate_type(aggregate_type))
        else:
            filt = filter_subject(self._prefix)
        self._boundaries.append(Boundary(filt, since_seq))

    def _open(self) -> None:
        if self._done:
            raise InvalidEvent("this transaction is over (committed or discarded); start another")

    async def commit(self) -> list[AppendResult]:
        """Store every append as one atomic batch (``async with`` calls this on exit)."""
        self._open()
        self._done = True
        if not self._appends:  # nothing to store: the boundaries are checked all the same
            for b in self._boundaries:
                if (last := await self._reader.last_seq(b.subject)) > b.since_seq:
                    raise BoundaryConflict(b.subject, b.since_seq, last)
            return []
        slots: list[AppendResult | Pending] = []
        for a in self._appends:
            got = await self._make_pending(
                a.aggregate_type, a.aggregate_id, a.events, a.expected_version, a.context,
                self._timeout,
            )  # fmt: skip
            if isinstance(got, Pending):
                got.whole = True
            slots.append(got)
        group = [s for s in slots if isinstance(s, Pending)]
        if group:
            await commit_atomic(self._committer, self._reader, group, self._boundaries)
        self.results = [s if isinstance(s, AppendResult) else s.future.result() for s in slots]
        return self.results

    async def __aenter__(self) -> Transaction:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._done = True  # discarded: nothing was sent
            return
        await self.commit()


def covers(pattern: str, subject: str) -> bool:
    """Whether the NATS filter ``pattern`` matches ``subject`` (exact, case-sensitive)."""
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


def place_boundaries(msgs: list[Message], expect: list[tuple[str, int]]) -> None:
    """Put each boundary's header pair on a message: one without an expectation of its own,
    else the first of an aggregate under the filter (see the module docstring)."""
    free = [i for i, m in enumerate(msgs) if EXPECTED not in m[2]]
    for filt, last in expect:
        if free:
            i = free.pop(0)
        else:
            under = [i for i, m in enumerate(msgs) if covers(filt, m[0])]
            under = [i for i in under if EXPECTED_SUBJECT not in msgs[i][2]]
            if not under:
                raise InvalidEvent(
                    f"the consistency check on {filt} needs a message to ride on: append to an "
                    "aggregate under that filter in this transaction, or one more event to an "
                    "aggregate (each message carries one expectation)"
                )
            i = under[0]
        msgs[i][2][EXPECTED] = str(last)
        msgs[i][2][EXPECTED_SUBJECT] = filt


def _first_error(group: list[Pending]) -> BaseException | None:
    for p in group:
        if p.future.done() and not p.future.cancelled() and (e := p.future.exception()):
            return e
    return None


def _fail_all(group: list[Pending], exc: BaseException) -> None:
    for p in group:
        p.fail(exc)
        if p.future.done() and not p.future.cancelled():
            p.future.exception()  # retrieved: the transaction raises one error for all


async def commit_atomic(
    c: Committer, reader: LogReader, group: list[Pending], boundaries: list[Boundary]
) -> None:
    """Commit ``group`` as one atomic batch under the committer's lock, or raise the error
    that stopped it (the first failing append's, a ``BoundaryConflict``) with nothing stored."""
    if c._closed:
        raise NotConnected(c.url, "event store closed")
    async with c.exclusive():
        try:
            await _commit(c, reader, group, boundaries)
        except Exception as exc:
            _fail_all(group, c._translate(exc, group[0].subject))
        if not all(p.future.done() for p in group):  # an atomic batch settles as one
            _fail_all(group, ServerError("the transaction's batch was stored only in part"))
    if (err := _first_error(group)) is not None:
        _fail_all(group, err)
        raise err


async def _commit(
    c: Committer, reader: LogReader, group: list[Pending], boundaries: list[Boundary]
) -> None:
    refresh = False
    backoff = 0.05
    while True:
        if any(p.future.done() for p in group):
            return  # settled: all stored (recognised as our own) or one failed
        if time.monotonic() >= min(p.deadline for p in group):
            _fail_all(group, AppendTimeout(group[0].subject, group[0].timeout))
            return
        refresh = refresh or bool(boundaries)  # heads read after the boundaries' last seqs
        try:
            expect: list[tuple[str, int]] = []
            for b in boundaries:
                last = await reader.last_seq(b.subject)
                if last > b.since_seq:
                    _fail_all(group, BoundaryConflict(b.subject, b.since_seq, last))
                    return
                expect.append((b.subject, last))
            heads = await c._head_reader.lookup(group, refresh, c._translate)
            if (err := _first_error(group)) is not None:
                _fail_all(group, err)
                return
            ready = await c._prepare(group, heads, fresh=refresh)
        except Exception as exc:
            if not c._transient(exc):
                raise
            backoff = await c._sleep_backoff(backoff)
            continue
        if (err := _first_error(group)) is not None:
            _fail_all(group, err)
            return
        if len(ready) < len(group):
            refresh = True  # a cached head looked stale: check with the server
            continue
        msgs = c._messages(ready)
        place_boundaries(msgs, expect)
        for p in ready:
            c.counters.retries += p.sent()
        try:
            answer = await _send(c, ready, msgs)
        except PermissionDenied as exc:
            _fail_all(group, exc)
            return
        except Exception as exc:
            if not c._transient(exc):
                raise
            backoff = await c._sleep_backoff(backoff)
            refresh = True
            for p in ready:
                p.unanswered()
            await c._reconciler.recognise_own(ready)  # stored after all? then it is settled
            continue
        if isinstance(answer, Ack):
            c._settle_success(ready, answer.first_seq)
            return
        await c._settle_rejection(ready, answer)
        refresh = True


async def _send(c: Committer, ready: list[Pending], msgs: list[Message]) -> Ack | Refusal:
    c.fail_fast.clear()
    timeout = min(5.0, max(0.5, min(p.deadline for p in ready) - time.monotonic()))
    batch_id = ""
    if len(msgs) > 1:
        c._batch_no += 1
        batch_id = f"{c._batch_prefix}-{c._batch_no}"
    return await publish_batch(c._nc, msgs, batch_id, timeout, c._request)
