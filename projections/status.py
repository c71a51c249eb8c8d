"""Status: how far each projection has folded the log, how far behind it is, what it holds.

Lag is given in events (head minus checkpoint) and in seconds: the age of the oldest event not
yet applied (0 when caught up), which is what an operator's alert wants to know.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import cast

import msgspec

from eventstore.reader import StoredMessage
from eventstore.store import EventStore
from projections.db import ProjectionDB

__all__ = ["ProjectionStatus", "projection_status"]


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


async def _recorded_at(store: EventStore, seq: int) -> datetime | None:
    reading = cast(AsyncGenerator[list[StoredMessage], None], store.raw(seq, stop_seq=seq))
    async with contextlib.aclosing(reading) as batches:
        async for batch in batches:
            for msg in batch:
                return msg.recorded_at
    return None


async def projection_status(store: EventStore, db: ProjectionDB) -> list[ProjectionStatus]:
    """The status of every projection in ``db`` against the log's head now."""
    head = await store.head()
    out: list[ProjectionStatus] = []
    now = datetime.now(UTC)
    for info in await db.projections():
        lag = max(0, head - info.checkpoint)
        lag_seconds: float | None = 0.0
        if lag:
            oldest = await _recorded_at(store, info.checkpoint + 1)
            lag_seconds = max(0.0, (now - oldest).total_seconds()) if oldest else None
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
                aggregates=await db.count("states", info.name),
                snapshots=await db.count("snapshots", info.name),
                conflicts=await db.count("conflicts", info.name),
                quarantined=await db.count("quarantine", info.name),
            )
        )
    return out
