"""A file opened twice in one process keeps its SQLite locks (projections.dbfile).

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
included. If the second open read the header through a descriptor of its own, another
process's last connection would find the file unlocked, checkpoint the write-ahead log and
delete it under the running writer (how a worker's file was once corrupted by the query
service opening it again). The proof: after the second open and close, a foreign process's
connection closes and the writer's -wal file is still there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from projections import ProjectionDB


def _foreign_connection_closes(db: Path) -> None:
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM meta').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=30)


async def test_a_second_open_in_the_process_keeps_the_writers_locks(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    wal = path.with_name("p.db-wal")
    async with await ProjectionDB.open(path) as writer:
        await writer.set_meta("probe", "1")  # something in the write-ahead log
        assert wal.exists()
        for readonly in (True, False):
            second = await ProjectionDB.open(path, readonly=readonly)
            assert await second.meta("probe") == "1"
            await second.close()
        _foreign_connection_closes(path)
        assert wal.exists(), "the writer's locks were dropped: its -wal was checkpointed away"
        assert await writer.meta("probe") == "1"
        rows = await writer.fetchall("PRAGMA integrity_check")
        assert rows[0][0] == "ok"
