"""Rebuild: fold the whole log into a fresh file beside the live one, then swap it in.

The live file keeps serving (and its worker keeps folding) while the fresh one catches up.
Once it is caught up, its content replaces the live file's in one SQLite transaction (the
backup API into the live file, under its own write lock): readers see the old or the new
database, never a mix, and no file is renamed under an open connection (which in WAL mode could
pair the new file with the old one's write-ahead log). The new content carries a new
generation, so a running worker notices at its next commit and resumes from the rebuilt
checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from eventstore import EventStore, ProjectionError, get_logger
from projections.db import ProjectionDB, copy_database
from projections.lock import DatabaseLock
from projections.projection import Projection
from projections.recorder import Recorder
from projections.runner import CommitInfo, Runner, RunnerSettings

__all__ = ["RebuildResult", "rebuild"]

log = get_logger("projections.rebuild")


class RebuildResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where the rebuilt database went and how far it got."""

    db: str
    projections: list[str]
    checkpoint: int
    messages: int
    seconds: float


def _files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _remove(path: Path) -> None:
    for f in _files(path):
        # A parent that is a regular file: nothing is there to remove.
        with contextlib.suppress(NotADirectoryError):
            f.unlink(missing_ok=True)


async def rebuild(
    store: EventStore,
    db_path: str | Path,
    projections: Sequence[Projection[Any]],
    *,
    settings: RunnerSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildResult:
    """Rebuild every given projection from the log and swap the result into ``db_path``.

    One rebuild per database at a time: it holds the lock of ``<db>.rebuild`` (its fresh file)
    throughout, so a second one is refused (``DatabaseLocked``) before it touches that file. A
    worker holding the live file's lock does not stop a rebuild: the swap takes SQLite's write
    lock and brings a new generation, which the worker notices at its next commit.

    ``progress(folded_seq, head)`` is called after every committed batch. The projections
    must include every projection the live file holds (or its data would be lost). It folds
    with the rules stored with the log (``store.rules``), whatever the live file was folded
    with.
    """
    live = Path(db_path)
    fresh = live.with_name(live.name + ".rebuild")
    with DatabaseLock(fresh).holding("rebuild"):
        started = time.perf_counter()
        names = [p.name for p in projections]
        if await asyncio.to_thread(live.exists):
            async with await ProjectionDB.open(live) as current:
                held = [i.name for i in await Recorder(current).projections()]
            left_out = sorted(set(held) - set(names))
            if left_out:
                raise ProjectionError(
                    f"{live} also holds projections {left_out}, which this rebuild does not load; "
                    "load them too (--projection module:object or the config file)"
                )
        await asyncio.to_thread(_remove, fresh)
        try:
            checkpoint, messages = await _fold_fresh(store, fresh, projections, settings, progress)
            try:
                await asyncio.to_thread(copy_database, fresh, live)
            except sqlite3.Error as exc:
                raise ProjectionError(
                    f"could not swap the rebuilt database into {live}: {exc}"
                ) from exc
        finally:
            # Whatever stopped the rebuild (an error, a cancellation), the fresh file goes.
            try:
                _remove(fresh)
            except OSError as exc:
                log.warning("could not remove the rebuild file", path=str(fresh), error=str(exc))
    seconds = time.perf_counter() - started
    log.info(
        "projections rebuilt",
        db=str(live),
        projections=names,
        checkpoint=checkpoint,
        messages=messages,
        seconds=round(seconds, 3),
    )
    return RebuildResult(
        db=str(live), projections=names, checkpoint=checkpoint, messages=messages, seconds=seconds
    )


async def _fold_fresh(
    store: EventStore,
    fresh: Path,
    projections: Sequence[Projection[Any]],
    settings: RunnerSettings | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Fold the log into the fresh file until it is caught up: (checkpoint, messages)."""
    head = await store.head()
    db = await ProjectionDB.open(fresh)
    try:
        runner = Runner(store, db, projections, settings=settings)

        def report(info: CommitInfo) -> None:
            if progress is not None:
                progress(info.last_seq, max(head, info.last_seq))

        runner.on_commit.append(report)
        await runner.open()
        batch = runner.settings.batch_size
        # Catch up, then again with whatever arrived meanwhile, until what is left is small.
        for _ in range(100):
            await runner.run(follow=False, until=head)
            head = await store.head()
            if head - runner.checkpoint <= batch:
                break
        await runner.run(follow=False, until=head)
        if runner.failures:  # never swap in a file where a projection stopped half way
            raise ProjectionError("; ".join(f.error for f in runner.failures.values()))
        await db.truncate_wal()
        return runner.checkpoint, runner.events_applied
    finally:
        await db.close()
