"""A projection's read models written in the batch's transaction, and their failures.

A projection may keep its own tables (``schema`` DDL, run by ``Recorder.create_read_models``);
``write`` turns the states a batch changed into ``Statement``\\ s, run here inside the batch's
transaction. What goes wrong in them is the projection's fault (``failures.Failed``: the
runner marks it failed and the others go on): ``write`` raising, a value SQLite cannot bind,
a statement SQLite refuses. A fault of the file itself (locked, full, I/O) is raised as it is.
"""

from __future__ import annotations

from eventstore import ProjectionError
from projections.db import ProjectionDB
from projections.failures import Failed, database_fault, failing_change
from projections.fold import describe_error
from projections.projection import Change
from projections.rows import SlotBatch

__all__ = ["write_read_models"]


async def write_read_models(db: ProjectionDB, slot: SlotBatch) -> None:
    """Run ``slot``'s ``write`` on the states the batch changed, and its statements."""
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
    for statement in statements:
        try:
            await db.executemany(statement.sql, statement.rows)
        except (OverflowError, ValueError, TypeError, ProjectionError) as exc:
            if isinstance(exc, ProjectionError) and database_fault(exc):
                raise
            what = (  # a value SQLite cannot bind, or a statement SQLite refuses
                f"returned a read-model statement SQLite refused ({exc})"
                if isinstance(exc, ProjectionError)
                else f"returned read-model rows SQLite cannot store ({describe_error(exc)}); "
                "make write() check the values it takes from states"
            )
            seq = min(c.seq for c in changes)
            raise Failed(p.name, f"projection {p.name}: write() {what}", exc, seq) from exc
