"""Which stream a projection database belongs to, and the checks that keep it to that stream.

A projection database is the fold of one stream's log. Its checkpoints are stream sequences
and its states end at versions of that log, so folding another log into it (the store was
reset and the database kept, or ``--db`` names another store's file) would mix two histories
without a word: the new log's first events hide under the old checkpoint, later ones land on
states they never belonged to.

So the file records the stream's identity (``EventStore.stream_identity``: the name and the
server's creation time of the stream) in its ``meta`` table the first time a runner opens it,
and every runner, ``status`` and ``verify`` compares. A database written before identities
were recorded (only the name) adopts the stream's creation time when its checkpoints are within
the log, and is refused when one is past the head. Nothing is repaired silently: the worker's
``--reset`` drops the file's projection data and folds the stream from seq 1, on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec

from eventstore import EventStore, ForeignDatabase, NotConnected, StreamIdentity, get_logger
from projections.db import ProjectionDB
from projections.recorder import Recorder

__all__ = [
    "RecordedStream",
    "StreamWatch",
    "bind",
    "check_database",
    "check_stream_name",
    "identity_problem",
    "recorded_stream",
]

log = get_logger("projections.runner")

STREAM_CHECK_INTERVAL = 5.0  # seconds between checks that the log is still the file's stream
NAME_KEY = "stream"
CREATED_KEY = "stream_created"


class RecordedStream(msgspec.Struct, frozen=True):
    """What a database says about its stream (``None``: not recorded)."""

    name: str | None
    created: str | None


async def recorded_stream(db: ProjectionDB) -> RecordedStream:
    return RecordedStream(await db.meta(NAME_KEY), await db.meta(CREATED_KEY))


async def record_stream(db: ProjectionDB, identity: StreamIdentity) -> None:
    """Record the stream's identity (inside the caller's transaction)."""
    await db.set_meta(NAME_KEY, identity.name)
    if identity.created:
        await db.set_meta(CREATED_KEY, identity.created)


async def max_checkpoint(db: ProjectionDB) -> int:
    return await Recorder(db).max_checkpoint()


async def bind(store: EventStore, db: ProjectionDB, current: StreamIdentity) -> None:
    """Refuse another stream's file; record the stream in a new file, or adopt it in one
    written before identities were recorded (inside the caller's write transaction)."""
    recorded = await recorded_stream(db)
    checkpoint = await max_checkpoint(db)
    if recorded.name is not None or checkpoint > 0:
        head = await store.head()  # after the checkpoints: no commit passes it
        problem = identity_problem(recorded, current, checkpoint, head)
        if problem is not None:
            raise refuse(db, problem)
    if recorded.name is None or (recorded.created is None and current.created):
        if recorded.name is not None:
            log.info(
                "projection database adopted its stream's identity",
                db=str(db.path),
                stream=current.name,
                created=current.created,
                checkpoint=checkpoint,
            )
        await record_stream(db, current)


def identity_problem(
    recorded: RecordedStream, current: StreamIdentity, checkpoint: int, head: int
) -> str | None:
    """Why a database with this record and (highest) checkpoint is not a fold of ``current``
    whose head is ``head``, or ``None``. Read the checkpoint before the head: a worker's
    commits never pass the head as it is after them."""
    problems: list[str] = []
    if recorded.name is not None and recorded.name != current.name:
        problems.append(f"it folds stream {recorded.name!r}, not {current.name!r}")
    elif recorded.created and current.created and recorded.created != current.created:
        problems.append(
            f"it folds the stream {current.name!r} created at {recorded.created}, but the "
            f"stream of that name is one created at {current.created} (the store was reset, "
            "or this is another server's stream)"
        )
    if checkpoint > head:
        problems.append(f"its checkpoint (seq {checkpoint}) is past the stream's head (seq {head})")
    return "; ".join(problems) or None


async def check_database(store: EventStore, db: ProjectionDB) -> str | None:
    """Why ``db`` is not a fold of ``store``'s stream, or ``None`` (reads only)."""
    async with db.snapshot():
        recorded = await recorded_stream(db)
        checkpoint = await max_checkpoint(db)
    identity = await store.stream_identity()
    head = await store.head()
    return identity_problem(recorded, identity, checkpoint, head)


def refuse(db: ProjectionDB, problem: str) -> ForeignDatabase:
    return ForeignDatabase(str(db.path), problem)


async def check_stream_name(db: ProjectionDB, name: str) -> str | None:
    """Why ``db`` is not a fold of the stream called ``name``, from the file alone (no server:
    the creation time and the head are not known), or ``None``."""
    recorded = await recorded_stream(db)
    if recorded.name is not None and recorded.name != name:
        return f"it folds stream {recorded.name!r}, not {name!r}"
    return None


class StreamWatch:
    """A runner's confirmation that the log it folds is still its file's stream.

    Asked again before a batch after every reconnect (a server restarted on a reset store
    serves another stream of the same name) and every ``STREAM_CHECK_INTERVAL`` seconds.
    """

    def __init__(self, store: EventStore, db: ProjectionDB) -> None:
        self.store = store
        self.db = db
        self.identity: StreamIdentity | None = None  # the stream the file folds (once open)
        self._checked_at = 0.0  # when it was last confirmed (monotonic)
        self._reconnects = 0  # the connection's reconnect count at that moment

    def reconnects(self) -> int:
        stats = getattr(self.store.nc, "stats", None)
        return int(stats.get("reconnects", 0)) if isinstance(stats, dict) else 0

    def confirmed(self, identity: StreamIdentity, when: float, reconnects: int) -> None:
        self.identity = identity
        self._checked_at, self._reconnects = when, reconnects

    async def check_file(self) -> None:
        """The file (swapped by a rebuild, perhaps) still records this stream."""
        if self.identity is not None:
            recorded = await recorded_stream(self.db)
            if problem := identity_problem(recorded, self.identity, 0, 0):
                raise refuse(self.db, problem)

    async def check(self, stopping: Callable[[], bool]) -> bool:
        """Before a batch is folded: the log is still this file's stream (``ForeignDatabase``
        if not). While the server cannot answer, the batch waits; False if ``stopping`` came
        meanwhile (the batch is left for the next start to read again)."""
        if self.identity is None:
            return True
        now, reconnects = time.monotonic(), self.reconnects()
        if reconnects == self._reconnects and now - self._checked_at < STREAM_CHECK_INTERVAL:
            return True
        while True:
            try:
                current = await self.store.stream_identity()
                break
            except NotConnected:
                if stopping():
                    return False
                await asyncio.sleep(0.5)
        recorded = RecordedStream(self.identity.name, self.identity.created or None)
        if (problem := identity_problem(recorded, current, 0, 0)) is not None:
            raise refuse(self.db, problem)
        self.confirmed(self.identity, now, reconnects)
        return True
