"""One ``append`` call waiting for the committer, and the checks that build it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from eventstore.clocks import VectorClock
from eventstore.clockstore import ProducerClock
from eventstore.errors import InvalidEvent
from eventstore.events import (
    MAX_INT,
    AppendResult,
    Envelope,
    NewEvent,
    Transition,
    encode_envelope,
    utcnow,
)
from eventstore.validate import check_optional_int

__all__ = ["MAX_EVENTS_PER_APPEND", "AppendRequest", "Pending", "checked_events", "merge_context"]

MAX_EVENTS_PER_APPEND = 1000  # the server's atomic batch limit


class AppendRequest(msgspec.Struct, frozen=True, gc=False):
    """One append of :meth:`EventStore.append_many`."""

    aggregate_type: str
    aggregate_id: str
    events: list[NewEvent]
    expected_version: int | None = None
    context: dict[str, int] | None = None


@dataclass(slots=True, eq=False)
class Pending:
    """One ``append`` call waiting for the committer."""

    agg_type: str
    agg_id: str
    subject: str
    events: Sequence[NewEvent]  # a tuple: untracked by the garbage collector once it looked
    expected_version: int | None
    context: dict[str, int]
    future: asyncio.Future[AppendResult]
    deadline: float
    timeout: float
    # Assigned per attempt. The defaults are shared immutable empties, and the attempts are
    # tuples: a batch holds thousands of these until it is answered, and every container
    # allocated per append is work for the garbage collector (it was a quarter of an append's
    # client time).
    envelopes: Sequence[Envelope] = ()
    bodies: Sequence[bytes] = ()
    base_seq: int = 0  # the head sequence this attempt expected
    state_after: str | None = None
    states: Sequence[str] = ()  # state after each event (machines only)
    # Head sequences of attempts that may have been stored (sent, never confirmed): a stored
    # copy of this append sits right after one of them.
    tried: tuple[tuple[int, int], ...] = ()  # (head seq, offset after it)
    # The attempts among them that went unanswered (a timeout, a lost ack): only these may
    # be stored. A refused batch stored nothing, so a refusal never needs looking for a copy.
    unsure: tuple[tuple[int, int], ...] = ()
    offset: int = 0  # events of earlier requests on the same subject in this attempt
    rejections: int = 0
    whole: bool = False  # a member of a transaction: never left for the next batch

    def sent(self) -> bool:
        """Record the attempt being sent (its head sequence and offset); whether it is a
        retry (sent before)."""
        attempt = (self.base_seq, self.offset)
        retry = bool(self.tried)
        if attempt not in self.tried:
            self.tried += (attempt,)
        return retry

    def unanswered(self) -> None:
        """Record the attempt just sent as unanswered: it may have been stored."""
        attempt = (self.base_seq, self.offset)
        if attempt not in self.unsure:
            self.unsure += (attempt,)

    @classmethod
    def new(
        cls,
        agg_type: str,
        agg_id: str,
        subject: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        context: dict[str, int],
        timeout: float,
    ) -> Pending:
        """A request due within ``timeout`` seconds from now."""
        future = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + timeout
        return cls(agg_type, agg_id, subject, events, expected_version, context, future,
                   deadline, timeout)  # fmt: skip

    @property
    def size(self) -> int:
        return len(self.events)

    def encode(
        self,
        *,
        producer: str,
        clock: ProducerClock,
        vc: VectorClock,
        version: int,
        observed: int,
        max_payload: int,
        now: datetime | None = None,
    ) -> tuple[tuple[Envelope, ...], tuple[bytes, ...], VectorClock, int]:
        """The envelopes and bodies of this append's events after ``version``, ticking the
        producer's clock (reserved beforehand); with the clock after them and the last Lamport
        time. ``InvalidEvent`` if a clock would overflow or an event exceeds ``max_payload``.
        ``now``: the occurred time (the batch's; default: the wall clock now)."""
        envelopes: list[Envelope] = []
        bodies: list[bytes] = []
        lamport = 0
        if now is None:
            now = utcnow()
        base = vc.entries
        entries: dict[str, int] = {}
        agg_type, agg_id = self.agg_type, self.agg_id
        for ev in self.events:
            lamport, counter = clock.tick(observed)
            if lamport > MAX_INT or counter > MAX_INT:
                raise InvalidEvent(
                    f"producer {producer!r} cannot append: its Lamport time or "
                    f"counter would pass 2**63-1 (an event it read carries Lamport time "
                    f"{clock.lamport - 1}); no reader could decode such an event"
                )
            # One new dict per event, shared by the envelope and the producer's clock: neither
            # is ever changed in place (``VectorClock`` is immutable, envelopes are frozen).
            entries = dict(base)
            base = entries
            mine = entries.get(producer, 0) + 1
            entries[producer] = mine if mine > counter else counter
            version += 1
            transition = ev.transition
            env = Envelope(
                id=ev.id or "",
                type=ev.type,
                aggregate_type=agg_type,
                aggregate_id=agg_id,
                version=version,
                schema=ev.schema,
                occurred_at=now,
                producer=producer,
                lamport=lamport,
                vclock=entries,
                transition=transition if isinstance(transition, Transition) else None,
                data=ev.data,
                causation_id=ev.causation_id,
                correlation_id=ev.correlation_id,
                metadata=ev.metadata,
            )
            body = encode_envelope(env)
            if len(body) > max_payload:
                raise InvalidEvent(
                    f"event {env.id} is {len(body)} bytes encoded; the server accepts "
                    f"at most {max_payload} bytes per event"
                )
            envelopes.append(env)
            bodies.append(body)
        clock_after = VectorClock.trusted(entries) if entries else vc
        return tuple(envelopes), tuple(bodies), clock_after, lamport

    def fail(self, exc: BaseException) -> None:
        """Fail the call unless it is settled already."""
        if not self.future.done():
            self.future.set_exception(exc)


def checked_events(
    events: Sequence[NewEvent] | NewEvent, expected_version: int | None
) -> tuple[tuple[NewEvent, ...], bool]:
    """The events of one append, each with its id, and whether the caller chose any id;
    ``InvalidEvent`` for what cannot be appended."""
    if expected_version is not None:
        check_optional_int(expected_version, "expected_version")
    # One event (the common case): no list of ids to compare.
    one = events if type(events) is NewEvent else None
    if one is None and type(events) is list and len(events) == 1 and type(events[0]) is NewEvent:
        one = events[0]
    if one is not None:
        return ((one,), True) if one.id is not None else ((one.with_id(),), False)
    batch = [events] if isinstance(events, NewEvent) else list(events)
    if not batch:
        raise InvalidEvent("an append needs at least one event")
    if len(batch) > MAX_EVENTS_PER_APPEND:
        raise InvalidEvent(
            f"{len(batch)} events in one append; at most {MAX_EVENTS_PER_APPEND} "
            "(the server's atomic batch limit)"
        )
    if not all(isinstance(e, NewEvent) for e in batch):
        raise InvalidEvent("events must be NewEvent objects")
    user_ids = [e.id for e in batch if e.id is not None]
    if len(set(user_ids)) != len(user_ids):
        raise InvalidEvent("the same event id appears twice in one append")
    return tuple([e.with_id() for e in batch]), bool(user_ids)


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
