"""Wire format v1: one event is one JetStream message whose body is this JSON object.

The body is self-contained so that an agent in any language can publish a valid event with a
plain NATS client. The stream sequence and the recorded time are the log's, never the body's:
``Event`` adds them from the message metadata when an event is read back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from eventstore.errors import InvalidEvent
from eventstore.ids import uuid7
from eventstore.jsonvalues import (
    MAX_INT,
    MAX_NESTING,
    TOO_DEEP,
    check_json,
    is_utf8,
    nesting_exceeds,
    show,
)
from eventstore.upcasting import UPCASTERS

__all__ = [
    "AGGREGATE_TYPE_RE",
    "EVENT_TYPE_RE",
    "MAX_INT",
    "MAX_NESTING",
    "PRODUCER_RE",
    "RULES_ID",
    "RULES_TYPE",
    "TOO_DEEP",
    "AppendResult",
    "Envelope",
    "Event",
    "NewEvent",
    "Transition",
    "check_json",
    "decode_event",
    "encode_envelope",
    "nesting_exceeds",
    "validate_aggregate_type",
    "validate_event_type",
    "validate_producer",
]

AGGREGATE_TYPE_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
EVENT_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}")
PRODUCER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
STATE_RE = re.compile(r"[^\x00-\x1f]{1,128}")
# What an event id must not hold: ``\s`` is exactly ``str.isspace``, plus the C0 controls.
_BAD_ID_CHAR = re.compile(r"[\s\x00-\x1f]")
# The one reserved aggregate: the rules stored with the log (``eventstore.rules``). Users'
# types match ``AGGREGATE_TYPE_RE``, so a leading ``_`` can never clash; decoding accepts it,
# appends refuse it (only ``EventStore.set_rules`` writes it).
RULES_TYPE = "_rules"
RULES_ID = "current"

# Names checked against the patterns above in ``Envelope.__post_init__``, once per distinct
# (type, aggregate type, producer): msgspec's own pattern constraint cost half of decoding.
_NAMES_OK: set[tuple[str, str, str]] = set()
_NAMES_OK_MAX = 65_536
Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Transition(msgspec.Struct, frozen=True, gc=False):
    """A state-machine step ``from`` → ``to`` carried by an event."""

    from_: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = msgspec.field(name="from")
    to: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = ""

    def __post_init__(self) -> None:
        if not self.to:
            raise msgspec.ValidationError("transition needs a non-empty 'to'")

    @classmethod
    def parse(cls, value: object) -> Transition:
        """Accept ``Transition``, ``("A", "B")`` (or a list) or ``"A:B"``; anything else, and a
        state name that is not 1-128 printable characters, is ``InvalidEvent``."""
        pair: tuple[object, object]
        if isinstance(value, Transition):
            pair = (value.from_, value.to)
        elif isinstance(value, str):
            parts = value.split(":")
            if len(parts) != 2 or not all(parts):
                raise InvalidEvent(f"transition {show(value)} must look like FROM:TO")
            pair = (parts[0], parts[1])
        elif type(value) in (tuple, list) and len(value) == 2:  # type: ignore[arg-type]
            pair = (value[0], value[1])  # type: ignore[index]
        else:
            raise InvalidEvent(
                f"transition must be a Transition, a (from, to) pair of state names or "
                f"'FROM:TO', got {show(value)}"
            )
        for name in pair:
            if type(name) is not str or not STATE_RE.fullmatch(name) or not is_utf8(name):
                raise InvalidEvent(f"state name {show(name)} must be 1-128 printable characters")
        if isinstance(value, Transition):
            return value
        return cls(pair[0], pair[1])  # type: ignore[arg-type]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The JSON body of one event on the wire (format v1)."""

    id: NonEmpty
    type: str
    aggregate_type: str
    aggregate_id: NonEmpty
    version: Version
    schema: Version = 1
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    producer: str
    lamport: Counter = 0
    vclock: dict[str, Counter] = {}
    transition: Transition | None = None
    data: dict[str, Any] = {}
    causation_id: str | None = None
    correlation_id: str | None = None
    metadata: dict[str, Any] = {}

    def __post_init__(self) -> None:
        names = (self.type, self.aggregate_type, self.producer)
        if names in _NAMES_OK:
            return
        for value, pattern, what in (
            (self.type, EVENT_TYPE_RE, "type"),
            (self.aggregate_type, AGGREGATE_TYPE_RE, "aggregate_type"),
            (self.producer, PRODUCER_RE, "producer"),
        ):
            if not pattern.fullmatch(value) and (what, value) != ("aggregate_type", RULES_TYPE):
                raise msgspec.ValidationError(
                    f"Expected `str` matching regex '^{pattern.pattern}$' - at `$.{what}`"
                )
        if len(_NAMES_OK) < _NAMES_OK_MAX:
            _NAMES_OK.add(names)


class Event(Envelope, frozen=True, kw_only=True, gc=False):
    """An event read back from the log: the envelope plus the log's own ``seq`` and time."""

    seq: int = 0
    recorded_at: datetime | None = None

    def envelope_dict(self) -> dict[str, Any]:
        """The envelope as plain JSON-able builtins, plus ``seq`` and ``recorded_at``."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def current(self) -> Event:
        """This event with ``data`` brought to its type's current schema by the registered
        upcasters (``eventstore.upcasting``): itself when there is nothing to do.
        ``UpcastFailed`` (an ``InvalidEvent``) when a step fails or is missing."""
        if self.type not in UPCASTERS.latest:
            return self
        schema, data = UPCASTERS.current(self.type, self.schema, self.data)
        if schema == self.schema and data is self.data:
            return self
        return msgspec.structs.replace(self, schema=schema, data=data)

    def typed(self) -> Any:
        """``data`` (upcast) as the msgspec Struct registered for this type
        (``eventstore.typed_event``); ``InvalidEvent`` if none is or the data does not match."""
        return UPCASTERS.decode(self.type, self.schema, self.data)


class NewEvent(msgspec.Struct, frozen=True, gc=False):
    """What a producer asks to append; the store fills in version, clocks and times.

    Give an explicit ``id`` to make a retry of the same logical change idempotent across
    processes (for example a request id); leave it out and a fresh UUIDv7 is used.
    ``transition`` accepts ``Transition``, ``("From", "To")`` or ``"From:To"``.

    ``data`` and ``metadata`` are JSON objects made of ``dict`` (string keys), ``list``,
    ``str``, ``int`` (64-bit: -2**63 to 2**63-1), finite ``float``, ``bool`` and ``None``,
    nested at most ``MAX_NESTING - 1`` levels. Nothing is converted: what is appended is what
    every reader decodes. Anything else (NaN or infinity, bytes, datetimes, Decimal, sets,
    tuples, non-string keys, strings that are not valid UTF-8, other objects) raises
    ``InvalidEvent`` naming where it is (``data.score: NaN is not JSON ...``), as does an
    argument of the wrong type. Convert such values yourself, e.g. ``dt.isoformat()``.

    ``data`` may also be a msgspec Struct (a typed event, ``eventstore.typed_event``): it is
    stored as its fields' JSON object. ``schema`` left at 0 is the type's current schema as
    the registered upcasters know it (``eventstore.upcasting``), else 1; data of a typed type
    written at its current schema must match its Struct. ``NewEvent.of(struct)`` names the
    type from the registration.
    """

    type: str
    data: dict[str, Any] = {}
    transition: Transition | tuple[str, str] | str | None = msgspec.field(default=None)
    metadata: dict[str, Any] = {}
    id: str | None = None
    schema: int = 0
    causation_id: str | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        validate_event_type(self.type)
        if isinstance(self.data, msgspec.Struct):
            msgspec.structs.force_setattr(self, "data", UPCASTERS.encode(self.data))
        if type(self.schema) is int and self.schema == 0:  # type first: Decimal('sNaN') == 0
            msgspec.structs.force_setattr(self, "schema", UPCASTERS.latest.get(self.type, 1))
        if self.data or type(self.data) is not dict:
            check_json(self.data, "data")
        if self.metadata or type(self.metadata) is not dict:
            check_json(self.metadata, "metadata")
        if self.id is not None:
            if (
                type(self.id) is not str
                or not is_utf8(self.id)
                or not 1 <= len(self.id.encode()) <= 256
            ):
                raise InvalidEvent(
                    "event id must be a non-empty UTF-8 string of at most 256 bytes, "
                    f"got {show(self.id)}"
                )
            if _BAD_ID_CHAR.search(self.id):  # one C scan, not a Python call per character
                raise InvalidEvent(f"event id {self.id!r} must not contain whitespace")
        if type(self.schema) is not int or not 1 <= self.schema <= MAX_INT:
            raise InvalidEvent(
                f"schema must be an integer from 1 to 2**63-1, got {show(self.schema)}"
            )
        if self.type in UPCASTERS.latest and self.schema == UPCASTERS.latest[self.type]:
            UPCASTERS.current(self.type, self.schema, self.data)  # a typed type: data must fit
        if self.causation_id is not None or self.correlation_id is not None:
            for name, value in (
                ("causation_id", self.causation_id),
                ("correlation_id", self.correlation_id),
            ):
                if value is not None and (type(value) is not str or not is_utf8(value)):
                    raise InvalidEvent(f"{name} must be a UTF-8 string or None, got {show(value)}")
        if self.transition is not None:
            msgspec.structs.force_setattr(self, "transition", Transition.parse(self.transition))

    @classmethod
    def of(cls, data: msgspec.Struct, **fields: Any) -> NewEvent:
        """A typed event: ``data``'s registered event type, its fields as ``data`` (the other
        ``NewEvent`` fields as keywords)."""
        event_type = UPCASTERS.type_of(type(data))
        if event_type is None:
            raise InvalidEvent(
                f"{type(data).__name__} is not registered as a typed event (eventstore.typed_event)"
            )
        return cls(event_type, UPCASTERS.encode(data), **fields)

    @property
    def step(self) -> Transition | None:
        """The transition, normalised to ``Transition``."""
        return self.transition if isinstance(self.transition, Transition) else None

    def with_id(self) -> NewEvent:
        """This event with its id filled in (a fresh UUIDv7 when the caller gave none)."""
        if self.id is not None:
            return self
        # A copy, not ``replace``: that would validate every field again, and a fresh UUIDv7
        # needs no check (a third of an append's client time went there). ``__copy__`` is
        # msgspec's own shallow copy, without ``copy.copy``'s dispatch.
        event: NewEvent = self.__copy__()  # type: ignore[attr-defined]
        msgspec.structs.force_setattr(event, "id", uuid7())
        return event


class AppendResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where an append landed: stream sequences, the aggregate's version after it, clocks."""

    first_seq: int
    last_seq: int
    version: int
    duplicate: bool
    ids: tuple[str, ...]
    lamport: int
    vclock: dict[str, int]

    @classmethod
    def of(
        cls, first_seq: int, last: Envelope, last_seq: int, ids: tuple[str, ...], duplicate: bool
    ) -> AppendResult:
        """The result of an append whose last event is ``last``, stored at ``last_seq``."""
        return cls(
            first_seq=first_seq,
            last_seq=last_seq,
            version=last.version,
            duplicate=duplicate,
            ids=ids,
            lamport=last.lamport,
            vclock=dict(last.vclock),
        )


# Names that passed ``validate_aggregate_type`` / ``validate_event_type``: a set lookup, not
# a regex, on every append (bounded, like ``_NAMES_OK``).
_AGG_TYPES_OK: set[str] = set()
_EVENT_TYPES_OK: set[str] = set()


def validate_aggregate_type(value: str) -> str:
    if type(value) is str and value in _AGG_TYPES_OK:
        return value
    if not isinstance(value, str) or not AGGREGATE_TYPE_RE.fullmatch(value):
        raise InvalidEvent(
            f"aggregate type {value!r} is invalid: it must match [a-z][a-z0-9_-]* "
            "(at most 64 characters)"
        )
    if type(value) is str and len(_AGG_TYPES_OK) < _NAMES_OK_MAX:
        _AGG_TYPES_OK.add(value)
    return value


def validate_event_type(value: str) -> str:
    if type(value) is str and value in _EVENT_TYPES_OK:
        return value
    if not isinstance(value, str) or not EVENT_TYPE_RE.fullmatch(value):
        raise InvalidEvent(
            f"event type {value!r} is invalid: it must start with a letter and hold only "
            "letters, digits and _ . : - (at most 128 characters)"
        )
    if type(value) is str and len(_EVENT_TYPES_OK) < _NAMES_OK_MAX:
        _EVENT_TYPES_OK.add(value)
    return value


def validate_producer(value: str) -> str:
    if not isinstance(value, str) or not PRODUCER_RE.fullmatch(value):
        raise InvalidEvent(
            f"producer name {value!r} is invalid: use letters, digits, _ . - "
            "(at most 128 characters, not starting with . or -)"
        )
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_envelope(envelope: Envelope) -> bytes:
    """Serialise an envelope to its wire body."""
    try:
        body = _encoder.encode(envelope)
    except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
        raise InvalidEvent(f"event {envelope.id} cannot be encoded as JSON: {exc}") from exc
    if nesting_exceeds(body):
        raise InvalidEvent(f"event {envelope.id} is {TOO_DEEP}")
    return body


def decode_event(body: bytes, *, seq: int = 0, recorded_at: datetime | None = None) -> Event:
    """Parse and validate a wire body; the log's ``seq`` and time replace any in the body."""
    if nesting_exceeds(body):
        raise InvalidEvent(f"malformed event at seq {seq}: {TOO_DEEP}")
    try:
        event = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
        raise InvalidEvent(f"malformed event at seq {seq}: {exc}") from exc
    return msgspec.structs.replace(event, seq=seq, recorded_at=recorded_at)
