"""The projection database file: WAL, recorded schema migrations, refusing what it cannot read."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from projections import SCHEMA_VERSION, ProjectionDB, ProjectionError


async def test_a_new_file_is_in_wal_mode_with_its_schema_recorded(tmp_path: Path) -> None:
    """Opening creates the schema, records each migration and the schema version, uses WAL."""
    path = tmp_path / "new.db"
    async with await ProjectionDB.open(path) as db:
        assert await db.schema_version() == SCHEMA_VERSION
        assert db.generation
        generation = db.generation
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"projections", "states", "snapshots", "conflicts", "quarantine"} <= tables
    finally:
        con.close()
    async with await ProjectionDB.open(path) as again:  # reopening migrates nothing
        assert again.generation == generation
        rows = await again.fetchall("SELECT count(*) FROM schema_migrations")
        assert rows[0][0] == SCHEMA_VERSION


async def test_a_file_of_schema_1_is_upgraded_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by the first schema gains the later migrations on open, keeps its
    rows and its generation, and records each migration once."""
    from projections import db as db_module

    path = tmp_path / "old.db"
    monkeypatch.setattr(db_module, "MIGRATIONS", db_module.MIGRATIONS[:1])
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 1)
    async with await ProjectionDB.open(path) as old:
        async with old.transaction():
            await old.set_meta("stream", "S")
        generation = old.generation
    monkeypatch.undo()
    async with await ProjectionDB.open(path) as new:
        assert await new.schema_version() == SCHEMA_VERSION == 4
        assert new.generation == generation
        assert await new.meta("stream") == "S"
        rows = await new.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [1, 2, 3, 4]
        index = await new.fetchone(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'snapshots_by_time'"
        )
        assert index is not None


async def test_a_file_from_a_newer_eventstore_is_refused(tmp_path: Path) -> None:
    """A schema version above the one this code knows is refused, not misread."""
    path = tmp_path / "future.db"
    async with await ProjectionDB.open(path):
        pass
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(ProjectionError, match="newer than this eventstore understands"):
        await ProjectionDB.open(path)


async def test_a_missing_file_is_an_error_when_it_must_exist(tmp_path: Path) -> None:
    """Queries do not create an empty database; they say how to build one."""
    with pytest.raises(ProjectionError, match="run `eventstore worker`"):
        await ProjectionDB.open(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


async def test_readers_are_not_blocked_by_an_open_write_transaction(tmp_path: Path) -> None:
    """In WAL mode a reader sees the last commit while the writer holds its transaction."""
    path = tmp_path / "wal.db"
    async with await ProjectionDB.open(path) as writer, await ProjectionDB.open(path) as reader:
        await writer.execute("INSERT INTO meta VALUES ('k', 'committed')")
        async with writer.transaction():
            await writer.execute("UPDATE meta SET value = 'pending' WHERE key = 'k'")
            async with asyncio.timeout(2):
                assert await reader.meta("k") == "committed"
        assert await reader.meta("k") == "pending"


async def test_sqlite_errors_become_projection_errors(tmp_path: Path) -> None:
    """A failing statement raises ProjectionError naming the file, never sqlite3.Error."""
    async with await ProjectionDB.open(tmp_path / "err.db") as db:
        with pytest.raises(ProjectionError, match=r"err\.db: no such table"):
            await db.execute("SELECT * FROM no_such_table")
