"""What a projection is: a pure fold of an aggregate's events into a state.

Subclass ``Projection`` and override ``apply`` (and ``initial`` if the state does not start as
``{}``). The runner, time travel and ``verify`` all fold with the same ``apply``, so it must be
pure: the same state and event always give the same result, and the input state is never
mutated (the state before an event is kept for snapshots and conflict resolution, and a failed
``apply`` must leave it as it was).

A projection may keep read-model tables of its own: ``schema`` creates them, ``tables`` names
them (emptied when the projection is rebuilt), and ``write`` returns the SQL to run for the
aggregates a batch changed, executed in the batch's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from eventstore import ConfigError, Event
from projections.conflicts import LogOrder, Resolver

__all__ = ["Change", "Projection", "Statement"]

S = TypeVar("S")

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


class Change(NamedTuple, Generic[S]):
    """An aggregate's state after a batch, as handed to ``Projection.write``."""

    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    state: S


class Statement(NamedTuple):
    """One ``executemany`` of a read model: SQL with ``?`` placeholders and its rows."""

    sql: str
    rows: Sequence[Sequence[Any]]


class Projection(Generic[S]):
    """Base class of projections: a name, the aggregate types it follows, a fold.

    ``version`` is the projection's code version: change it whenever ``apply`` changes
    meaning, and the worker rebuilds the projection instead of trusting states and snapshots
    folded by the old code. ``state_type`` is what states decode to from SQLite (a msgspec
    Struct class, or the default: JSON objects as dicts). ``aggregate_types`` empty means all.
    """

    name: str = ""
    version: str = "1"
    aggregate_types: frozenset[str] = frozenset()
    state_type: Any = dict[str, Any]
    resolver: Resolver = LogOrder()
    schema: Sequence[str] = ()
    tables: Sequence[str] = ()

    def __init__(self, *, resolver: Resolver | None = None) -> None:
        if resolver is not None:
            self.resolver = resolver
        self.validate()

    def validate(self) -> None:
        """Refuse a projection whose name cannot be stored and addressed."""
        if not self.name or not set(self.name) <= _NAME_CHARS or len(self.name) > 64:
            raise ConfigError(
                f"projection {type(self).__name__} needs a name of 1-64 characters from "
                f"a-z 0-9 _ - . (got {self.name!r})"
            )
        if not isinstance(self.resolver, Resolver):
            raise ConfigError(f"projection {self.name}: resolver {self.resolver!r} is not one")
        self.version = str(self.version)

    def follows(self, aggregate_type: str) -> bool:
        return not self.aggregate_types or aggregate_type in self.aggregate_types

    def initial(self, aggregate_type: str, aggregate_id: str) -> S:
        """The state of an aggregate before its first event."""
        state: Any = {}
        return state  # type: ignore[no-any-return]

    def apply(self, state: S, event: Event) -> S:
        """The state after ``event``; must not mutate ``state``. Raise to quarantine it."""
        raise NotImplementedError(f"projection {self.name} must implement apply(state, event)")

    def touches(self, event: Event) -> Iterable[str | Sequence[str]] | None:
        """What of the state ``event`` writes, for the conflict rule; ``None`` (the default):
        unknown, so every concurrent pair of events is a conflict.

        Return paths (a top-level key, or a tuple of keys into nested objects): two concurrent
        events then conflict only if a path of one equals or is a prefix of a path of the
        other. Say so only where disjoint writes give the same state in either order, and
        decide from the event alone (it is asked again on every replay)."""
        return None

    def write(self, changes: Sequence[Change[S]]) -> Iterable[Statement]:
        """SQL for the read models, given the aggregates a batch changed (final states)."""
        return ()

    def to_builtins(self, state: S) -> Any:
        """The state as JSON-able builtins (for output and comparisons)."""
        return msgspec.to_builtins(state)

    def __repr__(self) -> str:
        return f"<projection {self.name} v{self.version}>"
