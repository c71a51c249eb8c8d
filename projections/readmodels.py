"""A projection's read models written in the batch's transaction, and their failures.

A projection may keep its own tables (``schema`` DDL, run by ``Recorder.create_read_models``);
``write`` turns the states a batch changed into ``Statement``\\ s, run inside the batch's
transaction. What goes wrong in them is the projection's fault (``failures.Failed``: the
runner marks it failed and the others go on): ``write`` raising, a value SQLite cannot bind,
a statement SQLite refuses. A fault of the file itself (locked, full, I/O) is raised as it is.

The batch's transaction runs in one call on the database's thread (``projections.commit``):
``read_model_statements`` calls ``write`` before it, on the caller's thread as any other
projection code, and ``run_statements`` runs what it returned inside it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from projections.dbfile import translate
from projections.failures import Failed, database_fault, failing_change
from projections.fold import describe_error
from projections.projection import Change, Statement
from projections.rows import SlotBatch

__all__ = ["ReadModelWrites", "read_model_statements", "run_statements"]


class ReadModelWrites:
    """What ``write`` returned for one batch of one projection, and where to blame a failure."""

    __slots__ = ("projection", "seq", "statements")

    def __init__(self, projection: str, seq: int, statements: list[Statement]) -> None:
        self.projection = projection
        self.seq = seq  # the batch's first changed seq: where a refused statement failed
        self.statements = statements


def read_model_statements(slot: SlotBatch) -> ReadModelWrites:
    """``slot``'s ``write`` on the states the batch changed (``Failed`` if it raises)."""
    changes = [
        Change(a.aggregate_type, a.aggregate_id, a.version, a.seq, a.state)
        for a in slot.changed.values()
    ]
    p = slot.projection
    try:
        statements = list(p.write(changes))
    except Exception as exc:
        at = failing_change(p, changes) or min(changes, key=lambda c: c.seq)
        message = f"projection {p.name}: write() failed for a batch: {describe_error(exc)}"
        where = f"{at.aggregate_type}/{at.aggregate_id}"
        raise Failed(p.name, message, exc, at.seq, where) from exc
    return ReadModelWrites(p.name, min(c.seq for c in changes), statements)


def run_statements(conn: sqlite3.Connection, path: Path, writes: ReadModelWrites) -> None:
    """Run ``writes`` on ``conn`` (blocking, inside the caller's transaction)."""
    name = writes.projection
    for statement in writes.statements:
        try:
            conn.executemany(statement.sql, statement.rows)
        except (OverflowError, ValueError, TypeError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error) and database_fault(exc):
                raise
            if isinstance(exc, sqlite3.Error):  # a statement SQLite refuses
                error = translate(path, exc)
                what = f"returned a read-model statement SQLite refused ({error})"
                raise Failed(name, f"projection {name}: write() {what}", error, writes.seq) from exc
            what = (  # a value SQLite cannot bind
                f"returned read-model rows SQLite cannot store ({describe_error(exc)}); "
                "make write() check the values it takes from states"
            )
            raise Failed(name, f"projection {name}: write() {what}", exc, writes.seq) from exc
