"""Lamport and vector clocks: the partial causal order beside the log's total order.

The log (stream sequence) says in which order events were stored; vector clocks say which
events could have known about which. Two events whose clocks are ``CONCURRENT`` were written
without either writer having seen the other: that is what a conflict is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

__all__ = ["OBSERVE_MAX", "LamportClock", "Order", "VectorClock", "observable"]

# The largest clock value a producer takes in from what it reads. Anyone who can publish on the
# events subjects can write a valid event carrying a Lamport time or counter near 2**63-1 (the
# largest any reader decodes); a producer that observed it could never append again. Values
# above this ceiling are left out of what a producer observes (with a warning), which leaves
# 2**62 ticks of headroom: such an event is still folded, it only does not order later ones.
OBSERVE_MAX = 2**62


class Order(enum.Enum):
    """How two vector clocks relate."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def observable(entries: Mapping[str, int]) -> dict[str, int]:
    """``entries`` without the counters above ``OBSERVE_MAX`` (see there)."""
    return {k: v for k, v in entries.items() if v <= OBSERVE_MAX}


class LamportClock:
    """A scalar logical clock: ``tick`` on every local event, ``observe`` every event read."""

    __slots__ = ("time",)

    def __init__(self, time: int = 0) -> None:
        if time < 0:
            raise ValueError("Lamport time cannot be negative")
        self.time = time

    def tick(self) -> int:
        self.time += 1
        return self.time

    def observe(self, other: int) -> int:
        """Move past a time seen on another event (without ticking)."""
        if other > self.time:
            self.time = other
        return self.time

    def __repr__(self) -> str:
        return f"LamportClock({self.time})"


class VectorClock:
    """An immutable vector clock ``{producer: counter}``; missing entries count as 0."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, int] | None = None) -> None:
        clean: dict[str, int] = {}
        for key, value in (entries or {}).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"vector clock entry {key!r} must be a non-negative integer")
            if value:
                clean[key] = value
        self._entries = clean

    @classmethod
    def _trusted(cls, entries: dict[str, int]) -> VectorClock:
        """Wrap entries already known to be positive integers (no copy, no checks)."""
        clock = cls.__new__(cls)
        clock._entries = entries
        return clock

    @classmethod
    def trusted(cls, entries: dict[str, int]) -> VectorClock:
        """Wrap ``entries`` (positive counters, never changed afterwards by anyone) without a
        copy or a check: the write path's clock per event (``Pending.encode``)."""
        return cls._trusted(entries)

    @property
    def entries(self) -> Mapping[str, int]:
        """The entries themselves, read-only by contract (no copy; ``to_dict`` copies)."""
        return self._entries

    def increment(self, producer: str, to: int | None = None) -> VectorClock:
        """This clock with ``producer``'s entry advanced by one (or set to ``to`` if larger)."""
        entries = dict(self._entries)
        current = entries.get(producer, 0)
        entries[producer] = current + 1 if to is None else max(current + 1, to)
        return VectorClock._trusted(entries)

    def merge(self, *others: VectorClock | Mapping[str, int]) -> VectorClock:
        """The least clock that dominates this one and every ``other`` (entry-wise max)."""
        if not any(others):
            return self
        entries = dict(self._entries)
        for other in others:
            if isinstance(other, VectorClock):
                items: Mapping[str, int] = other._entries
            else:
                items = VectorClock(other)._entries  # validates untrusted input
            for key, value in items.items():
                if value > entries.get(key, 0):
                    entries[key] = value
        return VectorClock._trusted(entries)

    def compare(self, other: VectorClock | Mapping[str, int]) -> Order:
        """``BEFORE`` if self happened before other, ``AFTER``, ``EQUAL`` or ``CONCURRENT``."""
        theirs = other._entries if isinstance(other, VectorClock) else dict(other)
        less = greater = False
        for key in self._entries.keys() | theirs.keys():
            a, b = self._entries.get(key, 0), theirs.get(key, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
            if less and greater:
                return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def concurrent_with(self, other: VectorClock | Mapping[str, int]) -> bool:
        return self.compare(other) is Order.CONCURRENT

    def get(self, producer: str) -> int:
        return self._entries.get(producer, 0)

    def to_dict(self) -> dict[str, int]:
        return dict(self._entries)

    @classmethod
    def merged(cls, clocks: Iterable[VectorClock | Mapping[str, int]]) -> VectorClock:
        return cls().merge(*clocks)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VectorClock):
            return self._entries == other._entries
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __le__(self, other: VectorClock) -> bool:
        return self.compare(other) in (Order.BEFORE, Order.EQUAL)

    def __lt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.BEFORE

    def __repr__(self) -> str:
        return f"VectorClock({self._entries!r})"
