"""Snapshots: an aggregate's full fold position saved now and then, so recovery stays short.

Recovering any state is the nearest snapshot at or before the target plus the events after it.
A snapshot is taken when an aggregate reaches a multiple of ``every`` versions, and every
``interval`` seconds for each aggregate that changed since its last one (an aggregate that
moves slowly still gets recent snapshots).

Retention bounds the replay of ANY point, not only of recent ones: the newest ``keep`` of an
aggregate are kept as they are (periodic ones included), and of the older ones those at a
multiple of ``spacing`` versions (default: ``every``, so every regular snapshot is kept and
only periodic ones are thinned). Since ``spacing`` is a multiple of ``every``, each stretch of
``spacing`` versions holds one, and no point is more than ``spacing - 1`` versions past a kept
snapshot. ``spacing = 0`` keeps only the newest ``keep`` (older points replay from version 1).

Each snapshot records its version, stream sequence, recorded time and the projection's code
version; snapshots of another code version are never used (the fold they hold is not the
current code's). Their statements are here; ``projections.recorder`` runs them in the batch's
transaction and reads them through ``SnapshotRows`` (``nearest_snapshot``,
``known_version_after``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventstore import ConfigError
from projections.db import ProjectionDB
from projections.fold import AggregateState
from projections.rows import StateCodec
from projections.times import to_us

__all__ = ["SnapshotInfo", "SnapshotPolicy", "SnapshotRows"]

# The columns ``StateCodec.load`` reads (a snapshot's version stands in for snapshot_version).
STATE_COLUMNS = (
    "aggregate_type, aggregate_id, version, seq, state, vclock, lamport, recorded_us, resume, "
    "base, snapshot_version"
)
SNAPSHOT_COLUMNS = STATE_COLUMNS.replace("snapshot_version", "version")
# The newest snapshot at or before a point, ordered by the point's own column so that its index
# finds it in one step (by version, a point by seq or time sorted every earlier snapshot:
# 0.2-0.4 ms at 1,000 snapshots). An aggregate's seqs grow with its versions, and so do its
# recorded times (ties: the higher version, as by version).
SNAPSHOT_ORDER = {
    "version": "version DESC",
    "seq": "seq DESC",
    "recorded_us": "recorded_us DESC, version DESC",
    "": "version DESC",
}

SNAPSHOT_SQL = (
    "INSERT OR REPLACE INTO snapshots (projection, aggregate_type, aggregate_id, version, seq, "
    "code_version, state, vclock, lamport, recorded_us, resume, base, taken_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Of one aggregate, deletes the snapshots older than the newest ``?4`` but those at a multiple
# of ``?5`` versions (0: none of them).
PRUNE_SQL = (
    "DELETE FROM snapshots WHERE projection = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3 "
    "AND version <= (SELECT version FROM snapshots WHERE projection = ?1 AND "
    "aggregate_type = ?2 AND aggregate_id = ?3 ORDER BY version DESC LIMIT 1 OFFSET ?4) "
    "AND (?5 = 0 OR version % ?5 != 0)"
)
# The periodic snapshot, in SQL: every aggregate changed since its last snapshot.
PERIODIC_SQL = (
    "INSERT OR REPLACE INTO snapshots (projection, aggregate_type, aggregate_id, version, seq, "
    "code_version, state, vclock, lamport, recorded_us, resume, base, taken_us) "
    "SELECT projection, aggregate_type, aggregate_id, version, seq, ?2, state, vclock, lamport, "
    "recorded_us, resume, base, ?3 FROM states WHERE projection = ?1 AND version > snapshot_version"
)
# PRUNE_SQL for the aggregates PERIODIC_SQL snapshotted (run before PERIODIC_MARK_SQL).
PERIODIC_PRUNE_SQL = (
    "DELETE FROM snapshots WHERE rowid IN (SELECT rowid FROM (SELECT rowid, version, "
    "row_number() OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY version DESC) AS n "
    "FROM snapshots WHERE projection = ?1 AND (aggregate_type, aggregate_id) IN (SELECT "
    "aggregate_type, aggregate_id FROM states WHERE projection = ?1 AND "
    "version > snapshot_version)) WHERE n > ?2 AND (?3 = 0 OR version % ?3 != 0))"
)
PERIODIC_MARK_SQL = (
    "UPDATE states SET snapshot_version = version WHERE projection = ?1 "
    "AND version > snapshot_version"
)
SNAPSHOT_TIME_SQL = "UPDATE projections SET snapshot_us = ? WHERE name = ?"


class SnapshotPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When to snapshot and what to keep: every ``every`` versions and every ``interval``
    seconds; the newest ``keep``, and older ones every ``spacing`` versions (see the module
    doc; None: ``every``, 0: none)."""

    every: int = 100
    keep: int = 5
    interval: float = 300.0  # 0 disables the periodic snapshots
    spacing: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError("snapshot_every must be at least 1")
        if self.keep < 1:
            raise ConfigError("snapshot_keep must be at least 1")
        if self.interval < 0:
            raise ConfigError("snapshot_interval must be >= 0 seconds (0: off)")
        if self.spacing is not None and (self.spacing < 0 or self.spacing % self.every):
            raise ConfigError(
                f"snapshot_spacing must be a multiple of snapshot_every ({self.every}), or 0 "
                "to keep only the newest snapshot_keep"
            )

    @property
    def thin(self) -> int:
        """The spacing of the older snapshots kept (0: none kept)."""
        return self.every if self.spacing is None else self.spacing

    def due(self, version: int) -> bool:
        return version % self.every == 0


class SnapshotInfo(msgspec.Struct, frozen=True):
    """Where a snapshot sits in an aggregate's history."""

    version: int
    seq: int
    recorded_at: datetime | None
    code_version: str


class SnapshotRows:
    """The reads of the snapshots table (the ``Recorder`` of a database is one)."""

    db: ProjectionDB

    async def nearest_snapshot(
        self,
        codec: StateCodec,
        aggregate_type: str,
        aggregate_id: str,
        *,
        version: int | None = None,
        seq: int | None = None,
        at: datetime | None = None,
    ) -> AggregateState | None:
        """The newest snapshot of the current code version at or before the target, if any."""
        where, params = _where(codec, aggregate_type, aggregate_id, version, seq, at)
        only = {"version": version, "seq": seq, "recorded_us": at}
        given = [column for column, value in only.items() if value is not None]
        order = SNAPSHOT_ORDER[given[0] if len(given) == 1 else ""]
        row = await self.db.fetchone(
            f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {where} ORDER BY {order} LIMIT 1",
            params,
        )
        return None if row is None else codec.load(row)

    async def known_version_after(
        self,
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
        point between two snapshots needs at most the versions between them, where asking for
        a fixed large batch would make the server send far more than is read.
        """
        if seq is None and at is None:
            return None
        column, target = ("seq", seq) if seq is not None else ("recorded_us", to_us(at))
        key = (projection, aggregate_type, aggregate_id, target)
        where = f"projection = ? AND aggregate_type = ? AND aggregate_id = ? AND {column} > ?"
        row = await self.db.fetchone(  # the first later snapshot by the column's index
            f"SELECT min(v) FROM (SELECT * FROM (SELECT version AS v FROM snapshots WHERE "
            f"{where} ORDER BY {column} LIMIT 1) UNION ALL SELECT version FROM states WHERE "
            f"{where})",
            (*key, *key),
        )
        return None if row is None or row[0] is None else int(row[0])


def _where(
    codec: StateCodec,
    aggregate_type: str,
    aggregate_id: str,
    version: int | None,
    seq: int | None,
    at: datetime | None,
) -> tuple[str, list[Any]]:
    """WHERE clause and parameters of an aggregate's snapshots of the current code version at
    or before a target (``nearest_snapshot``; ``projections.eventcopy`` has its own)."""
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
    return where, params
