"""Snapshots: an aggregate's full fold position saved now and then, so recovery stays short.

Recovering any state is the nearest snapshot at or before the target plus the events after it,
so a snapshot every N versions bounds a replay to N-1 events whatever the history's length.
A snapshot is taken when an aggregate reaches a multiple of ``every`` versions, and every
``interval`` seconds for each aggregate that changed since its last one (an aggregate that
moves slowly still gets recent snapshots). Only the last ``keep`` of an aggregate are kept.

Each snapshot records its version, stream sequence, recorded time and the projection's code
version; snapshots of another code version are never used (the fold they hold is not the
current code's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventstore.errors import ConfigError
from projections.db import STATE_COLUMNS, ProjectionDB, StateCodec
from projections.fold import AggregateState
from projections.times import to_us

__all__ = [
    "SnapshotInfo",
    "SnapshotPolicy",
    "known_version_after",
    "nearest_snapshot",
    "snapshot_row",
]

INSERT_SQL = (
    "INSERT OR REPLACE INTO snapshots (projection, aggregate_type, aggregate_id, version, seq, "
    "code_version, state, vclock, lamport, recorded_us, resume, base, taken_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Deletes all but the newest ``keep`` snapshots of one aggregate.
PRUNE_SQL = (
    "DELETE FROM snapshots WHERE projection = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 "
    "AND version <= (SELECT version FROM snapshots WHERE projection = ?1 AND "
    "aggregate_type = ?2 AND aggregate_id = ?3 ORDER BY version DESC LIMIT 1 OFFSET ?4)"
)

# The periodic snapshot, in SQL: every aggregate changed since its last snapshot.
PERIODIC_SQL = (
    "INSERT OR REPLACE INTO snapshots (projection, aggregate_type, aggregate_id, version, seq, "
    "code_version, state, vclock, lamport, recorded_us, resume, base, taken_us) "
    "SELECT projection, aggregate_type, aggregate_id, version, seq, ?2, state, vclock, lamport, "
    "recorded_us, resume, base, ?3 FROM states WHERE projection = ?1 AND version > snapshot_version"
)
PERIODIC_PRUNE_SQL = (
    "DELETE FROM snapshots WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number() OVER "
    "(PARTITION BY aggregate_type, aggregate_id ORDER BY version DESC) AS n FROM snapshots "
    "WHERE projection = ?1) WHERE n > ?2)"
)
PERIODIC_MARK_SQL = (
    "UPDATE states SET snapshot_version = version WHERE projection = ?1 "
    "AND version > snapshot_version"
)


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


def snapshot_row(
    codec: StateCodec, agg: AggregateState, code_version: str, taken_us: int
) -> tuple[Any, ...]:
    """A snapshots row for ``agg`` as it is now (encoded at once: the fold goes on)."""
    row = codec.row(agg)
    # states row: projection, type, id, version, seq, state, vclock, lamport, rec, resume, base, sv
    return (*row[:5], code_version, *row[5:11], taken_us)


class SnapshotInfo(msgspec.Struct, frozen=True):
    """Where a snapshot sits in an aggregate's history."""

    version: int
    seq: int
    recorded_at: datetime | None
    code_version: str


async def nearest_snapshot(
    db: ProjectionDB,
    codec: StateCodec,
    aggregate_type: str,
    aggregate_id: str,
    *,
    version: int | None = None,
    seq: int | None = None,
    at: datetime | None = None,
) -> AggregateState | None:
    """The newest snapshot of the current code version at or before the target, if any."""
    where = "projection = ? AND aggregate_type = ? AND aggregate_id = ? AND code_version = ?"
    params: list[Any] = [codec.name, aggregate_type, aggregate_id, codec.projection.version]
    if version is not None:
        where += " AND version <= ?"
        params.append(version)
    if seq is not None:
        where += " AND seq <= ?"
        params.append(seq)
    if at is not None:
        where += " AND recorded_us <= ?"
        params.append(to_us(at))
    cols = STATE_COLUMNS.replace("snapshot_version", "version")
    row = await db.fetchone(
        f"SELECT {cols} FROM snapshots WHERE {where} ORDER BY version DESC LIMIT 1", params
    )
    if row is None:
        return None
    return codec.load(row)


async def known_version_after(
    db: ProjectionDB,
    projection: str,
    aggregate_type: str,
    aggregate_id: str,
    *,
    seq: int | None = None,
    at: datetime | None = None,
) -> int | None:
    """The lowest version the file knows to lie after a target sequence or time: a later
    snapshot (of any code version: versions are the log's) or the current state. None if
    the file knows of nothing past the target.

    Only a hint for how many messages a replay asks the server for at once: a replay to a
    point between two snapshots needs at most the versions between them, where asking for a
    fixed large batch would make the server send far more than is read.
    """
    if seq is None and at is None:
        return None
    column, target = ("seq", seq) if seq is not None else ("recorded_us", to_us(at))
    key = (projection, aggregate_type, aggregate_id, target)
    where = f"projection = ? AND aggregate_type = ? AND aggregate_id = ? AND {column} > ?"
    row = await db.fetchone(
        f"SELECT min(v) FROM (SELECT min(version) AS v FROM snapshots WHERE {where} "
        f"UNION ALL SELECT version FROM states WHERE {where})",
        (*key, *key),
    )
    return None if row is None or row[0] is None else int(row[0])
