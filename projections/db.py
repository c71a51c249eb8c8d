"""The SQLite file of the projections: opening it, its pragmas, migrations and transactions.

One file holds every projection of a worker: their checkpoints, current states, snapshots,
conflicts and quarantined events, and their read-model tables. It runs in WAL mode, so readers
(the CLI, queries) never block the worker, and ``synchronous=NORMAL``: a killed process loses
nothing that was committed, and a power cut can only lose the last transactions whole, with
their checkpoint, so the log replays them.

The schema is versioned: migrations are applied in order, each recorded in
``schema_migrations`` (and ``PRAGMA user_version``); a file written by a newer eventstore is
refused rather than misread. ``sqlite3`` errors become ``ProjectionError`` here. The tables
are in ``projections.schema``; every statement on their rows is ``projections.recorder``'s.

Three ways to open it:

* writer (``ProjectionDB.open(path)``): creates the file if needed and applies migrations; a
  file that is not ours (not SQLite, or SQLite of another application) is refused untouched;
* worker (``lock=True``): a writer that also holds ``<db>.lock`` (``DatabaseLock``) for as long
  as it is open, so a second worker on the same file is refused instead of folding batches
  the first one already committed;
* reader (``readonly=True``): what the read commands use. It never creates, migrates or writes
  anything (SQLite ``mode=ro``; in a directory the reader cannot write and with no write-ahead
  log in use, ``immutable=1``), so a user who may only read the file can query it; a missing,
  empty or foreign file, or one of an older schema, is a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from eventstore import ProjectionError, get_logger
from projections.dbfile import (
    OPEN_HERE,
    check_file,
    connect,
    file_key,
    missing,
    not_ours,
    read_only_uri,
    translate,
)
from projections.lock import DatabaseLock
from projections.schema import INDEXES, MIGRATIONS, READABLE_FROM, SCHEMA_VERSION, run_steps
from projections.times import to_us

__all__ = ["SCHEMA_VERSION", "DatabaseLock", "ProjectionDB", "copy_database"]

log = get_logger("projections.db")

T = TypeVar("T")


def _exists(path: Path) -> bool:
    return path.exists()


OUR_TABLES = ("meta", "projections", "schema_migrations")
# Pages the write-ahead log grows to before a commit copies it into the file (SQLite's default
# is 1,000, 4 MB): a catch-up writes the copy of the events, and each page checkpointed less
# often is copied and fsynced once for more commits; the log may grow to ~40 MB meanwhile.
WAL_AUTOCHECKPOINT = 10_000
# Errors of a read-only open in a directory the reader cannot write (no -shm can be made).
READONLY_RETRY = ("SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN", "SQLITE_READONLY_CANTINIT")


class ProjectionDB:
    """One projection database file, opened with its schema up to date.

    ``async with await ProjectionDB.open(path) as db``; one connection, used by one task at a
    time (the runner, or one command).
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        readonly: bool = False,
        lock: DatabaseLock | None = None,
    ) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.lock = lock
        self.generation = ""
        # Run first by ``close``: what was opened beside this connection (eventcopy's reader).
        self.closing: list[Callable[[], None]] = []
        self._key = file_key(path)
        if self._key is not None:
            OPEN_HERE[self._key] = OPEN_HERE.get(self._key, 0) + 1

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        readonly: bool = False,
        lock: bool = False,
    ) -> ProjectionDB:
        """Open (or create) the file, switch it to WAL and apply pending migrations.

        ``lock``: hold ``<db>.lock`` while open (a worker), ``DatabaseLocked`` if another
        process holds it. ``readonly``: only read (the read commands); see the module doc.
        """
        p = Path(path)
        if readonly:
            return await cls._open_readonly(p)
        if not create and not _exists(p):
            raise missing(p)
        if create:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a parent is a regular file, or not writable
                raise ProjectionError(
                    f"projection database {p}: cannot create its directory {p.parent} "
                    f"({exc.strerror or exc}); point --db / EVENTSTORE_DB at a writable place"
                ) from exc
        held: DatabaseLock | None = None
        if lock:
            held = DatabaseLock(p)
            held.acquire("worker")
        try:
            await asyncio.to_thread(check_file, p, must_exist=False)
            try:
                conn = await connect(p, isolation_level=None, timeout=30.0)
            except sqlite3.Error as exc:
                raise translate(p, exc) from exc
            db = cls(conn, p, lock=held)
            try:
                await db._setup()
            except BaseException:
                await conn.close()
                raise
        except BaseException:
            if held is not None:
                held.release()
            raise
        return db

    @classmethod
    async def _open_readonly(cls, p: Path) -> ProjectionDB:
        await asyncio.to_thread(check_file, p, must_exist=True)
        wal = p.with_name(p.name + "-wal")
        immutable = False
        while True:
            try:
                conn = await connect(
                    read_only_uri(p, immutable=immutable), uri=True, isolation_level=None
                )
            except sqlite3.Error as exc:
                raise translate(p, exc) from exc
            db = cls(conn, p, readonly=True)
            try:
                await db.conn.execute("PRAGMA busy_timeout=30000")
                await db.conn.execute("PRAGMA query_only=ON")
                await db.conn.execute_fetchall("PRAGMA user_version")
            except sqlite3.Error as exc:
                await conn.close()
                # In a directory this user cannot write, SQLite cannot create the -shm file a
                # WAL reader needs. With no write-ahead log in use there is nothing in it to
                # miss: read the file as it is (immutable), still without writing a byte.
                name = getattr(exc, "sqlite_errorname", "")
                try:
                    no_wal = wal.stat().st_size == 0
                except FileNotFoundError:
                    no_wal = True
                if not immutable and no_wal and name in READONLY_RETRY:
                    immutable = True
                    continue
                if name in READONLY_RETRY:
                    raise ProjectionError(
                        f"cannot read projection database {p} ({exc}): a worker is writing it, "
                        f"and reading it then needs read access to {wal.name} and "
                        f"{p.name}-shm beside it"
                    ) from exc
                raise translate(p, exc) from exc
            break
        try:
            await db._check_schema()
            db.generation = await db.meta("generation") or ""
        except BaseException:
            await conn.close()
            raise
        return db

    async def sibling(self, *, readonly: bool = False) -> ProjectionDB:
        """Another connection to this open file, for the same process (the query service's
        reads, the change feed's mark): same pragmas, no lock, no migration.

        It skips the checks of ``open`` on purpose: they read the file's header through a file
        descriptor of their own, and closing any descriptor of the file drops every POSIX lock
        this process's SQLite connections hold on it (SQLite's documented caveat), which lets
        another process's last connection checkpoint and truncate the write-ahead log under
        the writer: a corrupt file."""
        p = self.path
        try:
            if readonly:
                conn = await connect(read_only_uri(p), uri=True, isolation_level=None)
            else:
                conn = await connect(p, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise translate(p, exc) from exc
        db = type(self)(conn, p, readonly=readonly)
        try:
            await db.execute("PRAGMA busy_timeout=30000")
            if readonly:
                await db.execute("PRAGMA query_only=ON")
            else:
                await db.execute("PRAGMA synchronous=NORMAL")
            db.generation = await db.meta("generation") or ""
        except BaseException:
            await conn.close()
            raise
        return db

    async def _check_schema(self) -> None:
        """Refuse (reading only) a file that is not a projection database of this schema."""
        current = await self.schema_version()
        if current > SCHEMA_VERSION:
            raise self._newer(current)
        rows = await self.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {r[0] for r in rows}
        if tables and not set(OUR_TABLES) <= tables:
            raise not_ours(self.path, "is an SQLite database without the eventstore projection "
                            "schema")  # fmt: skip
        if self.readonly:
            if not tables:
                raise not_ours(self.path, "is an SQLite database without the eventstore "
                                "projection schema (no tables)")  # fmt: skip
            if current < READABLE_FROM:
                raise ProjectionError(
                    f"projection database {self.path} has schema version {current}, older "
                    f"than this eventstore's ({SCHEMA_VERSION}); start `eventstore worker` once "
                    "to upgrade it"
                )

    def _newer(self, current: int) -> ProjectionError:
        return ProjectionError(
            f"projection database {self.path} has schema version {current}, newer than "
            f"this eventstore understands ({SCHEMA_VERSION}); upgrade eventstore"
        )

    async def _setup(self) -> None:
        await self._check_schema()  # before the first write: a foreign file stays untouched
        await self.execute("PRAGMA journal_mode=WAL")
        await self.execute("PRAGMA synchronous=NORMAL")
        await self.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        await self.execute("PRAGMA busy_timeout=30000")
        await self.execute("PRAGMA temp_store=MEMORY")
        await self.execute("PRAGMA cache_size=-65536")
        await self.migrate()
        await self._ensure_indexes()
        self.generation = await self.meta("generation") or ""

    async def _ensure_indexes(self) -> None:
        """Create the ``schema.INDEXES`` a file lacks (a file that has them is only read)."""
        rows = await self.fetchall("SELECT name FROM sqlite_master WHERE type = 'index'")
        missing = [ddl for name, ddl in INDEXES.items() if name not in {r[0] for r in rows}]
        for ddl in missing:
            await self.execute(ddl)

    async def migrate(self) -> None:
        """Apply pending migrations; an up-to-date file is only read (no write lock taken)."""
        if await self.schema_version() == SCHEMA_VERSION:
            return
        async with self.transaction():
            current = await self.schema_version()
            if current > SCHEMA_VERSION:
                raise self._newer(current)
            await self._apply_migrations(current)

    async def _apply_migrations(self, current: int) -> None:
        """The migrations after ``current`` (inside the caller's transaction)."""
        if current == 0:
            await self.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_us INTEGER)"
            )
        for version, description, statements in MIGRATIONS:
            if version <= current:
                continue
            await self.run(functools.partial(run_steps, steps=statements))
            await self.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (version, description, to_us(datetime.now(UTC))),
            )
            if version == 1:
                self.generation = uuid.uuid4().hex
                await self.execute("INSERT INTO meta VALUES ('generation', ?)", (self.generation,))
            await self.execute(f"PRAGMA user_version = {int(version)}")
            log.info("projection database migrated", db=str(self.path), schema=version)

    async def wipe(self) -> None:
        """Drop everything the file holds (every projection's rows, read-model tables and
        registration) and create the schema afresh with a new generation, inside the caller's
        transaction: a crash before its commit leaves the file as it was."""
        rows = await self.fetchall(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view', 'table') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'trigger' THEN 0 "
            "WHEN 'view' THEN 1 ELSE 2 END"
        )
        for kind, name in rows:
            quoted = '"' + str(name).replace('"', '""') + '"'
            await self.execute(f"DROP {str(kind).upper()} IF EXISTS {quoted}")
        await self.execute("PRAGMA user_version = 0")
        await self._apply_migrations(0)
        await self._ensure_indexes()

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def close(self) -> None:
        while self.closing:
            self.closing.pop()()
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self.conn.close()
        if self._key is not None and OPEN_HERE.get(self._key):
            OPEN_HERE[self._key] -= 1
            self._key = None
        if self.lock is not None:
            self.lock.release()

    async def __aenter__(self) -> ProjectionDB:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- statements ------------------------------------------------------------------------

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            await self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            await self.conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self.conn.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the connection's own thread, in ONE hop (aiosqlite runs every
        call there, one at a time, through its ``_execute``): a batch of many statements costs
        one round trip instead of one per statement. ``fn`` is plain blocking code; its
        ``sqlite3`` errors become ``ProjectionError`` here, anything else it raises is raised."""
        conn = self.conn
        try:
            result: T = await conn._execute(lambda: fn(conn._conn))  # type: ignore[no-untyped-call]
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        return result

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken up front)."""
        await self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(ProjectionError, sqlite3.Error, ValueError):
                await self.conn.execute("ROLLBACK")
            raise
        await self.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """A read transaction: every read inside it sees the same committed state."""
        await self.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(ProjectionError, sqlite3.Error, ValueError):
                await self.conn.execute("COMMIT")

    async def meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (the file's generation, its stream's identity)."""
        row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table (inside the caller's transaction)."""
        await self.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    async def meta_prefixed(self, prefix: str) -> dict[str, str]:
        """The ``meta`` values whose key starts with ``prefix`` (failure marks), by key."""
        rows = await self.fetchall(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(k): str(v) for k, v in rows}

    async def delete_meta(self, key: str) -> None:
        """Delete a value of the ``meta`` table (inside the caller's transaction)."""
        await self.execute("DELETE FROM meta WHERE key = ?", (key,))

    async def truncate_wal(self) -> None:
        """Write the write-ahead log into the file and empty it (before a copy)."""
        await self.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def copy_database(source: Path, target: Path) -> None:
    """Copy ``source`` into ``target`` in one write transaction of ``target`` (SQLite's backup
    API under its write lock: readers see the old or the new content, never a mix). Blocking:
    run it in a thread; ``sqlite3.Error`` is the caller's to translate."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target, timeout=60.0)
    try:
        dst.execute("PRAGMA busy_timeout=60000")
        dst.execute("PRAGMA journal_mode=WAL")
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        dst.close()
        src.close()
