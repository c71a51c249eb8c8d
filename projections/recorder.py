"""The recorder: every statement on the rows of a projection database, and the batch commit.

``projections.db`` opens the file (pragmas, migrations, the lock, the open modes); the recorder
owns what is read and written in it: the registry of projections and their checkpoints, states,
snapshots, conflicts, quarantined messages, and the read models a projection keeps (its
``schema`` DDL; the ``Statement``\\ s its ``write`` returns are run by
``projections.readmodels``). The ``meta`` table (the file's generation, written by its
migrations, its stream, failure marks) is ``ProjectionDB.meta``'s.

``Recorder.commit_batch`` writes what one batch of the log produced for every projection of a
runner (states, snapshots and their pruning, conflicts, quarantined messages, read models,
periodic snapshots and the new checkpoints) in ONE transaction, after checking that the file is
still the one the runner read (its generation and checkpoints): a batch is committed with its
checkpoint or not at all (``eventsourcing``'s recorders work the same way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from eventstore import get_logger
from projections.db import ProjectionDB
from projections.failures import ProjectionFailure, record_failures
from projections.fold import AggregateState
from projections.projection import Projection
from projections.readmodels import write_read_models
from projections.records import ConflictRecord, Position, ProjectionInfo, QuarantineRecord
from projections.rows import SlotBatch, StateCodec, conflict_record, quarantine_record
from projections.schema import TABLES
from projections.times import from_us, to_us

__all__ = ["FileChanged", "Recorder", "list_conflicts", "list_quarantine"]

log = get_logger("projections.runner")

Key = tuple[str, str]

# The columns ``StateCodec.load`` reads (a snapshot's version stands in for snapshot_version).
STATE_COLUMNS = (
    "aggregate_type, aggregate_id, version, seq, state, vclock, lamport, recorded_us, resume, "
    "base, snapshot_version"
)
SNAPSHOT_COLUMNS = STATE_COLUMNS.replace("snapshot_version", "version")

UPSERT_STATE_SQL = (
    "INSERT INTO states (projection, aggregate_type, aggregate_id, version, seq, state, vclock, "
    "lamport, recorded_us, resume, base, snapshot_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?) ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET "
    "version = excluded.version, seq = excluded.seq, state = excluded.state, "
    "vclock = excluded.vclock, lamport = excluded.lamport, recorded_us = excluded.recorded_us, "
    "resume = excluded.resume, base = excluded.base, snapshot_version = excluded.snapshot_version"
)
CHECKPOINT_SQL = (
    "UPDATE projections SET checkpoint = ?, checkpoint_us = ?, updated_us = ? WHERE name = ?"
)
GUARD_SQL = (
    "SELECT name, checkpoint, code_version, (SELECT value FROM meta WHERE key = 'generation') "
    "FROM projections"
)
SNAPSHOT_SQL = (
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
SNAPSHOT_TIME_SQL = "UPDATE projections SET snapshot_us = ? WHERE name = ?"
# The columns of ``rows.conflict_row`` and ``rows.conflict_record``.
CONFLICT_COLUMNS = (
    "projection, aggregate_type, aggregate_id, seq, version, event_id, event_producer, "
    "event_lamport, event_vclock, previous_id, previous_seq, previous_producer, "
    "previous_lamport, previous_vclock, resolver, winner, recorded_us"
)
CONFLICT_SQL = (
    f"INSERT INTO conflicts ({CONFLICT_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
QUARANTINE_SQL = (
    "INSERT INTO quarantine (projection, seq, subject, aggregate_type, aggregate_id, version, "
    "event_id, kind, reason, data, recorded_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The columns of ``rows.quarantine_record``.
QUARANTINE_COLUMNS = (
    "projection, seq, subject, kind, reason, aggregate_type, aggregate_id, version, event_id, "
    "recorded_us, data"
)


class FileChanged(Exception):
    """The file is not the one the runner read (swapped by a rebuild, or written by another
    worker): nothing was committed; reload it and resume from its checkpoints."""


def _filter(
    projection: str, aggregate_type: str | None, aggregate_id: str | None
) -> tuple[str, list[Any]]:
    """WHERE clause and parameters selecting a projection's rows, optionally of one aggregate
    type or one aggregate (the conflicts, quarantine and states tables share these columns)."""
    where = "projection = ?"
    params: list[Any] = [projection]
    if aggregate_type is not None:
        where += " AND aggregate_type = ?"
        params.append(aggregate_type)
    if aggregate_id is not None:
        where += " AND aggregate_id = ?"
        params.append(aggregate_id)
    return where, params


class Recorder:
    """The statements of one ``ProjectionDB`` (see the module doc)."""

    def __init__(self, db: ProjectionDB) -> None:
        self.db = db

    async def projections(self) -> list[ProjectionInfo]:
        rows = await self.db.fetchall(
            "SELECT name, code_version, checkpoint, checkpoint_us, updated_us FROM projections "
            "ORDER BY name"
        )
        return [ProjectionInfo(r[0], r[1], r[2], from_us(r[3]), from_us(r[4])) for r in rows]

    async def projection(self, name: str) -> ProjectionInfo | None:
        for info in await self.projections():
            if info.name == name:
                return info
        return None

    async def positions(self) -> dict[str, Position]:
        rows = await self.db.fetchall(
            "SELECT name, checkpoint, checkpoint_us, snapshot_us, code_version FROM projections"
        )
        return {r[0]: Position(int(r[1]), r[2], r[3], r[4]) for r in rows}

    async def max_checkpoint(self) -> int:
        row = await self.db.fetchone("SELECT max(checkpoint) FROM projections")
        return int(row[0] or 0) if row else 0

    async def create_read_models(self, projection: Projection[Any]) -> None:
        """Run the projection's ``schema`` DDL (inside the caller's transaction)."""
        for ddl in projection.schema:
            await self.db.execute(ddl)

    async def register(self, projection: Projection[Any], now_us: int | None) -> None:
        """Register a new projection at checkpoint 0 (inside the caller's transaction)."""
        await self.db.execute(
            "INSERT INTO projections (name, code_version, checkpoint, snapshot_us) "
            "VALUES (?, ?, 0, ?)",
            (projection.name, projection.version, now_us),
        )

    async def reset(self, projection: Projection[Any], now_us: int | None = None) -> None:
        """Forget everything a projection folded (inside the caller's transaction)."""
        for table in TABLES:
            await self.db.execute(f"DELETE FROM {table} WHERE projection = ?", (projection.name,))
        for table in projection.tables:
            await self.db.execute(f'DELETE FROM "{table}"')
        await self.db.execute(
            "INSERT OR REPLACE INTO projections (name, code_version, checkpoint) VALUES (?, ?, 0)",
            (projection.name, projection.version),
        )
        if now_us is not None:
            await self.db.execute(SNAPSHOT_TIME_SQL, (now_us, projection.name))

    async def count(self, table: str, projection: str) -> int:
        """How many rows of ``projection`` one of ``projections.schema.TABLES`` holds."""
        if table not in TABLES:
            raise ValueError(f"not a table of projection rows: {table!r}")
        row = await self.db.fetchone(
            f"SELECT count(*) FROM {table} WHERE projection = ?", (projection,)
        )
        return int(row[0]) if row else 0

    # -- states and snapshots --------------------------------------------------------------

    async def load_states(
        self, codec: StateCodec, keys: Iterable[Key]
    ) -> dict[Key, AggregateState]:
        """The stored states of these aggregates (absent ones are left out)."""
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        out: dict[Key, AggregateState] = {}
        for agg_type, ids in by_type.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = await self.db.fetchall(
                    f"SELECT {STATE_COLUMNS} FROM states WHERE projection = ? AND "
                    f"aggregate_type = ? AND aggregate_id IN ({marks})",
                    (codec.name, agg_type, *chunk),
                )
                for row in rows:
                    agg = codec.load(row)
                    out[agg.key] = agg
        return out

    async def state(
        self, codec: StateCodec, aggregate_type: str, aggregate_id: str
    ) -> AggregateState | None:
        found = await self.load_states(codec, [(aggregate_type, aggregate_id)])
        return found.get((aggregate_type, aggregate_id))

    async def state_rows(self, projection: str) -> list[Any]:
        """Every states row of a projection, as ``STATE_COLUMNS`` (``StateCodec.load``)."""
        return await self.db.fetchall(
            f"SELECT {STATE_COLUMNS} FROM states WHERE projection = ?", (projection,)
        )

    async def snapshot_rows(self, projection: str, code_version: str) -> list[Any]:
        """Every snapshot row of a projection at one code version (``StateCodec.load``)."""
        return await self.db.fetchall(
            f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE projection = ? AND code_version = ?",
            (projection, code_version),
        )

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
        row = await self.db.fetchone(
            f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {where} ORDER BY version DESC LIMIT 1",
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
        row = await self.db.fetchone(
            f"SELECT min(v) FROM (SELECT min(version) AS v FROM snapshots WHERE {where} "
            f"UNION ALL SELECT version FROM states WHERE {where})",
            (*key, *key),
        )
        return None if row is None or row[0] is None else int(row[0])

    # -- conflicts and quarantine ----------------------------------------------------------

    async def conflicts(
        self, projection: str, aggregate_type: str | None = None, aggregate_id: str | None = None
    ) -> list[ConflictRecord]:
        """Recorded conflicts of a projection (optionally of one type or aggregate), by seq."""
        where, params = _filter(projection, aggregate_type, aggregate_id)
        rows = await self.db.fetchall(
            f"SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE {where} ORDER BY seq", params
        )
        return [conflict_record(r) for r in rows]

    async def conflict_winners(self, projection: str) -> dict[int, str]:
        """``{seq: winner}`` of a projection's recorded conflicts."""
        rows = await self.db.fetchall(
            "SELECT seq, winner FROM conflicts WHERE projection = ?", (projection,)
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def quarantine(
        self, projection: str, aggregate_type: str | None = None, aggregate_id: str | None = None
    ) -> list[QuarantineRecord]:
        """Quarantined messages of a projection (optionally of one type or aggregate), by seq."""
        where, params = _filter(projection, aggregate_type, aggregate_id)
        rows = await self.db.fetchall(
            f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE {where} ORDER BY seq", params
        )
        return [quarantine_record(r) for r in rows]

    async def quarantined_seqs(self, projection: str) -> set[int]:
        rows = await self.db.fetchall(
            "SELECT seq FROM quarantine WHERE projection = ?", (projection,)
        )
        return {int(r[0]) for r in rows}

    # -- the batch -------------------------------------------------------------------------

    async def commit_batch(
        self,
        slots: Sequence[SlotBatch],
        *,
        generation: str,
        checkpoints: Mapping[str, int],
        seq: int,
        recorded_us: int | None,
        now_us: int,
        keep: int,
        meta: Mapping[str, str] | None = None,
        failed: Sequence[ProjectionFailure] = (),
        cleared: Sequence[str] = (),
    ) -> None:
        """Commit one batch in ONE transaction: the guard, then for every projection in
        ``slots`` its states, snapshots (pruned to ``keep``), conflicts, quarantined messages,
        read models and periodic snapshot, and its checkpoint ``seq``; the ``meta`` rows given;
        the ``failed`` marks and the deletion of the ``cleared`` ones (``projections.failures``).

        ``generation`` and ``checkpoints`` (of every projection of the runner) are what the
        caller read: a file that says otherwise raises ``FileChanged`` and nothing is written.
        A projection's ``write`` (or its statements) failing raises ``failures.Failed``
        (``projections.readmodels``) and nothing is written.
        """
        db = self.db
        state_rows = [s.codec.row(a) for s in slots for a in s.changed.values()]
        async with db.transaction():
            await self._guard(generation, checkpoints)
            await record_failures(db, failed, cleared)
            if state_rows:
                await db.executemany(UPSERT_STATE_SQL, state_rows)
            for slot in slots:
                name = slot.projection.name
                if slot.snapshots:
                    await db.executemany(SNAPSHOT_SQL, slot.snapshots)
                    pruned = {(r[1], r[2]) for r in slot.snapshots}
                    await db.executemany(PRUNE_SQL, [(name, t, i, keep) for t, i in pruned])
                if slot.conflicts:
                    await db.executemany(CONFLICT_SQL, slot.conflicts)
                if slot.quarantine:
                    await db.executemany(QUARANTINE_SQL, slot.quarantine)
                if slot.changed and slot.writes:
                    await write_read_models(db, slot)
                if slot.periodic:
                    version = slot.projection.version
                    await db.execute(PERIODIC_SQL, (name, version, now_us))
                    await db.execute(PERIODIC_PRUNE_SQL, (name, keep))
                    await db.execute(PERIODIC_MARK_SQL, (name,))
                    await db.execute(SNAPSHOT_TIME_SQL, (now_us, name))
            await db.executemany(
                CHECKPOINT_SQL, [(seq, recorded_us, now_us, s.projection.name) for s in slots]
            )
            if meta:  # the rules in force at the checkpoint (projections.rulecheck)
                await db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [*meta.items()])

    async def _guard(self, generation: str, checkpoints: Mapping[str, int]) -> None:
        """Refuse to commit onto a file that changed since the runner read it."""
        rows = await self.db.fetchall(GUARD_SQL)
        stored = {r[0]: int(r[1]) for r in rows}
        found = rows[0][3] if rows else await self.db.meta("generation")
        if found != generation:
            log.warning(
                "projection database was replaced (rebuild?): resuming from its checkpoints",
                db=str(self.db.path),
            )
            raise FileChanged()
        for name, checkpoint in checkpoints.items():
            if stored.get(name) != checkpoint:
                log.warning(
                    "projection checkpoint moved under this worker (another worker on the "
                    "same file?): resuming from the file's checkpoint",
                    projection=name,
                    ours=checkpoint,
                    theirs=stored.get(name),
                )
                raise FileChanged()


async def list_conflicts(
    db: ProjectionDB,
    projection: str,
    aggregate_type: str | None = None,
    aggregate_id: str | None = None,
) -> list[ConflictRecord]:
    """Recorded conflicts of a projection (optionally of one type or aggregate), by seq."""
    return await Recorder(db).conflicts(projection, aggregate_type, aggregate_id)


async def list_quarantine(
    db: ProjectionDB,
    projection: str,
    aggregate_type: str | None = None,
    aggregate_id: str | None = None,
) -> list[QuarantineRecord]:
    """Quarantined messages of a projection (optionally of one type or aggregate), by seq."""
    return await Recorder(db).quarantine(projection, aggregate_type, aggregate_id)


async def list_aggregates(
    db: ProjectionDB, projection: str, aggregate_type: str | None = None, limit: int = -1
) -> list[tuple[str, str]]:
    """``(aggregate_type, aggregate_id)`` of every state a projection holds, sorted."""
    where, params = _filter(projection, aggregate_type, None)
    sql = f"SELECT aggregate_type, aggregate_id FROM states WHERE {where} ORDER BY 1, 2 LIMIT ?"
    return [(str(t), str(i)) for t, i in await db.fetchall(sql, (*params, limit))]
