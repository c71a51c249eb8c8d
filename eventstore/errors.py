"""The one error hierarchy of eventstore.

Every failure that crosses the public API is one of these; errors of nats-py and sqlite3 are
translated at the boundary (``raise VersionConflict(...) from exc``) so that callers never need
to import the driver to handle a failure.

Grouped by how a caller reacts::

    EventStoreError
    ├── Retryable             try the same call again later (with backoff; same event ids)
    │   ├── NotConnected      no server answers at the URL (or the connection was lost for good)
    │   ├── AppendTimeout     an append could not be confirmed before its deadline
    │   └── RequestTimeout    a read, head or stream request got no answer in time
    ├── InvalidEvent          fix the input: malformed event, bad id/type/subject, too large
    │   ├── InvalidTransition state-machine transition not allowed from the current state
    │   └── UpcastFailed      an event's data cannot be brought to its type's current schema
    ├── VersionConflict       read the aggregate again and decide anew
    │   └── BoundaryConflict  something new on a consistency boundary (a subject filter)
    ├── AggregateNotFound     the aggregate has no events (or no state in the projection)
    ├── PermissionDenied      fix the user's permissions: the server refused a subject
    ├── ConfigError           fix a configuration file or option
    ├── StreamMisconfigured   fix the stream: its settings would weaken immutability
    ├── LeaseUnavailable      another holder has the lease: wait longer or try again later
    ├── LeaseLost             the lease is gone: stop, acquire again, re-read before acting
    ├── ServerError           an operator must act: the server refused or failed a request
    │                         for a reason of its own (store full, cannot start, ...)
    └── ProjectionError       a projection database, projection or time-travel query failed
        ├── InvalidPoint      a time-travel point that is malformed or not in the history
        ├── CodeVersionChanged the database holds the projection at another code version
        ├── ForeignDatabase   the projection database was folded from another stream
        ├── DatabaseLocked    another worker (or rebuild) holds the projection database
        ├── RulesMismatch     the database was folded with other rules than the log's
        ├── UnknownProjection no such projection in the database, or no worker serves it
        └── InvalidRequest    a query (filter, limit, cursor, request body) is malformed

Errors of nats-py are translated in one table (``eventstore.jetstream``'s ``translate``);
``sqlite3`` errors at the projections boundary (``projections.db``).
"""

from __future__ import annotations

__all__ = [
    "AggregateNotFound",
    "AppendTimeout",
    "BoundaryConflict",
    "CodeVersionChanged",
    "ConfigError",
    "DatabaseLocked",
    "EventStoreError",
    "ForeignDatabase",
    "InvalidEvent",
    "InvalidPoint",
    "InvalidRequest",
    "InvalidTransition",
    "LeaseLost",
    "LeaseUnavailable",
    "NotConnected",
    "PermissionDenied",
    "ProjectionError",
    "RequestTimeout",
    "Retryable",
    "RulesMismatch",
    "ServerError",
    "StreamMisconfigured",
    "UnknownProjection",
    "UpcastFailed",
    "VersionConflict",
]


class EventStoreError(Exception):
    """Root of every error eventstore raises on purpose."""


class InvalidEvent(EventStoreError):
    """An event, id, type or subject is malformed; nothing was written."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidTransition(InvalidEvent):
    """The aggregate's state machine does not allow this transition from its current state."""

    def __init__(
        self,
        aggregate_type: str,
        aggregate_id: str,
        current: str | None,
        transition: tuple[str, str],
        reason: str,
    ) -> None:
        super().__init__(reason)
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.current = current
        self.transition = transition


class VersionConflict(EventStoreError):
    """Another writer got there first: the aggregate is not at the version the caller expected.

    Read the aggregate again (its state now has version ``actual``) and decide anew.
    """

    def __init__(self, aggregate_type: str, aggregate_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"version conflict on {aggregate_type}/{aggregate_id}: expected version {expected}, "
            f"actual version {actual}; read the aggregate again and retry"
        )
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


class PermissionDenied(EventStoreError):
    """The server's authorization refused this client the subject it tried to use."""

    def __init__(self, subject: str, operation: str, detail: str = "") -> None:
        msg = f"permission denied: this client may not {operation} to {subject!r}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg + "; check the user's permissions in the server configuration")
        self.subject = subject
        self.operation = operation


class Retryable(EventStoreError):
    """The same call may succeed later (a server restarting, a leader election, a slow
    network): retry it with backoff; an append retried with the same event ids is stored once."""


class NotConnected(Retryable):
    """No NATS server answers, or the connection is closed."""

    def __init__(self, url: str, detail: str = "") -> None:
        msg = f"no NATS server at {url}"
        if detail:
            msg += f" ({detail})"
        super().__init__(
            msg + "; start one with `eventstore server` (or `eventstore up`), "
            "or point --url / EVENTSTORE_URL at a running server"
        )
        self.url = url


class StreamMisconfigured(EventStoreError):
    """An existing stream has settings that would make the log mutable or lossy."""

    def __init__(self, stream: str, problems: list[str]) -> None:
        super().__init__(
            f"stream {stream!r} weakens immutability: "
            + "; ".join(problems)
            + ". Create a new stream with `eventstore server` defaults or fix its config"
        )
        self.stream = stream
        self.problems = problems


class AppendTimeout(Retryable):
    """An append was neither confirmed nor refused before its deadline.

    It may or may not be stored: retry with the same event ids, which is always safe.
    """

    def __init__(self, subject: str, timeout: float, detail: str = "") -> None:
        msg = f"append to {subject!r} not confirmed within {timeout:g}s"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg + "; retrying with the same event ids is safe")
        self.subject = subject
        self.timeout = timeout


class RequestTimeout(Retryable):
    """A JetStream request (a read, the head, stream info) got no answer before its deadline."""

    def __init__(
        self,
        what: str,
        timeout: float,
        detail: str = "",
        *,
        projection: str | None = None,
        checkpoint: int | None = None,
    ) -> None:
        if projection is not None:  # the query service: a projection not there yet in time
            msg = f"{what}: {detail}; retry later, or with a longer timeout"
        else:
            msg = f"{what}: no answer from the server within {timeout:g}s"
            if detail:
                msg += f" ({detail})"
            msg += "; retry, or check that the server and JetStream are up"
        super().__init__(msg)
        self.what = what
        self.timeout = timeout
        self.projection = projection  # the query service's timeouts: which projection
        self.checkpoint = checkpoint  # ... and the seq it had applied


class AggregateNotFound(EventStoreError):
    """The aggregate has no events in the stream (or no state in the projection yet)."""

    def __init__(self, aggregate_type: str, aggregate_id: str, detail: str) -> None:
        super().__init__(f"{aggregate_type}/{aggregate_id}: {detail}")
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id


class ConfigError(EventStoreError):
    """A configuration file or option is invalid."""


class ServerError(EventStoreError):
    """The server refused or failed a request for a reason of its own (its store is full or
    cannot be written, the embedded server cannot start): the message says what to do."""


class ProjectionError(EventStoreError):
    """A projection's SQLite store, a projection's code or a query about past state failed.

    The message names the database or aggregate and what to do (rebuild, upgrade, start a
    worker); ``sqlite3`` errors are translated into this one at the projections boundary.
    """


class InvalidPoint(ProjectionError):
    """A time-travel point that is malformed (several of version/seq/at, a naive time) or not
    in the aggregate's history (a version it never reached, a start after the end)."""


class CodeVersionChanged(ProjectionError):
    """The database holds a projection at another code version than the running code."""

    def __init__(self, path: str, projection: str, stored: str, running: str) -> None:
        super().__init__(
            f"projection database {path} now holds {projection} at code version {stored}, "
            f"this process runs version {running}: restart it with that code"
        )
        self.path = path
        self.projection = projection
        self.stored = stored
        self.running = running


class ForeignDatabase(ProjectionError):
    """The projection database was folded from another stream than the one connected to (the
    store was reset under a kept database, or ``--db`` names another store's file).

    Nothing is folded into it: start the worker with ``--reset`` to fold this stream into it
    from the start, or use another ``--db`` for this stream.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"projection database {path} was not folded from this stream: {problem}; start the "
            "worker with --reset to drop its projection data and fold this stream from seq 1, "
            "or use another --db for this stream"
        )
        self.path = path
        self.problem = problem


class DatabaseLocked(ProjectionError):
    """Another process folds into this projection database (one writer per file)."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(
            f"projection database {path} is in use by another {holder}; stop it first, or "
            "give this one another --db (readers such as state and status need no lock)"
        )
        self.path = path
        self.holder = holder


class RulesMismatch(ProjectionError):
    """The projection database was folded with other rules (state machines, resolvers) than
    the ones the log says were in force at its checkpoint: a database folded by an older
    release with a local ``[machines]`` config, or with rules that were changed since.

    Nothing is folded into it or answered from it: ``eventstore rebuild`` folds it again with
    the log's rules (``--reset`` on the worker starts it over from seq 1).
    """

    def __init__(self, path: str, recorded: str, expected: str, checkpoint: int) -> None:
        super().__init__(
            f"projection database {path} was folded with {recorded}, but the rules stored with "
            f"the log in force at its checkpoint (seq {checkpoint}) are {expected}: its states "
            "may mean something else. Run `eventstore rebuild` to fold it again with the log's "
            "rules (or start the worker with --reset)"
        )
        self.path = path
        self.recorded = recorded
        self.expected = expected
        self.checkpoint = checkpoint


# --- upcasting (eventstore.upcasting) -------------------------------------------------------
class UpcastFailed(InvalidEvent):
    """An event's ``data`` cannot be brought to its type's current schema: an upcaster raised
    or returned something that is not a JSON object, a step of the chain is not registered, the
    event is newer than the latest schema this process knows (``kind`` ``upcast``), or the
    current data does not match the type's registered Struct (``kind`` ``typed``).

    Readers skip such an event through ``on_malformed`` and projections quarantine it with this
    ``kind``; register the missing upcaster (import its module in every reading process) or
    fix it, then ``eventstore rebuild``.
    """

    def __init__(self, event_type: str, schema: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.event_type = event_type
        self.schema = schema
        self.kind = kind


# -- the write model ----------------------------------------------------------------------------


class BoundaryConflict(VersionConflict):
    """Something new appeared on a consistency boundary (a set of aggregates, as a subject
    filter) after the sequence the caller decided on: nothing of the transaction was stored.

    Read the aggregates under ``subject`` again (the newest is at stream sequence ``actual``)
    and decide anew. A ``VersionConflict``, so code that retries conflicts retries this too.
    """

    def __init__(self, subject: str, since_seq: int, actual: int) -> None:
        EventStoreError.__init__(
            self,
            f"consistency conflict on {subject}: nothing new was expected after seq "
            f"{since_seq}, but seq {actual} is newer; read those aggregates again and retry",
        )
        self.aggregate_type = ""
        self.aggregate_id = ""
        self.subject = subject
        self.expected = since_seq
        self.actual = actual


# -- serving projections (query service, listing) ---------------------------------------------


class UnknownProjection(ProjectionError):
    """The projection asked for is not in the database, or no worker serves it on the stream
    (the query service's ``unknown_projection`` reply, or nobody answering at all)."""

    def __init__(self, projection: str, message: str) -> None:
        super().__init__(message)
        self.projection = projection


class InvalidRequest(ProjectionError):
    """A query is malformed (a filter, a limit, a cursor, a request body the query service
    refused as ``bad_request`` or ``too_large``): fix the request; retrying cannot help."""

    def __init__(self, message: str, *, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


# -- leases (eventstore.leases) ----------------------------------------------------------------


class LeaseUnavailable(EventStoreError):
    """Another holder has the lease and did not release it (or die) within the wait: try again
    later, or wait longer (``wait=``); ``holder`` and ``expires_at`` say who and until when."""

    def __init__(self, name: str, holder: str, expires_at: object, detail: str = "") -> None:
        until = f" until {expires_at}" if expires_at is not None else ""
        super().__init__(
            f"lease {name!r} is not available: {detail or 'held'}{until}; wait for it "
            "(--wait / wait=) or try again later"
        )
        self.name = name
        self.holder = holder
        self.expires_at = expires_at


class LeaseLost(EventStoreError):
    """This holder's lease is gone (expired, taken over, or never this token's): stop acting
    under it, acquire it again and read the state anew before doing anything."""

    def __init__(self, name: str, token: int, detail: str = "") -> None:
        super().__init__(
            f"lease {name!r} with token {token} is lost"
            + (f" ({detail})" if detail else "")
            + "; acquire it again and re-read the state before acting"
        )
        self.name = name
        self.token = token
