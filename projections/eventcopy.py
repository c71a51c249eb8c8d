"""The local copy of the events: each message of an aggregate, as stored, in the projection file.

The runner sees every message in order; with ``RunnerSettings.keep_events`` (on by default) it
writes each message of the aggregates its projections follow (its exact body, seq, recorded
time and the version the body claims) into the ``events`` table in the batch's transaction,
beside the states and the checkpoint, so the copy is exactly as complete as the fold. Each
projection records from which seq on the copy holds every message of its aggregates
(``projections.events_from``): up to its checkpoint, from there on, the copy is the log.

Time travel (``projections.timetravel``) then reads a past state in one read (four index
searches in one read transaction, in the calling thread: ``read_local``): the nearest
snapshot, the projection's position and the messages after the snapshot (found by their
aggregate's runs, ``projections.eventruns``), and folds
them exactly as the runner folds the log; points past the checkpoint, before the copy starts,
or of aggregates no projection of the file follows are replayed from the log. Its statements
are here; ``projections.commit`` runs ``insert_events`` in the batch's transaction.
"""

from __future__ import annotations

import functools
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from eventstore import Event, StoredMessage, get_logger
from projections.db import ProjectionDB
from projections.dbfile import read_only_uri
from projections.eventruns import add_runs, as_json, seqs_of
from projections.multirows import multi_rows
from projections.rows import StateCodec
from projections.snapshots import SNAPSHOT_COLUMNS, SNAPSHOT_ORDER
from projections.times import to_us

__all__ = [
    "EVENT_SQL",
    "LocalRows",
    "copied",
    "copy_differs",
    "event_row",
    "event_rows",
    "insert_events",
    "read_local",
]

Key = tuple[str, str]
T = TypeVar("T")
log = get_logger(__name__)

EVENT_INSERT = (
    "INSERT OR IGNORE INTO events (seq, aggregate_type, aggregate_id, version, recorded_us, "
    "data) VALUES "
)
EVENT_SQL = EVENT_INSERT + "(?, ?, ?, ?, ?, ?)"
_TOP_SQL = "SELECT max(seq) FROM events"
_HELD_SQL = "SELECT seq FROM events WHERE seq BETWEEN ? AND ?"


def insert_events(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``EVENT_SQL`` rows on ``conn`` and list them in their aggregates' runs
    (``projections.eventruns``), blocking, inside the caller's transaction. ``rows`` come in
    seq order (a batch's); those the copy already holds (another projection of the file,
    further on, copied them) are left out."""
    if not rows:
        return
    first, last = rows[0][0], rows[-1][0]
    top = conn.execute(_TOP_SQL).fetchone()[0]
    after_all = top is None or first > top
    if not after_all:
        held = {s for (s,) in conn.execute(_HELD_SQL, (first, last))}
        rows = [r for r in rows if r[0] not in held]
    for sql, params in multi_rows(EVENT_INSERT, rows):
        conn.execute(sql, params)
    add_runs(conn, rows, after_all)


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
        rows.append(event_row(msg, key, None if isinstance(known, str) else known.version))
    return rows


def event_row(msg: StoredMessage, key: Key, version: int | None) -> tuple[Any, ...]:
    """The ``EVENT_SQL`` row of a message of ``key``'s aggregate (``version`` None for a
    message that is no valid event)."""
    return (msg.seq, key[0], key[1], version, to_us(msg.recorded_at), msg.data)


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
    """The projection's copy range, with ``snapshot`` its nearest snapshot at or before the
    point, and the aggregate's messages after it (or after ``after``, at version
    ``after_version``) up to the point and the checkpoint, about as many as the point needs.

    Four index searches in one read transaction (so the checkpoint bounds what the messages
    statements see: snapshot, position, the aggregate's runs, their rows by seq), run at once
    in this thread on a read-only connection of the same file (``_reader``). A thread hop cost
    as much as the statements themselves on a quiet machine and most of the query on a busy
    one (the other thread waits for a core twice), and this read is bounded (a few hundred
    rows at most, found by index; the fold that follows runs here anyway). Where SQLite would
    wait for a lock (busy), or no second connection can be opened (a file read as immutable),
    it runs in the database connection's thread instead, as one hop."""
    point = _Point(codec.name, codec.projection.version, key, version, seq, to_us(at))
    read = functools.partial(_read, point, snapshot, after, after_version)
    reader = _reader(db)
    if reader is not None:
        try:
            return read(reader)
        except sqlite3.Error as exc:  # busy: this once; else never again (the thread decides)
            if not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                _close_reader(db, reader)
    return await db.run(read)


_READERS: weakref.WeakKeyDictionary[ProjectionDB, sqlite3.Connection | None] = (
    weakref.WeakKeyDictionary()
)


def _reader(db: ProjectionDB) -> sqlite3.Connection | None:
    """The read-only connection beside ``db`` for ``read_local`` (None: there is none), opened
    once and closed with ``db``: it never waits for a lock (``timeout=0``: ``read_local``
    then takes the thread), and reads the file exactly as ``db`` does (WAL mode, same file)."""
    try:
        return _READERS[db]
    except KeyError:
        pass
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            read_only_uri(db.path), uri=True, timeout=0, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error:
        if conn is not None:
            conn.close()
        conn = None
    if conn is not None:
        db.closing.append(functools.partial(_close_reader, db, conn))
    _READERS[db] = conn
    return conn


def _close_reader(db: ProjectionDB, conn: sqlite3.Connection) -> None:
    """Close ``db``'s reader for good (``db`` closes, or the reader cannot read the file)."""
    _READERS[db] = None
    conn.close()


class _Point(NamedTuple):
    projection: str
    code_version: str
    key: Key
    version: int | None
    seq: int | None
    at_us: int | None


_POS_SQL = "SELECT events_from, checkpoint FROM projections WHERE name = ?"
_SNAP_WHERE = "projection = ? AND aggregate_type = ? AND aggregate_id = ? AND code_version = ?"
_SNAP_SQL = {  # by the column of the point: its index gives the newest at once
    column: f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {_SNAP_WHERE}"
    + (f" AND {column} <= ?" if column else "")
    + f" ORDER BY {SNAPSHOT_ORDER[column]} LIMIT 1"
    for column in ("version", "seq", "recorded_us", "")
}
_ROWS_SQL = (
    "SELECT seq, recorded_us, data FROM events WHERE seq IN (SELECT value FROM json_each(?)) "
    "ORDER BY seq"
)
# To a time: the messages up to the next later snapshot, else up to the current state.
_NEXT_SQL = (
    "SELECT coalesce((SELECT version FROM snapshots WHERE projection = ?1 AND "
    "aggregate_type = ?2 AND aggregate_id = ?3 AND recorded_us > ?4 ORDER BY recorded_us "
    "LIMIT 1), (SELECT version FROM states WHERE projection = ?1 AND aggregate_type = ?2 AND "
    "aggregate_id = ?3))"
)


def _read(
    point: _Point, snapshot: bool, after: int, after_version: int, conn: sqlite3.Connection
) -> LocalRows:
    """``read_local`` in the connection's thread."""
    own = not conn.in_transaction  # a writer's open transaction already is one snapshot
    if own:
        conn.execute("BEGIN")
    try:
        return _statements(point, snapshot, after, after_version, conn)
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")  # a read: nothing to keep or undo


def _statements(
    point: _Point, snapshot: bool, after: int, after_version: int, conn: sqlite3.Connection
) -> LocalRows:
    key = point.key
    snap: Any = None
    if snapshot:
        column, target = (
            ("version", point.version) if point.version is not None
            else ("seq", point.seq) if point.seq is not None
            else ("recorded_us", point.at_us) if point.at_us is not None
            else ("", None)
        )  # fmt: skip
        params: tuple[Any, ...] = (point.projection, *key, point.code_version)
        snap = conn.execute(_SNAP_SQL[column], (*params, target) if column else params).fetchone()
    lower, base = after, after_version
    if snap is not None:  # snapshot columns 2 and 3: its version and seq
        lower, base = max(after, int(snap[3])), int(snap[2])
    pos = conn.execute(_POS_SQL, (point.projection,)).fetchone()
    if pos is None or pos[0] is None or pos[1] is None or pos[0] > lower + 1:
        return LocalRows(None, snap, [], False)  # no copy, or it starts after what is needed
    checkpoint = int(pos[1])
    if point.version is not None:  # the versions between, and a few (quarantined) more
        limit = max(1, point.version - base + 8)
    elif point.at_us is not None:
        found = conn.execute(_NEXT_SQL, (point.projection, *key, point.at_us)).fetchone()
        limit = ROWS if found is None or found[0] is None else max(1, int(found[0]) - base + 1)
    else:
        limit = ROWS
    upper = checkpoint if point.seq is None else min(point.seq, checkpoint)
    seqs = seqs_of(conn, key, lower, upper, limit)
    rows = conn.execute(_ROWS_SQL, (as_json(seqs),)).fetchall() if seqs else []
    if seqs is None or len(rows) != len(seqs):  # a damaged copy: the log still answers
        why = "local copy of the events damaged, replaying from the log; run verify"
        log.warning(why, projection=point.projection, aggregate_type=key[0], aggregate_id=key[1])
        return LocalRows(None, snap, [], False)
    return LocalRows(checkpoint, snap, rows, len(seqs) >= limit)


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
