"""Quarantine: messages a projection could not apply, kept with their reason, never dropped.

A worker that stopped at a bad event would stop every aggregate behind it; one that skipped it
silently would lie. So the message is recorded (sequence, subject, raw body, what was wrong)
in the same transaction as the batch around it, and the worker goes on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventstore.events import MAX_INT
from eventstore.reader import StoredMessage
from projections.db import ProjectionDB, aggregate_filter
from projections.fold import Rejected, loose_body, safe_text
from projections.times import from_us, to_us

__all__ = ["QuarantineRecord", "list_quarantine", "quarantine_row"]

INSERT_SQL = (
    "INSERT INTO quarantine (projection, seq, subject, aggregate_type, aggregate_id, version, "
    "event_id, kind, reason, data, recorded_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class QuarantineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One quarantined message of one projection."""

    projection: str
    seq: int
    subject: str
    kind: str
    reason: str
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    version: int | None = None
    event_id: str | None = None
    recorded_at: datetime | None = None
    data: str = ""


def quarantine_row(
    projection: str, msg: StoredMessage, key: tuple[str, str] | None, rejected: Rejected
) -> tuple[Any, ...]:
    """The row for a rejected message; version and id are read loosely from the body (when it
    is JSON at all, and only a version SQLite can hold); every text is made storable."""
    version: Any = None
    event_id: Any = None
    body = loose_body(msg.data)
    if isinstance(body, dict):
        v = body.get("version")
        version = v if type(v) is int and -MAX_INT - 1 <= v <= MAX_INT else None
        i = body.get("id")
        event_id = safe_text(i, 256) if isinstance(i, str) else None
    return (
        projection,
        msg.seq,
        safe_text(msg.subject),
        key[0] if key else None,
        key[1] if key else None,
        version,
        event_id,
        rejected.kind,
        safe_text(rejected.reason),
        bytes(msg.data),
        to_us(msg.recorded_at),
    )


async def list_quarantine(
    db: ProjectionDB,
    projection: str,
    aggregate_type: str | None = None,
    aggregate_id: str | None = None,
) -> list[QuarantineRecord]:
    """Quarantined messages of a projection (optionally of one type or aggregate), by seq."""
    where, params = aggregate_filter(projection, aggregate_type, aggregate_id)
    rows = await db.fetchall(
        "SELECT projection, seq, subject, kind, reason, aggregate_type, aggregate_id, version, "
        f"event_id, recorded_us, data FROM quarantine WHERE {where} ORDER BY seq",
        params,
    )
    return [
        QuarantineRecord(
            projection=r[0],
            seq=r[1],
            subject=r[2],
            kind=r[3],
            reason=r[4],
            aggregate_type=r[5],
            aggregate_id=r[6],
            version=r[7],
            event_id=r[8],
            recorded_at=from_us(r[9]),
            data=bytes(r[10] or b"").decode(errors="replace"),
        )
        for r in rows
    ]
