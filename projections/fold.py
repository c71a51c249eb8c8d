"""Folding one aggregate's messages into its state: the one definition every reader shares.

The runner (live), time travel (snapshot + replay) and ``verify`` (from scratch) all feed the
log's messages through ``Folder``, so a state is the same whichever way it was reached. The
rules, per message of an aggregate at version N:

- it cannot be decoded, or fails validation: quarantined (``undecodable``). If its body still
  says ``"version": N+1`` it occupies that position (the aggregate moves to N+1 unchanged);
  otherwise the aggregate stays at N. Bodies past the wire limits (``eventstore.events``:
  integers of the envelope above ``MAX_INT``, nesting deeper than ``MAX_NESTING``, checked
  before decoding so that every reader decides alike) and subjects that name no aggregate are
  undecodable too.
- its version is not N+1: quarantined (``duplicate`` or ``gap``), never applied; the aggregate
  stays at N, so a hole in the history stops it until the history is repaired.
- its lease token is older than one applied to the aggregate: ``fenced`` (``projections.fencing``).
- its data cannot be brought to its type's current schema (``upcast``, ``typed``:
  ``eventstore.upcasting``), its transition is refused by the state machine (``transition``),
  ``apply`` raises (``apply``) or the conflict resolver fails (``conflict``): quarantined;
  the aggregate moves to N+1 with its state, clocks and machine state unchanged. Any
  exception counts (``RecursionError`` and ``MemoryError`` included), and so does a result
  that could not be stored: a state that does not encode as JSON, encodes to more than
  ``MAX_STATE_BYTES``, nests deeper than ``MAX_NESTING`` or does not decode back as the
  projection's state type.
- otherwise it is applied. If its vector clock is concurrent with the clock of the aggregate's
  previous applied event, and the two write overlapping paths of the state (``touches``:
  always, for projections that do not say), it is a conflict, resolved by the projection's
  resolver and recorded.
  The state's vector clock becomes the merge of every applied event's clock, its Lamport time
  the largest seen.

Machines and resolvers are the rules in force at each event's stream sequence
(``projections.rules``), so every reader folds alike. The built-in ``entities`` state of a type
with a machine starts with ``status`` = the machine's ``initial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from eventstore import (
    MAX_NESTING,
    TOO_DEEP,
    UPCASTERS,
    Event,
    InvalidEvent,
    InvalidTransition,
    Machines,
    RuleBook,
    StoredMessage,
    UpcastFailed,
    misplaced,
    nesting_exceeds,
    next_version,
    parse_subject,
    rules_subject,
)
from projections.clockmerge import concurrent, merge_clock
from projections.conflicts import ConflictContext, LogOrder, touched_paths
from projections.entities import EntitiesProjection
from projections.fencing import fence
from projections.mergepatch import paths_overlap
from projections.projection import Projection
from projections.records import ConflictRecord
from projections.rules import InForce

__all__ = [
    "MAX_STATE_BYTES",
    "AggregateState",
    "Folder",
    "LastEvent",
    "MessageDecoder",
    "Rejected",
    "describe_error",
    "loose_body",
    "safe_text",
]

Key = tuple[str, str]

MAX_STATE_BYTES = 256 << 20  # a state's encoding: its row stays below SQLite's 1e9-byte limit
# How much an entities state can grow per byte of the event's body, at most (a merge patch adds
# its members; a number re-encodes to 4.5 times its text); the constant covers ``status``.
_GROWTH, _GROWTH_EXTRA = 8, 1024
_TEXT_LIMIT = 2000  # characters of a reason or a subject kept in quarantine rows and logs


class LastEvent(msgspec.Struct, frozen=True):
    """What the conflict rule needs of an aggregate's previous applied event."""

    id: str
    seq: int
    version: int
    vclock: dict[str, int]
    lamport: int
    producer: str
    touched: list[list[str]] | None = None  # what it wrote (Projection.touches); None: unknown


@dataclass(slots=True, eq=False)
class AggregateState:
    """Everything needed to go on folding an aggregate: its state and its position.

    ``last`` is the previous applied event (an ``Event`` while folding, a ``LastEvent`` once
    loaded from SQLite); ``previous`` and ``base`` (the full previous event and the state
    before it) are kept only for resolvers that refold.
    """

    aggregate_type: str
    aggregate_id: str
    state: Any
    version: int = 0
    seq: int = 0
    vclock: dict[str, int] | None = None
    lamport: int = 0
    recorded_at: datetime | None = None
    machine_state: str | None = None
    last: Event | LastEvent | None = None
    previous: Event | None = None
    base: Any = None
    snapshot_version: int = 0
    size: int = -1  # an upper bound of the state's encoded size (-1: unknown); see Folder.step
    fences: dict[str, int] | None = None  # lease name -> highest token applied (fencing)

    @property
    def key(self) -> Key:
        return (self.aggregate_type, self.aggregate_id)

    def clock(self) -> dict[str, int]:
        return dict(self.vclock) if self.vclock else {}


class Rejected(NamedTuple):
    """Why a message was quarantined instead of applied."""

    kind: str
    reason: str


class MessageDecoder:
    """Decodes log messages into events, remembering what each subject names.

    Parsing a subject costs as much as decoding a body; an aggregate's subject repeats all
    along the log, so it is parsed once.
    """

    def __init__(self, prefix: str, cache_size: int = 100_000) -> None:
        self.prefix = prefix
        self.rules_subject = rules_subject(prefix)  # names no aggregate: the rules change there
        self._keys: dict[str, Key | None] = {}
        self._cache_size = cache_size

    def key(self, subject: str) -> Key | None:
        """``(aggregate_type, aggregate_id)`` of a subject, or None if it names no aggregate."""
        try:
            return self._keys[subject]
        except KeyError:
            pass
        try:
            key: Key | None = None
            if subject != self.rules_subject:
                key = parse_subject(self.prefix, subject)
        except Exception:  # InvalidEvent, or anything else a hostile subject provokes
            key = None
        if len(self._keys) >= self._cache_size:
            self._keys.clear()
        self._keys[subject] = key
        return key

    def event(self, msg: StoredMessage, key: Key) -> Event:
        """The event of a message on ``key``'s subject; ``InvalidEvent`` if it is not one.

        Same validation as ``eventstore.events.decode_event``, but the log's sequence and time
        are set on the decoded struct instead of copying it (this is the runner's hot path).
        """
        data = msg.data
        if len(data) > _MAY_NEST and nesting_exceeds(data):
            raise InvalidEvent(f"malformed event at seq {msg.seq}: {TOO_DEEP}")
        try:
            event = _event_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
            raise InvalidEvent(f"malformed event at seq {msg.seq}: {exc}") from exc
        _set(event, "seq", msg.seq)
        _set(event, "recorded_at", msg.recorded_at)
        if event.aggregate_type != key[0] or event.aggregate_id != key[1]:
            raise InvalidEvent(
                f"event at seq {msg.seq} names {event.aggregate_type}/{event.aggregate_id} "
                f"but was stored on the subject of {key[0]}/{key[1]}"
            )
        return event


_LOG_ORDER = LogOrder()
_MAY_NEST = 2 * MAX_NESTING  # a shorter body is never too deep (see nesting_exceeds)
_loose = msgspec.json.Decoder()
_event_decoder = msgspec.json.Decoder(Event)
_encode = msgspec.json.Encoder().encode
_set = msgspec.structs.force_setattr


def loose_body(data: bytes) -> Any:
    """A body decoded as any JSON value, or None if it is not JSON or past the nesting limit
    (never raises: for reading what a quarantined body says about itself)."""
    if nesting_exceeds(data):
        return None
    try:
        return _loose.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None


def safe_text(text: str, limit: int = _TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters and made valid UTF-8 (lone surrogates escaped), so
    that SQLite and log renderers take it."""
    if len(text) > limit:
        text = text[:limit] + "..."
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an exception from user code, even if its ``str`` fails."""
    try:
        message = str(exc)
    except Exception:
        message = "(its message cannot be printed)"
    return safe_text(f"{type(exc).__name__}: {message}")


class Folder:
    """Folds messages into ``AggregateState`` for one projection (see the module rules)."""

    def __init__(
        self, projection: Projection[Any], rules: RuleBook | Machines | None = None
    ) -> None:
        self.projection = projection
        self.book = rules if isinstance(rules, RuleBook) else RuleBook.fixed(rules)
        self.rules = InForce(self.book, projection)  # the machines and resolver in force
        self._apply = projection.apply
        self._state = msgspec.json.Decoder(projection.state_type)
        # The entities fold merges decoded data into a JSON object: only its size can be wrong.
        self._json_fold = type(projection).apply is EntitiesProjection.apply and (
            projection.state_type == dict[str, Any]
        )
        self.rules.switch(0)

    def new(self, key: Key) -> AggregateState:
        return AggregateState(key[0], key[1], self.projection.initial(key[0], key[1]))

    def feed(
        self, agg: AggregateState, msg: StoredMessage, key: Key, decoder: MessageDecoder
    ) -> Rejected | ConflictRecord | None:
        """Decode and fold one message of ``agg``'s subject."""
        try:
            event = decoder.event(msg, key)
        except InvalidEvent as exc:
            return self.reject(agg, msg, exc.reason)
        return self.step(agg, event, len(msg.data))

    def reject(self, agg: AggregateState, msg: StoredMessage, reason: str) -> Rejected:
        """Quarantine an undecodable message; it takes the next version only if it says so."""
        version = next_version(agg.version, msg.data)  # the rule the producer follows too
        if version is not None:
            agg.version = version
            agg.seq = msg.seq
            agg.recorded_at = msg.recorded_at
        return Rejected("undecodable", reason)

    def step(
        self, agg: AggregateState, event: Event, size: int = -1
    ) -> Rejected | ConflictRecord | None:
        """Fold one decoded event of ``agg`` (``size``: its body's length, if known)."""
        rules = self.rules
        if not rules.lo <= event.seq < rules.hi or rules.changes != self.book.changes:
            rules.switch(event.seq)
        version = event.version
        if next_version(agg.version, event) is None:  # the producer's rule (versions.py)
            aggregate = f"{agg.aggregate_type}/{agg.aggregate_id}"
            return Rejected(*misplaced(aggregate, agg.version, version))
        if event.type in UPCASTERS.latest:  # data at its type's current schema (upcasting.py)
            try:
                event = event.current()
            except UpcastFailed as exc:
                self._advance(agg, event)
                return Rejected(exc.kind, exc.reason)
        if event.metadata and (fenced := fence(agg, event)) is not None:  # a lease's token
            return Rejected("fenced", fenced)
        machine_state = agg.machine_state
        machine = rules.machines.get(agg.aggregate_type) if rules.machines is not None else None
        if event.transition is not None and machine is not None:
            try:
                machine_state = machine.check(agg.aggregate_id, machine_state, event.transition)
            except InvalidTransition as exc:
                self._advance(agg, event)
                return Rejected("transition", exc.reason)
        before = agg.state
        if machine is not None and agg.last is None and self._json_fold and "status" not in before:
            before = {**before, "status": machine.initial}  # a new entity starts in `initial`
        last = agg.last
        conflict: ConflictRecord | None = None
        ctx: ConflictContext | None = None
        try:
            if (
                last is not None
                and concurrent(event.vclock, last.vclock)
                and self.overlap(event, last)
            ):
                ctx = ConflictContext(
                    agg.aggregate_type,
                    agg.aggregate_id,
                    event,
                    agg.previous,
                    agg.base,
                    agg.state,
                    self._apply,
                )
                resolver = rules.resolver
                if resolver.needs_history and agg.previous is None:
                    resolver = _LOG_ORDER  # its previous event was folded keeping no history
                resolution = resolver.resolve(ctx)
                state = resolution.state
                conflict = ConflictRecord(
                    projection=self.projection.name,
                    aggregate_type=agg.aggregate_type,
                    aggregate_id=agg.aggregate_id,
                    seq=event.seq,
                    version=version,
                    event_id=event.id,
                    event_producer=event.producer,
                    event_lamport=event.lamport,
                    event_vclock=dict(event.vclock),
                    previous_id=last.id,
                    previous_seq=last.seq,
                    previous_producer=last.producer,
                    previous_lamport=last.lamport,
                    previous_vclock=dict(last.vclock),
                    resolver=resolver.name,
                    winner=resolution.winner,
                    recorded_at=event.recorded_at,
                )
            else:
                state = self._apply(before, event)
        except Exception as exc:  # RecursionError and MemoryError included
            self._advance(agg, event)
            kind = "apply" if conflict is None and ctx is None else "conflict"
            return Rejected(kind, f"{kind} failed: {describe_error(exc)}")
        if self._json_fold and (ctx is None or rules.plain_resolver):
            # Entities states: only their size can be wrong. A bound grown by the body's length
            # saves encoding the state every event; it is encoded once the bound passes the
            # limit, so the decision is exactly "its encoding is too big".
            bound = agg.size + _GROWTH * size + _GROWTH_EXTRA
            problem = None
            if ctx is not None or size < 0 or agg.size < 0 or bound > MAX_STATE_BYTES:
                try:
                    bound = len(_encode(state))
                except Exception as exc:  # not expected of JSON data, but never a crash
                    problem = describe_error(exc)
                else:
                    if bound > MAX_STATE_BYTES:
                        problem = f"it encodes to {bound} bytes, more than {MAX_STATE_BYTES}"
        else:
            bound, problem = -1, self.unstorable(state)
        if problem is not None:
            self._advance(agg, event)
            kind = "apply" if ctx is None else "conflict"
            return Rejected(kind, f"the state after this event cannot be stored: {problem}")
        agg.size = bound
        if rules.history:
            agg.base = before
            agg.previous = event
        elif agg.previous is not None:
            agg.base = agg.previous = None
        agg.state = state
        agg.version = version
        agg.seq = event.seq
        agg.recorded_at = event.recorded_at
        agg.vclock = merge_clock(agg.vclock, event.vclock)
        if event.lamport > agg.lamport:
            agg.lamport = event.lamport
        agg.machine_state = machine_state
        agg.last = event
        return conflict

    def overlap(self, event: Event, last: Event | LastEvent) -> bool:
        """Whether two concurrent events conflict: they write overlapping paths, or either
        one's paths are unknown (the rule for projections that do not say)."""
        mine = touched_paths(self.projection.touches, event)
        if mine is None:
            return True
        if isinstance(last, LastEvent):
            theirs = last.touched
        else:
            theirs = touched_paths(self.projection.touches, last)
        return theirs is None or paths_overlap(mine, theirs)

    def unstorable(self, state: Any) -> str | None:
        """Why ``state`` could not be stored and read back by every reader, or None."""
        try:
            body = _encode(state)
        except Exception as exc:  # TypeError, RecursionError, UnicodeEncodeError, ValueError
            return describe_error(exc)
        if len(body) > MAX_STATE_BYTES:
            return f"it encodes to {len(body)} bytes, more than {MAX_STATE_BYTES}"
        if nesting_exceeds(body):
            return f"it is {TOO_DEEP}"
        try:
            self._state.decode(body)
        except Exception as exc:
            return f"it does not decode as {self.projection.state_type!r}: {describe_error(exc)}"
        return None

    @staticmethod
    def _advance(agg: AggregateState, event: Event) -> None:
        agg.version = event.version
        agg.seq = event.seq
        agg.recorded_at = event.recorded_at
