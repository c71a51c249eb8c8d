"""The committer's cache of aggregate heads: what it knows of each aggregate's last event.

An LRU of ``Head`` by subject, bounded in size, with "stale" marks: a head marked stale (after
a refused or unconfirmed batch, a duplicate) is checked with the server before it decides a
write. A head older than the log is still a correct place to count on from: each is exactly
what the fold's version rule gives for the subject up to its ``seq``.

``HeadReader`` asks the server for a head that decides a write, counting the version by the
fold's rule over the messages after the cached head. Where the last message comes from:

- aggregates never seen before (a cold batch): batched ``multi_last`` direct gets, up to 500
  subjects a request (``directget.last_messages``), instead of one get per aggregate;
- after a refused batch or a stale mark: the stream's LEADER, one ``STREAM.MSG.GET`` per
  subject, all in flight together (the leader-only get rejects ``multi_last`` and ``batch``
  alike, err 10003, checked on nats-server 2.15.1), then the messages after the cached heads
  in one ranged direct read when they are few, each checked to reach the leader's last
  sequence (what a lagging replica did not return is read from the leader);
- after a batch refused because another writer moved on, on a stream with ONE copy (no
  replica to lag): batched ``multi_last`` direct gets again, one request instead of one per
  subject (two writers on 100 shared aggregates refreshed 50-100 heads per refusal); every
  third refusal in a row, and any stale mark or unanswered batch, still asks the leader, and
  an expected version is never failed on such a read (it is checked with the leader first),
  so a direct get answered by a lagging mirror costs retries, never a wrong answer.

Direct gets are not read-after-write consistent on replicated (R3) streams: any replica may
answer, and one that lags returns an older last message, or none. That is safe here only
because no head is trusted by the server: every batch carries each aggregate's
expected-last-subject-sequence, so a head from a lagging replica gets the whole batch refused
(nothing stored), and the refresh that follows asks the leader. A lag costs a retry, never a
gap or a second version N.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import msgspec
from nats.js import JetStreamContext

from eventstore.clockstore import ProducerClock
from eventstore.errors import EventStoreError, InvalidEvent, InvalidTransition
from eventstore.events import Event, utcnow
from eventstore.jetstream import StoredMessage, last_msg, next_msg, translating
from eventstore.logging import get_logger
from eventstore.machines import Machines
from eventstore.novelty import NewGuess
from eventstore.pending import Pending
from eventstore.reader import LogReader, decode_message
from eventstore.versions import next_version

__all__ = ["Head", "HeadCache", "HeadReader"]

log = get_logger("eventstore.heads")


class Head(msgspec.Struct, gc=False):
    """What the committer knows of an aggregate's last stored event (untracked by the garbage
    collector: the cache holds up to 100,000 of them, and they hold no cycles)."""

    seq: int
    version: int
    vclock: dict[str, int]
    lamport: int
    state: str | None


_RANGE_MAX = 2048  # messages a refresh reads in one ranged direct read, at most


def _new() -> Head:
    """The head of an aggregate with no message yet (a new one each time: heads change)."""
    return Head(0, 0, {}, 0, None)


async def _once(batch: list[StoredMessage]) -> AsyncIterator[list[StoredMessage]]:
    yield batch


class HeadCache:
    """Heads by subject, least recently used evicted beyond ``size``."""

    def __init__(self, size: int = 100_000) -> None:
        self._heads: OrderedDict[str, Head] = OrderedDict()
        self._stale: set[str] = set()
        self.size = size

    def get(self, subject: str) -> Head | None:
        return self._heads.get(subject)

    def __contains__(self, subject: str) -> bool:
        return subject in self._heads

    def __getitem__(self, subject: str) -> Head:
        return self._heads[subject]

    def fresh(self, subject: str) -> bool:
        """Cached and not marked stale: good enough to prepare a write (the server's
        expected-sequence check catches the rest)."""
        return subject in self._heads and subject not in self._stale

    def remember(self, subject: str, head: Head) -> None:
        self._heads[subject] = head
        self._heads.move_to_end(subject)
        self._stale.discard(subject)
        if len(self._heads) > self.size:
            evicted, _ = self._heads.popitem(last=False)
            self._stale.discard(evicted)

    def mark_stale(self, subject: str) -> None:
        """Check this head with the server before it decides a write again."""
        self._stale.add(subject)


class HeadReader:
    """Fetches heads from the server into a ``HeadCache``, counting versions as the fold does."""

    def __init__(
        self,
        js: JetStreamContext,
        reader: LogReader,
        cache: HeadCache,
        *,
        machines: Machines,
        clock: ProducerClock,
        guess_new: bool = True,
    ) -> None:
        self._js = js
        self._reader = reader
        self.cache = cache
        self.machines = machines
        self.clock = clock
        self.stream = reader.stream
        self.prefix = reader.prefix
        self.guess = NewGuess(guess_new)

    async def lookup(
        self,
        pendings: list[Pending],
        refresh: bool,
        translate: Callable[[BaseException, str], EventStoreError],
        direct: bool = False,
        guess: bool = False,
    ) -> dict[str, Head]:
        """The heads of the requests' subjects: the cache's, or the server's for those not
        cached, marked stale or all of them (``refresh``). A request whose head could not be
        fetched fails with ``translate`` of the error. ``direct``: the refresh may take the
        last messages from batched direct gets instead of the leader (a single-copy stream,
        after a refusal by contention: see the module). ``guess``: unknown aggregates may be
        taken for new without asking, while ``self.guess`` says it pays (``novelty``)."""
        subjects = {p.subject: p.agg_type for p in pendings}
        missing = [s for s in subjects if refresh or not self.cache.fresh(s)]
        failed: dict[str, BaseException] = {}
        unknown: list[str] = []
        guessed: dict[str, Head] = {}  # kept out of the cache until the batch is stored
        if missing and not refresh:
            unknown = [s for s in missing if s not in self.cache]
            if guess and self.guess.on and len(unknown) > 1:  # a batch's worth, not one append
                guessed, unknown = self._guess_new(unknown, pendings)
                missing = [s for s in missing if s not in guessed]
            if len(unknown) > 1:
                failed = await self._learn(unknown, subjects)
                missing = [s for s in missing if s not in self.cache or s in failed]
        if missing:
            failed.update(await self._refresh(missing, subjects, direct))
        if unknown:
            known = [self.cache.get(s) for s in unknown if s not in failed]
            self.guess.looked_up(len(known), sum(1 for h in known if h is not None and h.seq == 0))
        if failed:
            for p in pendings:
                if p.subject in failed:
                    p.fail(translate(failed[p.subject], p.subject))
        heads = {s: self.cache[s] for s in subjects if s in self.cache}
        if guessed:
            heads.update(guessed)
        return heads

    def _guess_new(
        self, unknown: list[str], pendings: list[Pending]
    ) -> tuple[dict[str, Head], list[str]]:
        """Take the unknown aggregates for new (the server's expected-sequence check says if
        one is not): their heads, and those that still need a lookup (an expected version
        above 0). A stored batch puts its heads in the cache, a refused one leaves none."""
        versioned = {p.subject for p in pendings if p.expected_version}
        guessed = {s: _new() for s in unknown if s not in versioned}
        self.guess.guessed(guessed)
        return guessed, [s for s in unknown if s in versioned]

    async def _learn(self, unknown: list[str], types: dict[str, str]) -> dict[str, BaseException]:
        """Heads of subjects never seen, from batched ``multi_last`` direct gets: a few
        requests for a whole batch of new aggregates. Returns what failed (left uncached: a
        failed batched read falls back to one leader get per subject)."""
        try:
            lasts = await self._reader.last_messages(unknown)
        except Exception as exc:
            log.debug("batched head lookup failed, asking one by one", error=str(exc))
            return {}
        for s in unknown:
            if s not in lasts:
                self.cache.remember(s, _new())
        found = list(lasts)
        got = await asyncio.gather(
            *(self._count(s, types[s], _new(), lasts[s]) for s in found), return_exceptions=True
        )
        failed: dict[str, BaseException] = {}
        for s, g in zip(found, got, strict=True):
            if isinstance(g, BaseException):
                failed[s] = g
            else:
                self.cache.remember(s, g)
        return failed

    async def _refresh(
        self, subjects: list[str], types: dict[str, str], direct: bool = False
    ) -> dict[str, BaseException]:
        """Heads that decide a write after a refusal (or a stale mark): each subject's last
        sequence from the LEADER (one ``STREAM.MSG.GET`` each, all in flight together; a
        direct get may lag on a replicated stream), then the messages after the cached heads
        in one ranged direct read of the whole prefix when they are few (``_RANGE_MAX``), each
        checked to reach the leader's last sequence (else read per subject). Returns what
        failed. ``direct``: the last messages from batched direct gets instead (the leader's
        get per subject if that fails)."""
        failed: dict[str, BaseException] = {}
        lasts: dict[str, StoredMessage | None] = {}
        if direct and len(subjects) > 1:
            try:
                found = await self._reader.last_messages(subjects)
                lasts = {s: found.get(s) for s in subjects}
            except Exception as exc:
                log.debug("batched head refresh failed, asking the leader", error=str(exc))
        if not lasts:
            got = await asyncio.gather(*(self._leader_last(s) for s in subjects),
                                       return_exceptions=True)  # fmt: skip
            for s, g in zip(subjects, got, strict=True):
                if isinstance(g, BaseException):
                    failed[s] = g
                else:
                    lasts[s] = g
        moved = {s: (self._base(s, m), m) for s, m in lasts.items() if m is not None}
        moved = {s: (b, m) for s, (b, m) in moved.items() if b.seq != m.seq}
        after: dict[str, list[StoredMessage]] = {}
        if len(moved) > 1:
            lo = min(b.seq for b, _ in moved.values())
            hi = max(m.seq for _, m in moved.values())
            if hi - lo <= max(_RANGE_MAX, 16 * len(moved)):
                with contextlib.suppress(Exception):  # the per-subject read stays the answer
                    async for batch in self._reader.direct_batches(
                        f"{self.prefix}.>", start_seq=lo + 1, stop_seq=hi
                    ):
                        for m in batch:
                            if m.subject in moved and m.seq > moved[m.subject][0].seq:
                                after.setdefault(m.subject, []).append(m)
        heads = await asyncio.gather(
            *(self._advance(s, types[s], lasts[s], after.get(s)) for s in lasts),
            return_exceptions=True,
        )
        failed.update((s, h) for s, h in zip(lasts, heads, strict=True)
                      if isinstance(h, BaseException))  # fmt: skip
        return failed

    async def fetch(self, subject: str, agg_type: str) -> Head:
        """The aggregate's head from the server (not the cache's answer): it decides a write.

        ``seq`` is the subject's real last message from the leader (what the append must
        expect) and ``version`` the aggregate's version by the fold's rule
        (``eventstore.versions``): the messages after the cached head (all of them, the first
        time) are counted, so a raw stale, gap or malformed message never decides the next
        version. The clock is the last valid event's that took a position, the machine state
        the fold's.
        """
        return await self._advance(subject, agg_type, await self._leader_last(subject))

    async def _leader_last(self, subject: str) -> StoredMessage | None:
        with translating(what=f"head of {subject}", url=self._reader.url, timeout=5.0):
            msg = await last_msg(self._js, self.stream, subject)
        if msg is None:
            return None
        at = msg.time or utcnow()
        return StoredMessage(int(msg.seq or 0), subject, msg.data or b"", at, msg.headers)

    def _base(self, subject: str, last: StoredMessage) -> Head:
        """The cached head to count on from, if it is not past the subject's last message."""
        known = self.cache.get(subject)
        return known if known is not None and 0 <= known.seq <= last.seq else _new()

    async def _advance(
        self,
        subject: str,
        agg_type: str,
        last: StoredMessage | None,
        after: list[StoredMessage] | None = None,
    ) -> Head:
        """The head at ``last`` (the leader's), counted on from the cached one over ``after``
        (the subject's messages after it, when already read) and remembered."""
        head = _new() if last is None else self._base(subject, last)
        if last is not None and head.seq != last.seq:
            head = await self._count(subject, agg_type, head, last, after)
        self.cache.remember(subject, head)
        return head

    async def _count(
        self,
        subject: str,
        agg_type: str,
        base: Head,
        last: StoredMessage,
        after: list[StoredMessage] | None = None,
    ) -> Head:
        """``base`` moved on over the subject's messages after it, up to its ``last`` message,
        by the version rule; transitions checked by the aggregate's machine, as the fold does.
        ``after``: those messages, read already (used only if they reach ``last``)."""
        last_seq = last.seq
        machine = self.machines.get(agg_type)
        version, state = base.version, base.state
        valid: Event | None = None  # the last valid event that took a position
        unchecked: list[StoredMessage] = []  # took a position since; validity not looked at
        foreign = 0
        if after and after[-1].seq == last_seq and after[0].seq > base.seq:
            batches = _once(after)
        else:
            batches = self._messages_after(subject, base.seq, last)
        async for batch in batches:
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
        self, subject: str, after: int, last: StoredMessage
    ) -> AsyncIterator[list[StoredMessage]]:
        """The subject's messages after seq ``after`` up to its ``last`` message: batched
        direct gets, and the leader's get for any the direct read did not reach yet (a
        lagging replica)."""
        last_seq = last.seq
        if last_seq == after + 1:  # nothing else was stored since, on any subject
            yield [last]
            return
        seen = after
        reader = self._reader
        async for batch in reader.direct_batches(subject, start_seq=after + 1, stop_seq=last_seq):
            seen = batch[-1].seq
            yield batch
        while seen < last_seq:
            with translating(what=f"messages of {subject}", url=reader.url, timeout=5.0):
                msg = await next_msg(self._js, self.stream, subject, seen + 1)
            if msg is None:
                return
            seen = int(msg.seq or 0)
            if seen > last_seq:
                return
            at = msg.time or utcnow()
            yield [StoredMessage(seen, msg.subject or subject, msg.data or b"", at, msg.headers)]
