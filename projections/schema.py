"""The schema of a projection database: its tables, as the migrations that make them.

Each migration is ``(version, description, statements)``, applied in order by
``ProjectionDB.migrate`` and recorded in ``schema_migrations`` (and ``PRAGMA user_version``).
A migration is never changed once released: a new one is added.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from projections.eventruns import runs_from_copy

__all__ = ["INDEXES", "MIGRATIONS", "READABLE_FROM", "SCHEMA_VERSION", "TABLES", "run_steps"]

# A step is a statement, or blocking code run on the connection (a migration of rows).
Step = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[int, str, list[Step]]] = [
    (
        1,
        "projections, states, snapshots, conflicts, quarantine",
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE projections (
                name TEXT PRIMARY KEY,
                code_version TEXT NOT NULL,
                checkpoint INTEGER NOT NULL DEFAULT 0,
                checkpoint_us INTEGER,
                updated_us INTEGER,
                snapshot_us INTEGER
            )""",
            """CREATE TABLE states (
                projection TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                state TEXT NOT NULL,
                vclock TEXT NOT NULL,
                lamport INTEGER NOT NULL,
                recorded_us INTEGER,
                resume TEXT NOT NULL,
                base TEXT,
                snapshot_version INTEGER NOT NULL DEFAULT 0,
                UNIQUE (projection, aggregate_type, aggregate_id)
            )""",
            """CREATE TABLE snapshots (
                projection TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                code_version TEXT NOT NULL,
                state TEXT NOT NULL,
                vclock TEXT NOT NULL,
                lamport INTEGER NOT NULL,
                recorded_us INTEGER,
                resume TEXT NOT NULL,
                base TEXT,
                taken_us INTEGER NOT NULL,
                UNIQUE (projection, aggregate_type, aggregate_id, version)
            )""",
            "CREATE INDEX snapshots_by_seq ON snapshots "
            "(projection, aggregate_type, aggregate_id, seq)",
            """CREATE TABLE conflicts (
                id INTEGER PRIMARY KEY,
                projection TEXT NOT NULL,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                version INTEGER NOT NULL,
                event_id TEXT NOT NULL,
                event_producer TEXT NOT NULL,
                event_lamport INTEGER NOT NULL,
                event_vclock TEXT NOT NULL,
                previous_id TEXT NOT NULL,
                previous_seq INTEGER NOT NULL,
                previous_producer TEXT NOT NULL,
                previous_lamport INTEGER NOT NULL,
                previous_vclock TEXT NOT NULL,
                resolver TEXT NOT NULL,
                winner TEXT NOT NULL,
                recorded_us INTEGER,
                UNIQUE (projection, seq)
            )""",
            "CREATE INDEX conflicts_by_aggregate ON conflicts "
            "(projection, aggregate_type, aggregate_id, seq)",
            """CREATE TABLE quarantine (
                id INTEGER PRIMARY KEY,
                projection TEXT NOT NULL,
                seq INTEGER NOT NULL,
                subject TEXT NOT NULL,
                aggregate_type TEXT,
                aggregate_id TEXT,
                version INTEGER,
                event_id TEXT,
                kind TEXT NOT NULL,
                reason TEXT NOT NULL,
                data BLOB,
                recorded_us INTEGER,
                UNIQUE (projection, seq)
            )""",
        ],
    ),
    (
        2,
        "snapshots by recorded time (time travel with at=)",
        [
            "CREATE INDEX snapshots_by_time ON snapshots "
            "(projection, aggregate_type, aggregate_id, recorded_us)",
        ],
    ),
    (
        3,
        "the local copy of the events (time travel and history replay locally)",
        [
            # One row per message of an aggregate, its body as stored (projections.eventcopy);
            # ``version`` is the one the body claims (eventstore.versions), NULL if none.
            """CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                version INTEGER,
                recorded_us INTEGER NOT NULL,
                data BLOB NOT NULL
            )""",
            "CREATE INDEX events_by_aggregate ON events (aggregate_type, aggregate_id, seq)",
            # The first seq from which the copy holds every message of the projection's
            # aggregates up to its checkpoint (NULL: no copy kept for it).
            "ALTER TABLE projections ADD COLUMN events_from INTEGER",
        ],
    ),
    (
        4,
        "the local copy's messages found by their aggregate's runs, not by an index",
        [
            # Up to RUN_SEQS seqs of one aggregate's messages in the copy, in order, as a JSON
            # array; an aggregate's runs never overlap (projections.eventruns).
            """CREATE TABLE event_runs (
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                first_seq INTEGER NOT NULL,
                last_seq INTEGER NOT NULL,
                seqs TEXT NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, first_seq)
            ) WITHOUT ROWID""",
            runs_from_copy,
            "DROP INDEX events_by_aggregate",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def run_steps(conn: sqlite3.Connection, steps: list[Step]) -> None:
    """A migration's steps on ``conn``, in order (blocking, inside the caller's transaction)."""
    for step in steps:
        if isinstance(step, str):
            conn.execute(step)
        else:
            step(conn)


# The oldest schema a read-only open accepts: schemas 3 and 4 only added the local copy of the
# events and changed how it is found, which a reader of an older file does without (time travel
# then replays from the log).
READABLE_FROM = 2
# The tables holding one projection's rows (all keyed by a ``projection`` column).
TABLES = ("states", "snapshots", "conflicts", "quarantine")
# Indexes a writer creates at open when missing, outside the numbered migrations (existing
# files get them too, and readers work without them, only slower): name -> DDL.
INDEXES = {
    # ``query_states(since=...)``: the states changed after a seq, by seq (the change feed's
    # resync and its re-publication at start).
    "states_by_seq": "CREATE INDEX IF NOT EXISTS states_by_seq ON states (projection, seq)",
}
