"""A projection that failed: what is recorded about it, and whose fault a failure is.

One projection's own code (``initial``, a fold that raises outside the quarantine paths,
``write``, or the read-model statements ``write`` returns) must not stop the others: the
runner marks it failed and goes on with the rest. The failed one keeps its checkpoint (its
batch is dropped whole, never half written) and folds no more in that run; a restart (after
the code is fixed) resumes it from its checkpoint, and its mark is cleared by its next commit.

The mark is a ``meta`` row ``failed:<projection>`` holding a ``ProjectionFailure`` as JSON,
written in the transaction of the batch the others commit (files of every schema version
have the ``meta`` table: no migration). Status reads it (``projections.status``).

A database fault (locked, disk full, I/O error, a read-only file) is nobody's projection's
fault: it still stops the runner, as any error of the file does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from eventstore import ProjectionError
from projections.db import ProjectionDB
from projections.projection import Change, Projection

__all__ = [
    "FAILED_KEY",
    "Failed",
    "ProjectionFailure",
    "database_fault",
    "failing_change",
    "failure_marks",
    "stored_failures",
]

FAILED_KEY = "failed:"  # + the projection's name: a key of the meta table

# SQLite result codes that say the file or the machine failed, not the statement.
_DATABASE_FAULTS = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_NOMEM",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_CANTOPEN",
    "SQLITE_NOTADB",
    "SQLITE_INTERRUPT",
    "SQLITE_PROTOCOL",
)


class ProjectionFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a projection stopped folding: the message (what failed and what to do), the
    exception's type, the stream sequence it failed at (the batch's first unfolded one when the
    event is not known), the aggregate when known, and when."""

    projection: str
    error: str
    type: str
    seq: int
    at: datetime
    aggregate: str | None = None


class Failed(Exception):
    """A projection's own code failed at ``seq`` (internal: the runner catches it)."""

    def __init__(
        self,
        projection: str,
        message: str,
        exc: BaseException,
        seq: int,
        aggregate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.projection = projection
        self.message = message
        self.exc = exc
        self.seq = seq
        self.aggregate = aggregate

    def failure(self, at: datetime) -> ProjectionFailure:
        kind = type(self.exc)
        module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
        return ProjectionFailure(
            projection=self.projection,
            error=self.message,
            type=module + kind.__qualname__,
            seq=self.seq,
            at=at,
            aggregate=self.aggregate,
        )


def database_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the file's or the machine's failure."""
    cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
    if isinstance(exc, ProjectionError) and not isinstance(cause, sqlite3.Error):
        return True  # one of the file's own errors (foreign, locked, ...)
    name = str(getattr(cause, "sqlite_errorname", ""))
    return name.startswith(_DATABASE_FAULTS)


def failing_change(
    projection: Projection[Any], changes: Sequence[Change[Any]]
) -> Change[Any] | None:
    """The earliest change (by seq) for which ``write`` alone raises: where a batch's write
    failed. ``write`` is pure (it returns statements), so calling it again costs nothing."""
    for change in sorted(changes, key=lambda c: c.seq):
        try:
            list(projection.write([change]))
        except Exception:
            return change
    return None


_decode = msgspec.json.Decoder(ProjectionFailure).decode
_encode = msgspec.json.Encoder().encode


async def stored_failures(db: ProjectionDB) -> dict[str, ProjectionFailure]:
    """The failure marks the file holds, by projection name (an unreadable one is skipped)."""
    out: dict[str, ProjectionFailure] = {}
    for key, value in (await db.meta_prefixed(FAILED_KEY)).items():
        try:
            out[key[len(FAILED_KEY) :]] = _decode(value)
        except msgspec.DecodeError:
            continue
    return out


def failure_marks(failed: Iterable[ProjectionFailure]) -> list[tuple[str, str]]:
    """The ``meta`` rows marking ``failed`` projections, as ``stored_failures`` reads them
    (written in the batch's transaction by ``projections.commit``)."""
    return [(FAILED_KEY + f.projection, _encode(f).decode()) for f in failed]
