"""What time travel is asked and answers: a point of an aggregate's history, a past state,
a history entry, a diff (``projections.timetravel`` computes them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventstore import InvalidPoint, check_optional_int, check_time
from projections.mergepatch import PathChange
from projections.times import parse_time

__all__ = ["Diff", "HistoryEntry", "PastState", "Point"]


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """A point in one aggregate's history: a version, a stream sequence, a time, or the end."""

    version: int | None = None
    seq: int | None = None
    at: datetime | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.version, self.seq, self.at))
        if given > 1:
            raise InvalidPoint("give one of version, seq or at, not several")
        # A version is 0 (before the first event) or more, a stream sequence 0 or more; both
        # fit in SQLite's INTEGER.
        check_optional_int(self.version, "a version", error=InvalidPoint)
        check_optional_int(self.seq, "a stream sequence", error=InvalidPoint)
        if self.at is not None:
            check_time(self.at, "the time")

    @property
    def latest(self) -> bool:
        return self.version is None and self.seq is None and self.at is None

    @classmethod
    def parse(cls, text: str) -> Point:
        """``version:N`` (or ``v:N`` or ``N``), ``seq:S``, ``at:TIME`` (or an ISO time), ``now``."""
        value = text.strip()
        kind, sep, rest = value.partition(":")
        try:
            if value.lower() in ("now", "head", "latest", "end"):
                return cls()
            if sep and kind in ("version", "v"):
                return cls(version=int(rest))
            if sep and kind in ("seq", "s"):
                return cls(seq=int(rest))
            if sep and kind in ("at", "time", "t"):
                return cls(at=parse_time(rest))
            if value.isdigit():
                return cls(version=int(value))
            return cls(at=parse_time(value))
        except ValueError as exc:
            raise InvalidPoint(
                f"point {text!r} not understood: use version:N, seq:S, at:2025-01-13T10:30:00Z "
                "or now"
            ) from exc

    def describe(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        if self.seq is not None:
            return f"seq {self.seq}"
        if self.at is not None:
            return f"time {self.at.isoformat()}"
        return "now"


class PastState(msgspec.Struct, kw_only=True):
    """An aggregate's state at a point, and how it was recovered."""

    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    state: Any
    vclock: dict[str, int]
    lamport: int
    recorded_at: datetime | None = None
    snapshot_version: int | None = None
    snapshot_seq: int | None = None
    replayed: int = 0
    rules_version: int | None = None  # in force at ``seq`` (None: not known, state now)


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One message of an aggregate's history and what the fold made of it."""

    seq: int
    version: int | None
    type: str | None
    producer: str | None
    recorded_at: datetime | None
    transition: list[str] | None = None
    data: Any = None
    outcome: str = "applied"  # applied | conflict | quarantined
    detail: str | None = None


class Diff(msgspec.Struct, kw_only=True):
    """Two points of one aggregate, what changed between them, and the messages in between."""

    aggregate_type: str
    aggregate_id: str
    before: PastState
    after: PastState
    changes: list[PathChange]
    patch: Any
    events: list[HistoryEntry]
