"""A batch's transaction as ONE call on the database's thread.

``Recorder.commit_batch`` prepares everything a batch writes on the event loop (the rows of
states, snapshots, conflicts, quarantined messages and the copy of the events are already
encoded by the fold; a projection's ``write`` is called there too, as any projection code),
and ``commit`` runs every statement of it on the connection's own thread in one hop
(``ProjectionDB.run``): ``BEGIN IMMEDIATE``, the guard, the writes, the checkpoints, the
``meta`` rows and ``COMMIT``, or ``ROLLBACK`` when anything fails. aiosqlite would cost a
round trip to that thread per statement (5 to 30 of them a batch, each a wake-up of both
threads), which was most of a small batch's commit time.

Whatever ``commit`` raises, nothing of the batch is written: ``FileChanged`` (the guard: the
file is not the one the runner read), ``failures.Failed`` (a projection's read-model
statements refused, ``projections.readmodels``), ``sqlite3.Error`` (the file's own faults,
translated to ``ProjectionError`` by ``ProjectionDB.run``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projections.eventcopy import insert_events
from projections.failures import FAILED_KEY
from projections.multirows import multi_rows
from projections.readmodels import ReadModelWrites, run_statements
from projections.snapshots import (
    PERIODIC_MARK_SQL,
    PERIODIC_PRUNE_SQL,
    PERIODIC_SQL,
    PRUNE_SQL,
    SNAPSHOT_SQL,
    SNAPSHOT_TIME_SQL,
)

__all__ = ["CommitPlan", "FileChanged", "SlotRows", "commit"]

STATE_INSERT = (
    "INSERT INTO states (projection, aggregate_type, aggregate_id, version, seq, state, vclock, "
    "lamport, recorded_us, resume, base, snapshot_version) VALUES "
)
STATE_UPDATE = (
    " ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET "
    "version = excluded.version, seq = excluded.seq, state = excluded.state, "
    "vclock = excluded.vclock, lamport = excluded.lamport, recorded_us = excluded.recorded_us, "
    "resume = excluded.resume, base = excluded.base, snapshot_version = excluded.snapshot_version"
)
# The new checkpoint, and where the local copy of the events starts (``?5``: kept in this
# batch from ``?6``, the seq after the projection's previous checkpoint, unless known earlier).
CHECKPOINT_SQL = (
    "UPDATE projections SET checkpoint = ?1, checkpoint_us = ?2, updated_us = ?3, "
    "events_from = CASE WHEN ?5 THEN coalesce(events_from, ?6) END WHERE name = ?4"
)
GUARD_SQL = (
    "SELECT name, checkpoint, code_version, (SELECT value FROM meta WHERE key = 'generation') "
    "FROM projections"
)
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
META_SQL = "INSERT OR REPLACE INTO meta VALUES (?, ?)"


class FileChanged(Exception):
    """The file is not the one the runner read (swapped by a rebuild, or written by another
    worker): nothing was committed; reload it and resume from its checkpoints. ``reason`` and
    ``context`` say what differed (logged by the recorder)."""

    def __init__(self, reason: str = "", **context: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.context = context


@dataclass(frozen=True, eq=False)
class SlotRows:
    """What one projection writes in a batch besides its states."""

    name: str
    code_version: str
    snapshots: list[tuple[Any, ...]]
    conflicts: list[tuple[Any, ...]]
    quarantine: list[tuple[Any, ...]]
    writes: ReadModelWrites | None  # its read models' statements
    periodic: bool  # take the periodic snapshot of every aggregate changed since its last one


@dataclass(frozen=True, eq=False)
class CommitPlan:
    """Every row of one batch, ready to bind (``Recorder.commit_batch`` builds it)."""

    path: Path
    generation: str
    checkpoints: Mapping[str, int]  # what the runner read, of every projection
    states: list[tuple[Any, ...]]
    slots: list[SlotRows]
    checkpoint_rows: list[tuple[Any, ...]]
    now_us: int
    keep: int
    spacing: int
    events: Sequence[tuple[Any, ...]] | None = None
    marks: list[tuple[str, str]] = field(default_factory=list)  # failure marks (meta rows)
    cleared: list[str] = field(default_factory=list)  # failure marks to delete (meta keys)
    meta: list[tuple[str, str]] = field(default_factory=list)  # the rules at the checkpoint

    def without(self, name: str, marks: list[tuple[str, str]]) -> CommitPlan:
        """This plan without projection ``name``'s rows (its read models failed), recording
        the failure ``marks`` instead of this plan's: the rows are the ones encoded when the
        batch was planned, whatever the runner folded since."""
        return dataclasses.replace(
            self,
            states=[r for r in self.states if r[0] != name],
            slots=[s for s in self.slots if s.name != name],
            checkpoint_rows=[r for r in self.checkpoint_rows if r[3] != name],
            marks=marks,
            cleared=[k for k in self.cleared if k != FAILED_KEY + name],
        )


def commit(conn: sqlite3.Connection, plan: CommitPlan) -> None:
    """Run ``plan`` in one transaction on ``conn`` (blocking: the database's thread)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _guard(conn, plan)
        _write(conn, plan)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _guard(conn: sqlite3.Connection, plan: CommitPlan) -> None:
    """Refuse to commit onto a file that changed since the runner read it."""
    rows = conn.execute(GUARD_SQL).fetchall()
    stored = {r[0]: int(r[1]) for r in rows}
    if rows:
        found = rows[0][3]
    else:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        found = None if row is None else str(row[0])
    if found != plan.generation:
        raise FileChanged(
            "projection database was replaced (rebuild?): resuming from its checkpoints"
        )
    for name, checkpoint in plan.checkpoints.items():
        if stored.get(name) != checkpoint:
            raise FileChanged(
                "projection checkpoint moved under this worker (another worker on the same "
                "file?): resuming from the file's checkpoint",
                projection=name,
                ours=checkpoint,
                theirs=stored.get(name),
            )


def _write(conn: sqlite3.Connection, plan: CommitPlan) -> None:
    if plan.marks:
        conn.executemany(META_SQL, plan.marks)
    for key in plan.cleared:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    if plan.states:
        for sql, params in multi_rows(STATE_INSERT, plan.states, STATE_UPDATE):
            conn.execute(sql, params)
    if plan.events:
        insert_events(conn, plan.events)
    keep, spacing, now_us = plan.keep, plan.spacing, plan.now_us
    for slot in plan.slots:
        name = slot.name
        if slot.snapshots:
            conn.executemany(SNAPSHOT_SQL, slot.snapshots)
            pruned = {(r[1], r[2]) for r in slot.snapshots}
            conn.executemany(PRUNE_SQL, [(name, t, i, keep, spacing) for t, i in pruned])
        if slot.conflicts:
            conn.executemany(CONFLICT_SQL, slot.conflicts)
        if slot.quarantine:
            conn.executemany(QUARANTINE_SQL, slot.quarantine)
        if slot.writes is not None:
            run_statements(conn, plan.path, slot.writes)
        if slot.periodic:
            conn.execute(PERIODIC_SQL, (name, slot.code_version, now_us))
            conn.execute(PERIODIC_PRUNE_SQL, (name, keep, spacing))
            conn.execute(PERIODIC_MARK_SQL, (name,))
            conn.execute(SNAPSHOT_TIME_SQL, (now_us, name))
    conn.executemany(CHECKPOINT_SQL, plan.checkpoint_rows)
    if plan.meta:
        conn.executemany(META_SQL, plan.meta)
