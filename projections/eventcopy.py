"""The local copy of the events: each message of an aggregate, as stored, in the projection file.

The runner sees every message in order; with ``RunnerSettings.keep_events`` (on by default) it
writes each message of the aggregates its projections follow (its exact body, seq, recorded
time and the version the body claims) into the ``events`` table in the batch's transaction,
beside the states and the checkpoint, so the copy is exactly as complete as the fold. Each
projection records from which seq on the copy holds every message of its aggregates
(``projections.events_from``): up to its checkpoint, from there on, the copy is the log.

Time travel (``projections.timetravel``) then reads a past state in ONE statement (one thread
hop): the projection's position, the nearest snapshot and the messages after it, and folds
them exactly as the runner folds the log; points past the checkpoint, before the copy starts,
or of aggregates no projection of the file follows are replayed from the log. Its statements
are here; ``projections.commit`` runs ``insert_events`` in the batch's transaction.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from eventstore import Event, StoredMessage
from projections.db import ProjectionDB
from projections.rows import StateCodec
from projections.snapshots import SNAPSHOT_COLUMNS
from projections.times import to_us

__all__ = [
    "EVENT_SQL",
    "LocalRows",
    "copied",
    "copy_differs",
    "event_rows",
    "insert_events",
    "multi_rows",
    "read_local",
]

Key = tuple[str, str]

EVENT_INSERT = (
    "INSERT OR IGNORE INTO events (seq, aggregate_type, aggregate_id, version, recorded_us, "
    "data) VALUES "
)
EVENT_SQL = EVENT_INSERT + "(?, ?, ?, ?, ?, ?)"
CHUNK = 1000  # rows per INSERT: one statement step and one bind pass for many rows


@functools.cache
def _values(columns: int, rows: int) -> str:
    one = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([one] * rows)


def multi_rows(
    head: str, rows: Sequence[tuple[Any, ...]], tail: str = ""
) -> list[tuple[str, list[Any]]]:
    """The ``(statement, parameters)`` of ``head VALUES... tail`` inserting ``rows``, ``CHUNK``
    rows a statement: a batch of 20,000 is 20 statements, not 20,000 steps each giving the GIL
    away and waiting to take it back while the event loop reads the log."""
    out: list[tuple[str, list[Any]]] = []
    columns = len(rows[0]) if rows else 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        out.append((head + _values(columns, len(chunk)) + tail, [v for r in chunk for v in r]))
    return out


def insert_events(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``EVENT_SQL`` rows on ``conn`` (blocking, inside the caller's transaction)."""
    for sql, params in multi_rows(EVENT_INSERT, rows):
        conn.execute(sql, params)


_PAD = ", NULL" * 7  # the arms have 12 columns, as the snapshot one
ROWS = 1024  # messages read at once when nothing bounds the replay better


def event_rows(
    batch: list[StoredMessage], memo: dict[int, Event | str], key_of: Callable[[str], Key | None]
) -> list[tuple[Any, ...]]:
    """The ``EVENT_SQL`` rows of a folded batch: every message some projection folded (its
    decoded event, or why it is not one, is in ``memo``); ``version`` NULL for a message that
    is no valid event."""
    rows: list[tuple[Any, ...]] = []
    for msg in batch:
        known = memo.get(msg.seq)
        if known is None:
            continue
        key = key_of(msg.subject)
        if key is None:  # only aggregates' messages are folded
            continue
        version = None if isinstance(known, str) else known.version
        rows.append((msg.seq, key[0], key[1], version, to_us(msg.recorded_at), msg.data))
    return rows


class LocalRows(NamedTuple):
    """What one local read found: ``covered`` is the seq up to which the copy holds every
    message of the aggregate after ``after`` (None: it does not, replay from the log);
    ``snapshot`` the nearest snapshot's row (if asked and found); ``rows`` the messages
    ``(seq, recorded_us, data)`` in seq order, ``full`` when the limit cut them."""

    covered: int | None
    snapshot: Any
    rows: list[tuple[int, int, bytes]]
    full: bool


async def read_local(
    db: ProjectionDB,
    codec: StateCodec,
    key: Key,
    *,
    version: int | None = None,
    seq: int | None = None,
    at: datetime | None = None,
    snapshot: bool,
    after: int = 0,
    after_version: int = 0,
) -> LocalRows:
    """One statement: the projection's copy range, with ``snapshot`` its nearest snapshot at or
    before the point, and the aggregate's messages after it (or after ``after``, at version
    ``after_version``) up to the point and the checkpoint, about as many as the point needs."""
    kind = "version" if version is not None else "seq" if seq is not None else "at" if at else ""
    target = version if version is not None else seq if seq is not None else to_us(at)
    params: list[Any] = [codec.name]
    if snapshot:
        params += [codec.name, *key, codec.projection.version]
        params += [target] if kind else []
    if kind == "version":
        limit_params: list[Any] = [version, after_version]
    elif kind == "at":
        limit_params = [codec.name, *key, target, codec.name, *key, after_version, ROWS]
    else:
        limit_params = [ROWS]
    params += [*limit_params, *key, after, *([seq] if kind == "seq" else []), after]
    params += limit_params
    return _parse(await db.fetchall(_statement(snapshot, kind), params), after)


@functools.cache
def _statement(snapshot: bool, kind: str) -> str:
    """The one statement of ``read_local`` for a point of ``kind`` (version, seq, at or "")."""
    sql = "WITH pos AS (SELECT events_from, checkpoint FROM projections WHERE name = ?)"
    base, lower = "?", "?"
    if snapshot:
        where = "projection = ? AND aggregate_type = ? AND aggregate_id = ? AND code_version = ?"
        column = {"version": "version", "seq": "seq", "at": "recorded_us"}.get(kind)
        where += f" AND {column} <= ?" if column else ""
        sql += f", snap AS (SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {where} "
        sql += "ORDER BY version DESC LIMIT 1)"
        base = "coalesce((SELECT version FROM snap), ?)"
        lower = "max(?, coalesce((SELECT seq FROM snap), 0))"
    if kind == "version":  # from a snapshot to a version: the versions between, and a few
        limit = f"max(1, ? - {base} + 8)"
    elif kind == "at":  # to a time: up to the next later snapshot, else the current state
        limit = (
            "coalesce((SELECT version FROM snapshots WHERE projection = ? AND aggregate_type = ?"
            " AND aggregate_id = ? AND recorded_us > ? ORDER BY recorded_us LIMIT 1),"
            " (SELECT version FROM states WHERE projection = ? AND aggregate_type = ?"
            f" AND aggregate_id = ?)) - {base} + 1"
        )
        limit = f"max(1, coalesce({limit}, ?))"
    else:
        limit = "?"
    sql += f" SELECT 0, events_from, checkpoint, {limit}" + ", NULL" * 8 + " FROM pos"
    if snapshot:
        sql += f" UNION ALL SELECT 1, {SNAPSHOT_COLUMNS} FROM snap"
    upper = "(SELECT checkpoint FROM pos)"
    if kind == "seq":
        upper = f"min(?, {upper})"
    return sql + (
        " UNION ALL SELECT * FROM (SELECT 2, seq, recorded_us, data" + _PAD + ", NULL"
        f" FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND seq > {lower}"
        f" AND seq <= {upper} AND (SELECT events_from FROM pos) <= {lower} + 1"
        f" ORDER BY seq LIMIT {limit})"
    )


def _parse(found: list[Any], after: int) -> LocalRows:
    snap: Any = None
    rows: list[tuple[int, int, bytes]] = []
    events_from = checkpoint = None
    limit = 0
    for row in found:
        kind = row[0]
        if kind == 2:
            rows.append((row[1], row[2], row[3]))
        elif kind == 1:
            snap = row[1:]
        else:
            events_from, checkpoint, limit = row[1], row[2], row[3]
    start = max(after, snap[3] if snap is not None else 0)  # snapshot column 3: its seq
    covered: int | None = None
    if events_from is not None and checkpoint is not None and events_from <= start + 1:
        covered = int(checkpoint)
    return LocalRows(covered, snap, rows, len(rows) >= int(limit or 0) > 0)


async def copied(db: ProjectionDB, first: int, last: int) -> dict[int, tuple[Any, ...]]:
    """The copy's rows of seqs ``first``..``last`` (``verify``), by seq:
    ``(aggregate_type, aggregate_id, recorded_us, data)``."""
    rows = await db.fetchall(
        "SELECT seq, aggregate_type, aggregate_id, recorded_us, data FROM events "
        "WHERE seq BETWEEN ? AND ?",
        (first, last),
    )
    return {int(r[0]): tuple(r[1:]) for r in rows}


def copy_differs(msg: StoredMessage, key: Key, row: tuple[Any, ...] | None) -> str | None:
    """Why the copy's row of a log message is not that message (None: it is)."""
    if row is None:
        return "missing from the copy of the events"
    if (row[0], row[1]) != key or row[2] != to_us(msg.recorded_at) or bytes(row[3]) != msg.data:
        return "the copy of the events differs from the log"
    return None
