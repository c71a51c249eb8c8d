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
checkpoint or not at all (``eventsourcing``'s recorders work the same way). It prepares every
row here and runs the whole transaction in one call on the database's thread
(``projections.commit``: its statements are there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eventstore import get_logger
from projections.commit import CONFLICT_COLUMNS, CommitPlan, FileChanged, SlotRows, commit
from projections.db import ProjectionDB
from projections.failures import FAILED_KEY, ProjectionFailure, failure_marks
from projections.fold import AggregateState
from projections.projection import Projection
from projections.readmodels import read_model_statements
from projections.records import ConflictRecord, Position, ProjectionInfo, QuarantineRecord
from projections.rows import SlotBatch, StateCodec, conflict_record, quarantine_record
from projections.schema import TABLES
from projections.snapshots import (
    SNAPSHOT_COLUMNS,
    SNAPSHOT_TIME_SQL,
    STATE_COLUMNS,
    SnapshotRows,
)
from projections.times import from_us

__all__ = ["FileChanged", "Recorder", "list_conflicts", "list_quarantine"]

log = get_logger("projections.runner")

Key = tuple[str, str]

# The columns of ``rows.quarantine_record``.
QUARANTINE_COLUMNS = (
    "projection, seq, subject, kind, reason, aggregate_type, aggregate_id, version, event_id, "
    "recorded_us, data"
)


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


class Recorder(SnapshotRows):
    """The statements of one ``ProjectionDB`` (see the module doc; the snapshot reads are
    ``SnapshotRows``')."""

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

    async def copy_starts(self) -> dict[str, int]:
        """From which seq on the copy of the events holds each projection's messages (those
        that keep one; none in a file older than schema 3)."""
        if await self.db.schema_version() < 3:
            return {}
        rows = await self.db.fetchall(
            "SELECT name, events_from FROM projections WHERE events_from IS NOT NULL"
        )
        return {str(r[0]): int(r[1]) for r in rows}

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

    async def commit_batch(self, slots: Sequence[SlotBatch], **batch: Any) -> None:
        """``commit_plan(plan_batch(slots, ...))``: see ``plan_batch``."""
        await self.commit_plan(self.plan_batch(slots, **batch))

    def plan_batch(
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
        spacing: int = 0,
        events: Sequence[tuple[Any, ...]] | None = None,
    ) -> CommitPlan:
        """Every row of one batch, for ``commit_plan`` to commit in ONE transaction: the
        guard, then for every projection in ``slots`` its states, snapshots (pruned to the
        newest ``keep`` and older ones every ``spacing`` versions, ``projections.snapshots``),
        conflicts, quarantined messages, read models and periodic snapshot, and its checkpoint
        ``seq``; the ``meta`` rows given; the ``failed`` marks and the deletion of the
        ``cleared`` ones (``projections.failures``); the local copy of the ``events``
        (``projections.eventcopy``; None: none kept).

        ``generation`` and ``checkpoints`` (of every projection of the runner) are what the
        caller read: a file that says otherwise raises ``FileChanged`` and nothing is written.
        A projection's ``write`` (here) or its statements (``commit_plan``) failing raises
        ``failures.Failed`` (``projections.readmodels``) and nothing is written.

        Every row is encoded here, before anything is committed: the caller may change the
        states it folded as soon as this returns (``projections.inflight``).
        """
        return CommitPlan(
            path=self.db.path,
            generation=generation,
            checkpoints=checkpoints,
            states=[s.codec.row(a) for s in slots for a in s.changed.values()],
            slots=[_slot_rows(s) for s in slots],
            checkpoint_rows=[
                (seq, recorded_us, now_us, name, events is not None, checkpoints.get(name, 0) + 1)
                for name in (s.projection.name for s in slots)
            ],
            now_us=now_us,
            keep=keep,
            spacing=spacing,
            events=events,
            marks=failure_marks(failed),
            cleared=[FAILED_KEY + name for name in cleared],
            meta=[*meta.items()] if meta else [],  # the rules at the checkpoint (rulecheck)
        )

    async def commit_plan(self, plan: CommitPlan) -> None:
        """Commit ``plan`` (``plan_batch``) in one call on the database's thread."""
        try:
            await self.db.run(lambda conn: commit(conn, plan))
        except FileChanged as exc:
            log.warning(exc.reason, db=str(self.db.path), **exc.context)
            raise


def _slot_rows(slot: SlotBatch) -> SlotRows:
    """What ``slot`` writes besides its states; its ``write`` is called here."""
    p = slot.projection
    return SlotRows(
        name=p.name,
        code_version=p.version,
        snapshots=slot.snapshots,
        conflicts=slot.conflicts,
        quarantine=slot.quarantine,
        writes=read_model_statements(slot) if slot.changed and slot.writes else None,
        periodic=slot.periodic,
    )


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
