"""Where each aggregate's messages lie in the local copy of the events: its runs.

The copy (``projections.eventcopy``) keeps each message as a row keyed by its seq, which a
catch-up appends in order. Time travel reads one aggregate's messages after a point, so it
needs them by aggregate too; an index on ``(aggregate_type, aggregate_id, seq)`` gave that,
but its entries land at random places in the tree (one per message, every aggregate's range
grows at once), and writing it cost more than the rows themselves: in a 20,000-message
catch-up batch over 1,000 aggregates, about 8 of the 12 microseconds per message.

So the copy keeps, per aggregate, **runs**: rows of ``event_runs`` holding the seqs of up to
``RUN_SEQS`` of its messages, in order, as a JSON array (what SQLite's ``json_each`` reads).
A batch fills up each aggregate's last run and starts new ones after it, so the tree takes
about one entry per aggregate and batch instead of one per message, and a read of a few hundred
messages decodes a few runs.
The runs of one aggregate (keyed by their ``first_seq``) never overlap: each one starts after
the one before ends, so a read walks them in order and stops as soon as it has
enough. ``verify`` checks that they list exactly the copy's rows (``run_problems``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from projections.multirows import multi_rows

__all__ = ["RUN_SEQS", "add_runs", "as_json", "run_problems", "runs_from_copy", "seqs_of"]

Key = tuple[str, str]
RUN_SEQS = 128  # seqs in one run at most: a read decodes at most this many it does not need

_decode = msgspec.json.Decoder(list[int]).decode
_encode = msgspec.json.Encoder().encode

# The seqs of each aggregate's rows of the copy in ``?1``..``?2`` (a batch just inserted, past
# every row before it) and its last run's, as one JSON value: SQLite groups the rows (with the
# GIL given away) and the batch costs one statement step. (Each step gives the GIL away and
# takes it back while the event loop is busy reading the log: a statement per aggregate made
# the copy cost twice the fold, and grouping 20,000 rows in Python held the GIL 6 ms.)
_BATCH_SQL = (
    "SELECT json_group_array(json_array(g.t, g.i, json(g.seqs), json(coalesce((SELECT CASE "
    "WHEN json_valid(r.seqs) THEN r.seqs END FROM event_runs r WHERE r.aggregate_type = g.t "
    "AND r.aggregate_id = g.i ORDER BY r.first_seq DESC LIMIT 1), '[]')))) FROM "
    "(SELECT aggregate_type AS t, aggregate_id AS i, "
    "json_group_array(seq) AS seqs FROM events WHERE seq BETWEEN ?1 AND ?2 "
    "GROUP BY aggregate_type, aggregate_id) g"
)
_batch = msgspec.json.Decoder(list[tuple[str, str, list[int], list[int]]]).decode
# An aggregate's last run: cheaper for the few rows of a batch of a live log (no JSON built).
_LAST_ONE_SQL = (
    "SELECT seqs FROM event_runs WHERE aggregate_type = ? AND aggregate_id = ? "
    "ORDER BY first_seq DESC LIMIT 1"
)
FEW = 8  # rows in a batch up to which they are grouped here and each last run found apart
# The runs of an aggregate whose range meets ``?3``..``?4``.
_MEETING_SQL = (
    "SELECT first_seq, seqs FROM event_runs WHERE aggregate_type = ?1 AND aggregate_id = ?2 "
    "AND first_seq <= ?4 AND last_seq >= ?3 AND first_seq >= coalesce((SELECT max(first_seq) "
    "FROM event_runs WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND first_seq <= ?3), 0)"
)
_DELETE_SQL = (
    "DELETE FROM event_runs WHERE aggregate_type = ? AND aggregate_id = ? AND first_seq = ?"
)
RUN_INSERT = (
    "INSERT INTO event_runs (aggregate_type, aggregate_id, first_seq, last_seq, seqs) VALUES "
)
RUN_UPSERT = (
    " ON CONFLICT (aggregate_type, aggregate_id, first_seq) DO UPDATE SET "
    "last_seq = excluded.last_seq, seqs = excluded.seqs"
)


def add_runs(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], after_all: bool) -> None:
    """Record in ``event_runs`` the copy rows ``rows`` just inserted (``(seq, aggregate_type,
    aggregate_id, ...)`` in seq order, none of them in the copy before), inside the caller's
    transaction.

    ``after_all``: every one of them comes after every seq the copy held (a batch past the
    checkpoints, the usual case): each aggregate's seqs fill up its last run, then go into new
    ones (one statement groups them and finds the last runs). Otherwise (a projection catching
    up behind another one of the file) they may fall among an aggregate's runs: the runs they
    meet are merged with them and written again, one aggregate at a time (rare; bounded by the
    batch)."""
    if not rows:
        return
    groups: dict[Key, list[int]] = {}
    if after_all and len(rows) > FEW:
        found = conn.execute(_BATCH_SQL, (rows[0][0], rows[-1][0])).fetchone()[0]
        for t, i, seqs, held in _batch(found):  # a damaged last run is left as it is
            seqs.sort()  # SQLite's grouping keeps no order within a group
            groups[(t, i)] = held + seqs if len(held) < RUN_SEQS else seqs
    else:
        for row in rows:
            key = (row[1], row[2])
            if (known := groups.get(key)) is None:
                groups[key] = [row[0]]
            else:
                known.append(row[0])
        if after_all:
            for key, seqs in groups.items():
                last = conn.execute(_LAST_ONE_SQL, key).fetchone()
                held = [] if last is None else _readable(last[0])
                if len(held) < RUN_SEQS:
                    seqs[:0] = held  # rewritten under its own key, so upserted
        else:
            _merge_met(conn, groups)
    runs: list[tuple[str, str, int, int, str]] = []
    for (t, i), seqs in groups.items():
        for start in range(0, len(seqs), RUN_SEQS):
            piece = seqs[start : start + RUN_SEQS]
            runs.append((t, i, piece[0], piece[-1], as_json(piece)))
    for sql, params in multi_rows(RUN_INSERT, runs, RUN_UPSERT):
        conn.execute(sql, params)


def _readable(text: str) -> list[int]:
    """A run's seqs; none for a run that cannot be read (damaged: left as it is, for
    ``verify`` to report, and new seqs go into a run of their own)."""
    try:
        return _decode(text)
    except msgspec.DecodeError:
        return []


def _merge_met(conn: sqlite3.Connection, groups: dict[Key, list[int]]) -> None:
    """Merge each aggregate's new seqs with the runs they meet, which are deleted."""
    gone: list[tuple[str, str, int]] = []
    for key, seqs in groups.items():
        met = conn.execute(_MEETING_SQL, (*key, seqs[0], seqs[-1])).fetchall()
        met = [(first, held) for first, text in met if (held := _readable(text))]
        if met:
            gone.extend((*key, int(first)) for first, _ in met)
            groups[key] = sorted({*seqs, *(s for _, held in met for s in held)})
    conn.executemany(_DELETE_SQL, gone)


def runs_from_copy(conn: sqlite3.Connection, rows_at_once: int = 100_000) -> None:
    """Migration 4: the runs of a copy written by schema 3 (which found them by an index),
    read in seq order a bounded number of rows at a time."""
    cursor = conn.execute("SELECT seq, aggregate_type, aggregate_id FROM events ORDER BY seq")
    while rows := cursor.fetchmany(rows_at_once):
        add_runs(conn, rows, after_all=True)


# The runs of an aggregate from the one holding ``?3 + 1`` on, in order.
_RUNS_SQL = (
    "SELECT first_seq, seqs FROM event_runs WHERE aggregate_type = ?1 AND aggregate_id = ?2 "
    "AND first_seq >= coalesce((SELECT max(first_seq) FROM event_runs WHERE aggregate_type = ?1 "
    "AND aggregate_id = ?2 AND first_seq <= ?3), 0) AND last_seq > ?3 ORDER BY first_seq"
)


def seqs_of(
    conn: sqlite3.Connection, key: Key, lower: int, upper: int, limit: int
) -> list[int] | None:
    """The first ``limit`` seqs of ``key``'s messages in the copy with ``lower < seq <=
    upper``, in order: the runs after ``lower``, walked until they pass ``upper`` or give
    enough. None when a run on the way cannot be read (a damaged file: replay from the log)."""
    out: list[int] = []
    cursor = conn.execute(_RUNS_SQL, (*key, lower))
    try:
        for first, text in cursor:
            if first > upper:
                break
            for seq in _decode(text):
                if seq > upper:
                    break
                if seq > lower:
                    out.append(seq)
            if len(out) >= limit:
                break
    except msgspec.DecodeError:
        return None
    finally:
        cursor.close()
    return out[:limit]


def as_json(seqs: list[int]) -> str:
    """``seqs`` as the JSON array ``json_each`` reads (``eventcopy``'s rows by seq)."""
    return _encode(seqs).decode()


# A seq a run lists that the copy does not hold for that aggregate (a run that is no JSON
# array is reported as damaged, below).
_EACH = "json_each(CASE WHEN json_valid(r.seqs) THEN r.seqs ELSE '[]' END) j"
_LISTED_SQL = (
    f"SELECT r.aggregate_type, r.aggregate_id, j.value FROM event_runs r, {_EACH} "
    "LEFT JOIN events e ON e.seq = j.value WHERE e.seq IS NULL OR e.aggregate_type IS NOT "
    "r.aggregate_type OR e.aggregate_id IS NOT r.aggregate_id ORDER BY j.value LIMIT ?"
)
# A row of the copy no run lists.
_UNLISTED_SQL = (
    "SELECT aggregate_type, aggregate_id, seq FROM events WHERE seq NOT IN "
    f"(SELECT j.value FROM event_runs r, {_EACH}) ORDER BY seq LIMIT ?"
)
_ORDER_SQL = (
    "SELECT aggregate_type, aggregate_id, last_seq, first_seq, seqs FROM event_runs "
    "ORDER BY aggregate_type, aggregate_id, first_seq"
)
SHOWN = 20  # problems of each kind reported at most (one damaged page can hold thousands)


def run_problems(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """Where the runs do not list exactly the copy's rows, each aggregate's in order and
    without overlap: ``(aggregate_type, aggregate_id, what, detail)``, at most ``SHOWN`` of
    each kind (blocking; ``verify`` runs it in its read transaction)."""
    out: list[tuple[str, str, str, str]] = []
    for t, i, seq in conn.execute(_LISTED_SQL, (SHOWN,)).fetchall():
        out.append((t, i, "listed by the copy's runs but not in the copy", f"at seq {seq}"))
    for t, i, seq in conn.execute(_UNLISTED_SQL, (SHOWN,)).fetchall():
        out.append((t, i, "in the copy but listed by none of its runs", f"at seq {seq}"))
    shown, before = 0, (None, None, 0)
    for t, i, last, first, text in conn.execute(_ORDER_SQL):
        try:
            seqs = _decode(text)
        except msgspec.DecodeError:
            seqs = []
        after = before[2] if before[:2] == (t, i) else 0
        if not seqs or seqs != sorted(set(seqs)) or (seqs[0], seqs[-1]) != (first, last):
            why = "a run of the copy is damaged"
        elif first <= after:
            why = "runs of the copy overlap"
        else:
            why = ""
        if why and shown < SHOWN:
            shown += 1
            out.append((t, i, why, f"the run ending at seq {last}"))
        before = (t, i, last)
    return out
