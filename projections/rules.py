"""The rules stored with the log, as a fold uses them: which apply to the event in hand.

``InForce`` is a fold's view of a ``RuleBook`` (``eventstore.rules``): the machines and the
resolver in force at the sequence of the event being folded, switched when the fold crosses
the sequence of a rules change (or the book learns a new version). A projection named in the
rules' resolvers gets that resolver from then on; the others keep the one their code gives.
The state before an event (which resolvers other than log order refold with) is kept only
while such a resolver is in force: a conflict whose previous event was folded before that is
resolved by log order, in every reader alike.
"""

from __future__ import annotations

from typing import Any

from eventstore import Machines, RuleBook
from projections.conflicts import (
    LastWriterWins,
    LogOrder,
    Resolver,
    SourcePriority,
    resolver_from_spec,
)
from projections.projection import Projection

__all__ = ["InForce"]

_BUILT_IN = (LogOrder, LastWriterWins, SourcePriority)


class InForce:
    """The machines and resolver one projection's fold uses for the events of ``[lo, hi)``."""

    def __init__(self, book: RuleBook, projection: Projection[Any]) -> None:
        self.book = book
        self.projection = projection
        self._code_resolver = projection.resolver
        self._resolvers: dict[str, Resolver] = {}
        self.lo, self.hi, self.changes = 0, -1, -1
        self.version = 0
        self.machines: Machines | None = None
        self.resolver: Resolver = projection.resolver
        self.history = bool(projection.resolver.needs_history)
        self.plain_resolver = True  # built-in resolvers only order the two events' patches

    def switch(self, seq: int) -> None:
        """Use the rules in force at ``seq``."""
        version, self.lo, self.hi = self.book.span(seq)
        self.changes = self.book.changes
        self.version = version.version if version is not None else 0
        machines = self.book.machines_of(version)
        self.machines = machines if any(True for _ in machines) else None
        spec = version.rules.resolvers.get(self.projection.name) if version else None
        resolver = self._code_resolver
        if spec:
            if spec not in self._resolvers:  # a module:object resolver is imported once
                self._resolvers[spec] = resolver_from_spec(spec)
            resolver = self._resolvers[spec]
        self.resolver = resolver
        self.history = bool(resolver.needs_history)
        self.plain_resolver = type(resolver) in _BUILT_IN
