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

import msgspec

from eventstore.errors import ForeignDatabase
from eventstore.store import EventStore, StreamIdentity
from projections.db import ProjectionDB

__all__ = [
    "RecordedStream",
    "check_database",
    "check_stream_name",
    "identity_problem",
    "recorded_stream",
]

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
    row = await db.fetchone("SELECT max(checkpoint) FROM projections")
    return int(row[0] or 0) if row else 0


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
