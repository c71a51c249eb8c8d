"""Building one atomic batch: versions, machine states, clocks, bodies and headers.

The committer (``eventstore.producer``) decides *when* a group of appends goes out and what
happens to its answer; this module turns the group into messages. Each aggregate's first
message in a batch carries the server-checked ``Nats-Expected-Last-Subject-Sequence`` of the
head it was prepared on, later messages of the same aggregate carry none: a head that turns
out stale (another writer, a lagging direct get) makes the server refuse the whole batch, never
store a gap or a second version N.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from eventstore.clocks import VectorClock, observable
from eventstore.clockstore import ProducerClock
from eventstore.counters import AppendCounters
from eventstore.errors import InvalidEvent, VersionConflict
from eventstore.events import utcnow
from eventstore.heads import Head
from eventstore.machines import Machines
from eventstore.pending import Pending

__all__ = ["STATE_HEADER", "BatchBuilder", "Message"]

STATE_HEADER = "Eventstore-State"
_BATCH_BYTES = 4 << 20

Message = tuple[str, bytes, dict[str, str]]


class BatchBuilder:
    """Prepares groups of appends; owns the producer's vector clock (``vc``)."""

    def __init__(
        self,
        *,
        producer: str,
        clock: ProducerClock,
        machines: Machines,
        counters: AppendCounters,
        reserve: Callable[[int, int], Awaitable[None]],
        max_payload: Callable[[], int],
    ) -> None:
        self.producer = producer
        self.clock = clock
        self.machines = machines
        self.counters = counters
        self._reserve = reserve
        self._max_payload = max_payload
        self.vc = VectorClock()
        # One preparation at a time (two batches may be in flight): between checking that
        # clock values are reserved and ticking them, another batch must not take them.
        self._preparing = asyncio.Lock()

    async def prepare(
        self, group: list[Pending], heads: dict[str, Head], *, fresh: bool
    ) -> list[Pending]:
        """Assign versions, clocks and bodies; fail what cannot be appended. Returns the batch
        (empty when a cached head looked stale and nothing could go: ask the server)."""
        async with self._preparing:
            return await self._prepare(group, heads, fresh=fresh)

    async def _prepare(
        self, group: list[Pending], heads: dict[str, Head], *, fresh: bool
    ) -> list[Pending]:
        work: dict[str, Head] = {}
        bases: dict[str, tuple[int, int]] = {}  # subject -> (head seq, events so far)
        ready: list[Pending] = []
        stale = False
        total_bytes = 0
        max_payload = self._max_payload()
        now = utcnow()  # the batch's occurred time: one clock read, not one per append
        for p in group:
            if p.future.done():
                continue
            head = work.get(p.subject) or heads.get(p.subject)
            if head is None:
                continue
            if p.expected_version is not None and head.version != p.expected_version:
                if p.subject in work or fresh:
                    self.counters.conflicts += 1
                    p.future.set_exception(
                        VersionConflict(p.agg_type, p.agg_id, p.expected_version, head.version)
                    )
                else:
                    stale = True  # the cache may be behind: ask the server before failing
                continue
            machine = self.machines.get(p.agg_type)
            state = head.state
            states: list[str] | tuple[()] = ()
            try:
                if machine is not None:
                    state = state or machine.initial
                    states = []
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
            if ready and total_bytes > _BATCH_BYTES and not p.whole:
                break  # the rest waits for the next round
            context = p.context
            observed = 0
            if p.expected_version is not None:
                # A counter above the ceiling (a raw client's) is not taken in: see OBSERVE_MAX.
                context = VectorClock(context).merge(observable(head.vclock)).to_dict()
                observed = head.lamport
            if context:
                context = observable(context)
            if self.clock.needs_reservation(p.size, observed):
                await self._reserve(p.size, observed)
            try:
                envelopes, bodies, vc, lamport = p.encode(
                    producer=self.producer,
                    clock=self.clock,
                    vc=self.vc.merge(context) if context else self.vc,
                    version=head.version,
                    observed=observed,
                    max_payload=max_payload,
                    now=now,
                )
            except InvalidEvent as exc:
                p.fail(exc)
                continue
            self.vc = vc
            base, before = bases.get(p.subject, (head.seq, 0))
            bases[p.subject] = (base, before + p.size)
            p.envelopes, p.bodies, p.base_seq, p.offset = envelopes, bodies, base, before
            p.state_after, p.states = state, states
            total_bytes += sum(map(len, bodies))
            last = envelopes[-1]
            work[p.subject] = Head(-1, last.version, last.vclock, lamport, state)
            ready.append(p)
        if ready:
            self.clock.reserve_ahead()
        if stale and not ready:
            return []
        return ready

    def messages(self, ready: list[Pending]) -> list[Message]:
        """The batch's messages: a dedup id on each, the expectation on each subject's first."""
        msgs: list[Message] = []
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
