"""What a projection database records beside states: conflicts and quarantined messages.

A conflict (``projections.conflicts``) is recorded with both events, both clocks and how it was
resolved. A message a projection could not apply is quarantined, never dropped: a worker that
stopped at a bad event would stop every aggregate behind it, one that skipped it silently would
lie. So the message is recorded (sequence, subject, raw body, what was wrong) in the same
transaction as the batch around it, and the worker goes on.

The registry holds each projection of the file (``ProjectionInfo``, ``Position``). These are
the records as read back; ``projections.recorder`` owns their rows and statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import msgspec

__all__ = ["ConflictRecord", "Position", "ProjectionInfo", "QuarantineRecord"]


class ConflictRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded conflict: both events, both clocks, and how it was resolved."""

    projection: str
    aggregate_type: str
    aggregate_id: str
    seq: int
    version: int
    event_id: str
    event_producer: str
    event_lamport: int
    event_vclock: dict[str, int]
    previous_id: str
    previous_seq: int
    previous_producer: str
    previous_lamport: int
    previous_vclock: dict[str, int]
    resolver: str
    winner: str
    recorded_at: datetime | None = None


class QuarantineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One quarantined message of one projection."""

    projection: str
    seq: int
    subject: str
    kind: str
    reason: str
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    version: int | None = None
    event_id: str | None = None
    recorded_at: datetime | None = None
    data: str = ""


class ProjectionInfo(msgspec.Struct, frozen=True):
    """A projection's row in the registry."""

    name: str
    code_version: str
    checkpoint: int
    checkpoint_at: datetime | None
    updated_at: datetime | None


class Position(NamedTuple):
    """Where a projection's fold stands in the file (what a runner resumes from)."""

    checkpoint: int
    checkpoint_us: int | None
    snapshot_us: int | None
    code_version: str
