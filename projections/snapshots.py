"""Snapshots: an aggregate's full fold position saved now and then, so recovery stays short.

Recovering any state is the nearest snapshot at or before the target plus the events after it,
so a snapshot every N versions bounds a replay to N-1 events whatever the history's length.
A snapshot is taken when an aggregate reaches a multiple of ``every`` versions, and every
``interval`` seconds for each aggregate that changed since its last one (an aggregate that
moves slowly still gets recent snapshots). Only the last ``keep`` of an aggregate are kept.

Each snapshot records its version, stream sequence, recorded time and the projection's code
version; snapshots of another code version are never used (the fold they hold is not the
current code's). Their rows and statements are ``projections.recorder``'s (``nearest_snapshot``,
``known_version_after``, ``commit_batch``).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from eventstore import ConfigError

__all__ = ["SnapshotInfo", "SnapshotPolicy"]


class SnapshotPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When to snapshot: every ``every`` versions, every ``interval`` seconds, keep ``keep``."""

    every: int = 100
    keep: int = 5
    interval: float = 300.0  # 0 disables the periodic snapshots

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError("snapshot_every must be at least 1")
        if self.keep < 1:
            raise ConfigError("snapshot_keep must be at least 1")
        if self.interval < 0:
            raise ConfigError("snapshot_interval must be >= 0 seconds (0: off)")

    def due(self, version: int) -> bool:
        return version % self.every == 0


class SnapshotInfo(msgspec.Struct, frozen=True):
    """Where a snapshot sits in an aggregate's history."""

    version: int
    seq: int
    recorded_at: datetime | None
    code_version: str
