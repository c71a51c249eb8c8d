"""The projection database file as a file: what a file must look like before SQLite opens
it, and connections whose worker thread never keeps a process alive.

``check_file`` reads a file's first bytes, so it must never run on a file this process
already has open through SQLite: closing that descriptor would drop every POSIX lock the
process's SQLite connections hold on it (SQLite's documented caveat). ``OPEN_HERE`` counts
the connections ``ProjectionDB`` holds per file, and a file in it is not read again.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from eventstore import ProjectionError

__all__ = [
    "OPEN_HERE",
    "SQLITE_HEADER",
    "check_file",
    "connect",
    "file_key",
    "missing",
    "not_ours",
    "read_only_uri",
    "translate",
]


async def connect(database: str | Path, **kwargs: Any) -> aiosqlite.Connection:
    """``aiosqlite.connect`` with a daemon worker thread. aiosqlite's thread is not a daemon,
    so one connection nobody closed (an exception before ``close``, a forgotten
    ``ProjectionDB``) would keep the process alive forever after its last line; a daemon
    thread ends with the process, and SQLite's transactions make that safe: what was not
    committed is rolled back when the file is next opened."""
    conn = aiosqlite.connect(database, **kwargs)
    conn._thread.daemon = True  # before awaiting it: awaiting starts the thread
    return await conn


def translate(path: Path, exc: sqlite3.Error) -> ProjectionError:
    return ProjectionError(f"projection database {path}: {exc}")


SQLITE_HEADER = b"SQLite format 3\x00"


def missing(path: Path) -> ProjectionError:
    return ProjectionError(
        f"no projection database at {path}: run `eventstore worker` (or `eventstore up`) "
        "to build it, or point --db / EVENTSTORE_DB at it"
    )


def not_ours(path: Path, what: str) -> ProjectionError:
    return ProjectionError(
        f"{path} {what}, so it is not a projection database; point --db / EVENTSTORE_DB at "
        "the file a worker writes (`eventstore worker` builds one)"
    )


# Files this process has open through ProjectionDB, by (device, inode): how many connections.
OPEN_HERE: dict[tuple[int, int], int] = {}


def file_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # a stat opens no descriptor
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def check_file(path: Path, *, must_exist: bool) -> bool:
    """Refuse what is not a projection database before SQLite touches it: a directory, a file
    that is not SQLite, and (``must_exist``: readers) a missing or empty file. Returns whether
    the file has content.

    A file this process already has open was checked then and is not read again: closing a
    descriptor of our own on it would drop every POSIX lock this process's SQLite connections
    hold on it (SQLite's documented caveat), and another process could then checkpoint and
    truncate the write-ahead log under the writer."""
    if (key := file_key(path)) is not None and OPEN_HERE.get(key):
        return True
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except (FileNotFoundError, NotADirectoryError):  # (a parent that is a regular file)
        if must_exist:
            raise missing(path) from None
        return False
    except IsADirectoryError:
        raise not_ours(path, "is a directory") from None
    except OSError as exc:
        raise ProjectionError(
            f"cannot read projection database {path}: {exc.strerror or exc}"
        ) from exc
    if not header:
        if must_exist:
            raise not_ours(path, "is empty (0 bytes)")
        return False
    if header != SQLITE_HEADER:
        raise not_ours(path, "is not an SQLite database")
    return True


def read_only_uri(path: Path, *, immutable: bool = False) -> str:
    return f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")
