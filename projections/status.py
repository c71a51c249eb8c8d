"""Status: how far each projection has folded the log, how far behind it is, what it holds.

Lag is given in events (head minus checkpoint) and in seconds: the age of the oldest event not
yet applied (0 when caught up), which is what an operator's alert wants to know.

A database that is not a fold of the connected stream (``projections.identity``: another
stream's file, a store reset under it, a checkpoint past the head) is flagged on every line
(``stream_mismatch``, ``problem``): its lag would mean nothing. A projection whose code failed
(``projections.failures``) carries its ``failed`` record until it commits again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import cast

import msgspec

from eventstore import EventStore, ServerHealth, StoredMessage, server_health
from projections.db import ProjectionDB
from projections.failures import ProjectionFailure, stored_failures
from projections.identity import identity_problem, max_checkpoint, recorded_stream
from projections.recorder import Recorder
from projections.schema import TABLES

__all__ = [
    "ProjectionCounts",
    "ProjectionStatus",
    "StatusReport",
    "projection_counts",
    "projection_status",
    "status_report",
]


class ProjectionCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What one projection holds: the figures an operator watches beside its lag."""

    aggregates: int
    snapshots: int
    conflicts: int
    quarantined: int


async def projection_counts(db: ProjectionDB, projection: str) -> ProjectionCounts:
    """The row counts of one projection in ``db``, as of one commit (what ``status`` and the
    query service's status report)."""
    recorder = Recorder(db)
    async with db.snapshot():
        aggregates, snapshots, conflicts, quarantined = [
            await recorder.count(table, projection) for table in TABLES
        ]
    return ProjectionCounts(
        aggregates=aggregates, snapshots=snapshots, conflicts=conflicts, quarantined=quarantined
    )


class ProjectionStatus(msgspec.Struct, kw_only=True):
    """One projection's progress and contents."""

    projection: str
    code_version: str
    checkpoint: int
    head: int
    lag_events: int
    lag_seconds: float | None
    checkpoint_at: datetime | None
    updated_at: datetime | None
    aggregates: int
    snapshots: int
    conflicts: int
    quarantined: int
    stream: str | None = None  # the stream the database records it folds
    stream_mismatch: bool = False  # the database is not a fold of the connected stream
    problem: str | None = None  # why, and what to do
    failed: ProjectionFailure | None = None  # it stopped folding: why, at which seq, when


async def _recorded_at(store: EventStore, seq: int) -> datetime | None:
    reading = cast(AsyncGenerator[list[StoredMessage], None], store.raw(seq, stop_seq=seq))
    async with contextlib.aclosing(reading) as batches:
        async for batch in batches:
            for msg in batch:
                return msg.recorded_at
    return None


async def projection_status(store: EventStore, db: ProjectionDB) -> list[ProjectionStatus]:
    """The status of every projection in ``db`` against the log's head now (reads only)."""
    recorder = Recorder(db)
    async with db.snapshot():  # one commit's checkpoints and counts
        infos = await recorder.projections()
        recorded = await recorded_stream(db)
        top = await max_checkpoint(db)
        failures = await stored_failures(db)
        counts = {
            info.name: [await recorder.count(table, info.name) for table in TABLES]
            for info in infos
        }
    identity = await store.stream_identity()
    head = await store.head()  # after the checkpoints: a worker's commits never pass it
    problem = identity_problem(recorded, identity, top, head)
    out: list[ProjectionStatus] = []
    now = datetime.now(UTC)
    for info in infos:
        lag = max(0, head - info.checkpoint)
        lag_seconds: float | None = 0.0
        if lag:
            oldest = await _recorded_at(store, info.checkpoint + 1)
            lag_seconds = max(0.0, (now - oldest).total_seconds()) if oldest else None
        aggregates, snapshots, conflicts, quarantined = counts[info.name]
        out.append(
            ProjectionStatus(
                projection=info.name,
                code_version=info.code_version,
                checkpoint=info.checkpoint,
                head=head,
                lag_events=lag,
                lag_seconds=None if lag_seconds is None else round(lag_seconds, 3),
                checkpoint_at=info.checkpoint_at,
                updated_at=info.updated_at,
                aggregates=aggregates,
                snapshots=snapshots,
                conflicts=conflicts,
                quarantined=quarantined,
                stream=recorded.name,
                stream_mismatch=problem is not None,
                problem=problem,
                failed=failures.get(info.name),
            )
        )
    return out


class StatusReport(msgspec.Struct, kw_only=True):
    """``eventstore status`` in one JSON document: the stream (size, first and last sequence
    and time), every projection's progress and lag, and the server's JetStream and store."""

    stream: dict[str, object]
    projections: list[ProjectionStatus]
    server: ServerHealth


async def status_report(store: EventStore, db: ProjectionDB) -> StatusReport:
    """The stream, the projections of ``db`` and the server, as seen now (reads only)."""
    statuses = await projection_status(store, db)
    health = await server_health(store.nc, store.settings.name, store.url)
    stream: dict[str, object] = {
        "name": health.stream,
        "messages": health.messages,
        "bytes": health.bytes,
        "first_seq": health.first_seq,
        "first_time": health.first_time,
        "last_seq": health.last_seq,
        "last_time": health.last_time,
    }
    return StatusReport(stream=stream, projections=statuses, server=health)
