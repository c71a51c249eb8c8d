"""The wire contract of the query service and the change feed: subjects, request and reply
bodies, error codes. Everything is JSON, so any NATS client (nats.js, nats.go, the ``nats``
CLI) can speak it; the Python side is ``consumers.client`` and ``consumers.queryservice``.

Subjects (outside every events stream, whose subjects are ``<prefix>.>``, and never captured
into a log; ``<projection>`` is the projection's name escaped like an aggregate id
(``eventstore.encode_id``: a name without ``.`` is itself)):

* ``_ES.Q.<stream>.<projection>.<op>``: request/reply endpoints of the NATS micro service
  ``eventstore`` (found with ``$SRV.PING`` / ``$SRV.INFO`` / ``$SRV.STATS``; workers of the
  same projection answer as one queue group ``q``). ``op`` is ``state``, ``history``,
  ``list``, ``changes``, ``status`` or ``range`` (one aggregate's states at versions a..b, in
  pages); the request bodies are the ``*Request`` structs.
* ``_ES.CHANGES.<stream>.<projection>.<aggregate_type>.<id token>``: one ``Notification``
  per aggregate a commit changed (``<id token>`` is the events subject's escaped id), so
  ``_ES.CHANGES.EVENTS.entities.agent.>`` follows every agent.
* ``_ES.CHANGES.<stream>.<projection>._beat``: a ``Heartbeat`` every few seconds (``_beat``
  is never an aggregate type: those start with a lowercase letter).

Every reply carries ``checkpoint``: every event up to that stream sequence is reflected in
it. An error reply has micro's headers ``Nats-Service-Error`` (the message) and
``Nats-Service-Error-Code`` (the code) and the body ``{"error": {"code", "message", ...}}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from eventstore import encode_id
from projections import DEFAULT_LIMIT, MAX_LIMIT, HistoryEntry, Scalar, StateRecord

__all__ = [
    "BEAT_TOKEN",
    "CODES",
    "DEFAULT_TIMEOUT",
    "MAX_REQUEST_BYTES",
    "MAX_TIMEOUT",
    "OPS",
    "RANGE_LIMIT",
    "SERVICE_NAME",
    "ChangesRequest",
    "ErrorBody",
    "ErrorReply",
    "Heartbeat",
    "HistoryReply",
    "HistoryRequest",
    "ListRequest",
    "Notification",
    "PageReply",
    "RangeReply",
    "RangeRequest",
    "StateReply",
    "StateRequest",
    "StatusReply",
    "StatusRequest",
    "beat_subject",
    "endpoint_subject",
    "feed_subject",
    "feed_wildcard",
    "projection_token",
]

SERVICE_NAME = "eventstore"
OPS = ("state", "history", "list", "changes", "status", "range")
BEAT_TOKEN = "_beat"
# The error codes a reply can carry.
CODES = ("bad_request", "not_found", "unknown_projection", "timeout", "too_large", "internal")
DEFAULT_TIMEOUT = 5.0  # how long a request with min_seq waits, unless it says
MAX_TIMEOUT = 30.0
MAX_REQUEST_BYTES = 64 * 1024
RANGE_LIMIT = 1000  # states in one range reply at most (and what fits in max_payload)

_ROOT_Q, _ROOT_FEED = "_ES.Q", "_ES.CHANGES"

Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


def projection_token(projection: str) -> str:
    return encode_id(projection)


def endpoint_subject(stream: str, projection: str, op: str) -> str:
    return f"{_ROOT_Q}.{stream}.{projection_token(projection)}.{op}"


def feed_subject(stream: str, projection: str, aggregate_type: str, aggregate_id: str) -> str:
    return f"{_ROOT_FEED}.{stream}.{projection_token(projection)}.{aggregate_type}." + encode_id(
        aggregate_id
    )


def feed_wildcard(stream: str, projection: str, aggregate_type: str | None = None) -> str:
    """What to subscribe to for every change of a projection (or of one aggregate type)."""
    base = f"{_ROOT_FEED}.{stream}.{projection_token(projection)}"
    return f"{base}.{aggregate_type}.*" if aggregate_type else f"{base}.>"


def beat_subject(stream: str, projection: str) -> str:
    return f"{_ROOT_FEED}.{stream}.{projection_token(projection)}.{BEAT_TOKEN}"


# -- requests (unknown fields are refused: a typo is an error, not a default) ---------------


class _Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min_seq: Seq | None = None  # answer only once the projection has applied this seq
    timeout: Timeout | None = None  # how long to wait for min_seq (default 5 s, max 30 s)


class StateRequest(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One aggregate's state now, or at one of ``version`` / ``seq`` / ``at``."""

    aggregate_type: Name
    aggregate_id: Name
    version: Seq | None = None
    seq: Seq | None = None
    at: AwareTime | None = None


class HistoryRequest(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One aggregate's messages from ``from_version``, at most ``limit`` of them."""

    aggregate_type: Name
    aggregate_id: Name
    from_version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] = 1
    limit: Limit = DEFAULT_LIMIT


class ListRequest(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A page of the projection's aggregates, by (type, id)."""

    aggregate_type: Name | None = None
    where: dict[str, Scalar] | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class ChangesRequest(ListRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A page of the aggregates whose current state's seq is above ``since``, by seq."""

    since: Seq = 0


class RangeRequest(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One aggregate's states at versions ``from_version`` to ``to_version`` (default: its
    last), at most ``limit`` of them and as many as fit in the server's max_payload."""

    aggregate_type: Name
    aggregate_id: Name
    from_version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    to_version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=RANGE_LIMIT)] = RANGE_LIMIT


class StatusRequest(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How far the worker answering has folded."""


# -- replies ---------------------------------------------------------------------------------


class StateReply(msgspec.Struct, frozen=True, kw_only=True):
    """An aggregate's state (``snapshot_version`` and ``replayed`` say how a past one was
    recovered; both are null/0 for the state now)."""

    checkpoint: int
    projection: str
    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    state: Any
    vclock: dict[str, int]
    lamport: int
    recorded_at: datetime | None = None
    snapshot_version: int | None = None
    replayed: int = 0
    rules_version: int | None = None  # past states: the rules version in force at its seq
    past: bool = False


class HistoryReply(msgspec.Struct, frozen=True, kw_only=True):
    """Messages of one aggregate and what the fold made of each; ``next_version``: where the
    next page starts (null: this was the end)."""

    checkpoint: int
    projection: str
    aggregate_type: str
    aggregate_id: str
    entries: list[HistoryEntry]
    next_version: int | None = None


class PageReply(msgspec.Struct, frozen=True, kw_only=True):
    """A page of states (``list`` and ``changes``)."""

    checkpoint: int
    items: list[StateRecord]
    next_cursor: str | None = None


class RangeReply(msgspec.Struct, frozen=True, kw_only=True):
    """States of one aggregate, one per version from the request's ``from_version`` on, in
    order; ``next_version``: where the next page starts (null: the range is complete, or the
    aggregate's history ends before ``to_version``)."""

    checkpoint: int
    projection: str
    aggregate_type: str
    aggregate_id: str
    items: list[StateRecord]
    next_version: int | None = None


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    """The answering worker: its projections and checkpoints, the log's head, lag."""

    checkpoint: int
    projection: str
    head: int
    lag: int
    projections: dict[str, int]  # every projection of that worker -> its checkpoint
    stream: str
    db: str
    worker: str  # the micro service instance id
    failed: dict[str, str] = {}  # projection -> error, for projections marked failed
    aggregates: int | None = None  # what the asked projection holds (None: an older worker)
    conflicts: int | None = None
    quarantined: int | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    checkpoint: int | None = None  # how far the projection got (timeouts)
    reason: str | None = None  # a finer kind: "invalid_point" for a point not in the history


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorBody


# -- the change feed -------------------------------------------------------------------------


class Notification(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One aggregate's state after a commit. ``previous_version`` is its version in the
    previous notification (null when unknown: the first after a worker start, which
    re-publishes what a crash may have kept from subscribers); ``previous_version < version -
    1`` means versions were coalesced into one commit: read them with ``state`` at
    ``version``. A state too big for the server's max_payload comes as ``state: null,
    truncated: true``: read it with ``state``.

    ``checkpoint``: the projection's checkpoint after the commit that made this state (never
    past a batch whose notifications failed to go out). A worker publishes a batch's
    notifications in commit order, sorted by aggregate type, and NATS keeps one publisher's
    order, so a subscriber that has received this notification has received every one up to
    ``checkpoint`` of this aggregate (it gets one per batch); of every aggregate of this type
    when ``last_of_type``; of every aggregate when ``last_of_batch``. (Re-published states
    after a worker start carry the checkpoint of that start and neither flag.)"""

    projection: str
    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    state: Any
    previous_version: int | None
    truncated: bool = False
    checkpoint: int | None = None
    last_of_type: bool = False
    last_of_batch: bool = False


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """Every few seconds: every notification up to ``checkpoint`` has been published."""

    projection: str
    checkpoint: int
    stream: str
    worker: str
