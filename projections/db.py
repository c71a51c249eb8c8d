"""The SQLite file of the projections: schema, migrations, and the rows of aggregate states.

One file holds every projection of a worker: their checkpoints, current states, snapshots,
conflicts and quarantined events, and their read-model tables. It runs in WAL mode, so readers
(the CLI, queries) never block the worker, and ``synchronous=NORMAL``: a killed process loses
nothing that was committed, and a power cut can only lose the last transactions whole, with
their checkpoint, so the log replays them.

The schema is versioned: migrations are applied in order, each recorded in
``schema_migrations`` (and ``PRAGMA user_version``); a file written by a newer eventstore is
refused rather than misread. ``sqlite3`` errors become ``ProjectionError`` here.

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
import fcntl
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite
import msgspec
import structlog

from eventstore.errors import DatabaseLocked, ProjectionError
from eventstore.events import Event
from projections.fold import AggregateState, LastEvent
from projections.projection import Projection
from projections.times import from_us, to_us

__all__ = [
    "SCHEMA_VERSION",
    "STATE_COLUMNS",
    "DatabaseLock",
    "ProjectionDB",
    "ProjectionInfo",
    "StateCodec",
    "aggregate_filter",
]

log = structlog.get_logger("projections.db")

MIGRATIONS: list[tuple[int, str, list[str]]] = [
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
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class _Resume(msgspec.Struct, omit_defaults=True):
    """The part of an aggregate's position that nobody queries: kept as one JSON column."""

    machine_state: str | None = None
    last: LastEvent | None = None
    previous: Event | None = None


_encode = msgspec.json.Encoder().encode
_resume_decoder = msgspec.json.Decoder(_Resume)
_clock_decoder = msgspec.json.Decoder(dict[str, int])

STATE_COLUMNS = (
    "aggregate_type, aggregate_id, version, seq, state, vclock, lamport, recorded_us, resume, "
    "base, snapshot_version"
)


class StateCodec:
    """Turns a projection's ``AggregateState`` into a row and back."""

    def __init__(self, projection: Projection[Any]) -> None:
        self.projection = projection
        self.name = projection.name
        self._state = msgspec.json.Decoder(projection.state_type)

    def encode_state(self, state: Any) -> str:
        return _encode(state).decode()

    def decode_state(self, text: str | bytes) -> Any:
        return self._state.decode(text)

    def row(self, agg: AggregateState) -> tuple[Any, ...]:
        """``(projection, <STATE_COLUMNS>)`` for the states table."""
        last = agg.last
        if last is not None and not isinstance(last, LastEvent):
            last = LastEvent(
                last.id, last.seq, last.version, dict(last.vclock), last.lamport, last.producer
            )
        resume = _Resume(agg.machine_state, last, agg.previous)
        return (
            self.name,
            agg.aggregate_type,
            agg.aggregate_id,
            agg.version,
            agg.seq,
            _encode(agg.state).decode(),
            _encode(agg.vclock or {}).decode(),
            agg.lamport,
            to_us(agg.recorded_at),
            _encode(resume).decode(),
            None if agg.previous is None else _encode(agg.base).decode(),
            agg.snapshot_version,
        )

    def load(self, row: Sequence[Any]) -> AggregateState:
        """An ``AggregateState`` from the columns ``STATE_COLUMNS`` (in that order)."""
        (
            agg_type,
            agg_id,
            version,
            seq,
            state,
            vclock,
            lamport,
            recorded_us,
            resume,
            base,
            snapshot_version,
        ) = row
        r = _resume_decoder.decode(resume)
        return AggregateState(
            agg_type,
            agg_id,
            self._state.decode(state),
            version=version,
            seq=seq,
            vclock=_clock_decoder.decode(vclock),
            lamport=lamport,
            recorded_at=from_us(recorded_us),
            machine_state=r.machine_state,
            last=r.last,
            previous=r.previous,
            base=self._state.decode(base) if base is not None else None,
            snapshot_version=snapshot_version,
        )


class ProjectionInfo(msgspec.Struct, frozen=True):
    """A projection's row in the registry."""

    name: str
    code_version: str
    checkpoint: int
    checkpoint_at: datetime | None
    updated_at: datetime | None


def aggregate_filter(
    projection: str, aggregate_type: str | None, aggregate_id: str | None
) -> tuple[str, list[Any]]:
    """WHERE clause and parameters selecting a projection's rows, optionally of one aggregate
    type or one aggregate (the conflicts, quarantine and states tables share these columns)."""
    where = "projection = ?"
    params: list[Any] = [projection]
    if aggregate_type is not None:
        where += " AND aggregate_type = ?"
        params.append(aggregate_type)
    if aggregate_id is not None:
        where += " AND aggregate_id = ?"
        params.append(aggregate_id)
    return where, params


def _exists(path: Path) -> bool:
    return path.exists()


def _translate(path: Path, exc: sqlite3.Error) -> ProjectionError:
    return ProjectionError(f"projection database {path}: {exc}")


SQLITE_HEADER = b"SQLite format 3\x00"
OUR_TABLES = ("meta", "projections", "schema_migrations")
# Errors of a read-only open in a directory the reader cannot write (no -shm can be made).
READONLY_RETRY = ("SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN", "SQLITE_READONLY_CANTINIT")


def _missing(path: Path) -> ProjectionError:
    return ProjectionError(
        f"no projection database at {path}: run `eventstore worker` (or `eventstore up`) "
        "to build it, or point --db / EVENTSTORE_DB at it"
    )


def _not_ours(path: Path, what: str) -> ProjectionError:
    return ProjectionError(
        f"{path} {what}, so it is not a projection database; point --db / EVENTSTORE_DB at "
        "the file a worker writes (`eventstore worker` builds one)"
    )


def _check_file(path: Path, *, must_exist: bool) -> bool:
    """Refuse what is not a projection database before SQLite touches it: a directory, a file
    that is not SQLite, and (``must_exist``: readers) a missing or empty file. Returns whether
    the file has content."""
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except (FileNotFoundError, NotADirectoryError):  # (a parent that is a regular file)
        if must_exist:
            raise _missing(path) from None
        return False
    except IsADirectoryError:
        raise _not_ours(path, "is a directory") from None
    except OSError as exc:
        raise ProjectionError(
            f"cannot read projection database {path}: {exc.strerror or exc}"
        ) from exc
    if not header:
        if must_exist:
            raise _not_ours(path, "is empty (0 bytes)")
        return False
    if header != SQLITE_HEADER:
        raise _not_ours(path, "is not an SQLite database")
    return True


def _read_only_uri(path: Path, *, immutable: bool = False) -> str:
    return f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")


class DatabaseLock:
    """An exclusive lock on ``<db>.lock``: one writer (worker, rebuild) per database file.

    ``flock`` on a file beside the database, so the kernel releases it when the process dies
    (SIGKILL included) and a crashed worker never blocks the next one. The holder writes who it
    is into the file, for the refusal message. Releasing removes the file; that is safe because
    an acquirer checks that the file it locked is still the one at the path, else tries again.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, role: str = "worker") -> None:
        """Take the lock now or raise ``DatabaseLocked`` naming its holder (never waits)."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent is a regular file, or not writable
            raise ProjectionError(
                f"projection database {self.target}: cannot create its directory "
                f"{self.path.parent} ({exc.strerror or exc}); point --db / EVENTSTORE_DB at a "
                "writable place"
            ) from exc
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ProjectionError(
                    f"cannot create the lock file {self.path} of projection database "
                    f"{self.target}: {exc.strerror or exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DatabaseLocked(str(self.target), holder or "process") from None
            except OSError as exc:
                os.close(fd)
                raise ProjectionError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if not same:  # its holder released and removed it meanwhile: lock the new one
                os.close(fd)
                continue
            since = datetime.now(UTC).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{role} (pid {os.getpid()}, since {since})\n".encode(), 0)
            self._fd = fd
            return
        raise ProjectionError(f"cannot lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still holding it: whoever opened it meanwhile tries again
        os.close(fd)


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
            raise _missing(p)
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
            await asyncio.to_thread(_check_file, p, must_exist=False)
            try:
                conn = await aiosqlite.connect(p, isolation_level=None, timeout=30.0)
            except sqlite3.Error as exc:
                raise _translate(p, exc) from exc
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
        await asyncio.to_thread(_check_file, p, must_exist=True)
        wal = p.with_name(p.name + "-wal")
        immutable = False
        while True:
            try:
                conn = await aiosqlite.connect(
                    _read_only_uri(p, immutable=immutable), uri=True, isolation_level=None
                )
            except sqlite3.Error as exc:
                raise _translate(p, exc) from exc
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
                raise _translate(p, exc) from exc
            break
        try:
            await db._check_schema()
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
            raise _not_ours(self.path, "is an SQLite database without the eventstore projection "
                            "schema")  # fmt: skip
        if self.readonly:
            if not tables:
                raise _not_ours(self.path, "is an SQLite database without the eventstore "
                                "projection schema (no tables)")  # fmt: skip
            if current < SCHEMA_VERSION:
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
        await self.execute("PRAGMA busy_timeout=30000")
        await self.execute("PRAGMA temp_store=MEMORY")
        await self.execute("PRAGMA cache_size=-65536")
        await self.migrate()
        row = await self.fetchone("SELECT value FROM meta WHERE key = 'generation'")
        self.generation = row[0] if row else ""

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
            for sql in statements:
                await self.execute(sql)
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

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self.conn.close()
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
            raise _translate(self.path, exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            await self.conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self.conn.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise _translate(self.path, exc) from exc

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

    # -- the registry ----------------------------------------------------------------------

    async def meta(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    async def projections(self) -> list[ProjectionInfo]:
        rows = await self.fetchall(
            "SELECT name, code_version, checkpoint, checkpoint_us, updated_us FROM projections "
            "ORDER BY name"
        )
        return [ProjectionInfo(r[0], r[1], r[2], from_us(r[3]), from_us(r[4])) for r in rows]

    async def projection(self, name: str) -> ProjectionInfo | None:
        for info in await self.projections():
            if info.name == name:
                return info
        return None

    async def reset(self, projection: Projection[Any]) -> None:
        """Forget everything a projection folded (inside the caller's transaction)."""
        for table in ("states", "snapshots", "conflicts", "quarantine"):
            await self.execute(f"DELETE FROM {table} WHERE projection = ?", (projection.name,))
        for table in projection.tables:
            await self.execute(f'DELETE FROM "{table}"')
        await self.execute(
            "INSERT OR REPLACE INTO projections (name, code_version, checkpoint) VALUES (?, ?, 0)",
            (projection.name, projection.version),
        )

    # -- reading states --------------------------------------------------------------------

    async def load_states(
        self, codec: StateCodec, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], AggregateState]:
        """The stored states of these aggregates (absent ones are left out)."""
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        out: dict[tuple[str, str], AggregateState] = {}
        for agg_type, ids in by_type.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = await self.fetchall(
                    f"SELECT {STATE_COLUMNS} FROM states WHERE projection = ? AND "
                    f"aggregate_type = ? AND aggregate_id IN ({marks})",
                    (codec.name, agg_type, *chunk),
                )
                for row in rows:
                    agg = codec.load(row)
                    out[agg.key] = agg
        return out

    async def state(
        self, codec: StateCodec, aggregate_type: str, aggregate_id: str
    ) -> AggregateState | None:
        found = await self.load_states(codec, [(aggregate_type, aggregate_id)])
        return found.get((aggregate_type, aggregate_id))

    async def count(self, table: str, projection: str) -> int:
        sql = f"SELECT count(*) FROM {table} WHERE projection = ?"
        row = await self.fetchone(sql, (projection,))
        return int(row[0]) if row else 0
