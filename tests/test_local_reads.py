"""How time travel reads the file's copy of the events (``projections.eventcopy.read_local``):
at once, on a read-only connection of its own beside the database's, closed with it; through
the database connection's thread where that reader would wait for a lock."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from eventstore import EventStore, NewEvent
from projections import EntitiesProjection, ProjectionDB, Runner, TimeTravel


def descriptors(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own descriptor)
            count += os.readlink(fds / fd) == str(path)
    return count


async def test_a_file_locked_by_its_own_connection_is_read_through_that_connection(
    store: EventStore, tmp_path: Path
) -> None:
    """While the database's connection holds the file exclusively (another connection would
    wait), past states are still read from the file, through that connection, right, and
    with no message from the server."""
    await store.append("agent", "x", [NewEvent("Changed", {"i": i}) for i in range(1, 201)])
    async with await ProjectionDB.open(tmp_path / "x.db") as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        await db.execute("PRAGMA locking_mode=EXCLUSIVE")
        async with db.transaction():  # the first write takes the lock, and keeps it
            await db.execute("UPDATE meta SET value = value WHERE key = 'generation'")
        tt = TimeTravel(store, EntitiesProjection(), db)
        await tt.state_at("agent", "x", version=1)  # the rules check, once
        for version in (150, 42, 200):
            before = store.nc.stats["in_msgs"]
            got = await tt.state_at("agent", "x", version=version)
            assert store.nc.stats["in_msgs"] == before, version
            assert (got.version, got.state) == (version, {"i": version})


async def test_the_reader_is_closed_with_the_database(store: EventStore, tmp_path: Path) -> None:
    """Reading past states opens one more descriptor on the file, and closing the database
    closes it too (a descriptor left open would outlive the database's own, and closing it
    later would drop the locks of this process's other connections to the file)."""
    await store.append("agent", "y", [NewEvent("Changed", {"i": i}) for i in range(1, 121)])
    path = tmp_path / "y.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        opened = descriptors(path)
        tt = TimeTravel(store, EntitiesProjection(), db)
        assert (await tt.state_at("agent", "y", version=110)).replayed == 10
        assert (await tt.state_at("agent", "y", version=20)).state == {"i": 20}
        assert descriptors(path) == opened + 1
    assert descriptors(path) == 0
