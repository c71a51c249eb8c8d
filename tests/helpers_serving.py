"""Shared by the serving tests: a small log, a worker process that has folded it, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from helpers_projections import scalar, start_worker, tail, wait_ready

from eventstore import EventStore, NewEvent


def checkpoint(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return int(scalar(db, "SELECT min(checkpoint) FROM projections") or 0)
    except Exception:  # not created yet
        return 0


async def wait_folded(db: Path, seq: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the worker's database has folded ``seq`` (it died, or 30 s: fail, with its log)."""
    deadline = time.monotonic() + 30
    while checkpoint(db) < seq:
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.02)


async def small_log(store: EventStore) -> int:
    """Agents and tasks with numbers and strings in their states; returns the head."""
    for i in range(7):
        await store.append("agent", f"a{i}", NewEvent("Created", {"n": i % 4, "tag": f"t{i % 2}"}))
    await store.append("agent", "a1", NewEvent("Noted", {"n": "3", "extra": {"k": [1, 2]}}))
    await store.append("agent", "a2", NewEvent("Noted", {"n": 3.0, "flag": True}))
    await store.append("agent", "a.dot/x y", NewEvent("Created", {"n": None}))
    for i in range(5):
        await store.append("task", f"t{i}", NewEvent("Queued", {"n": 3, "prio": i}))
    await store.append("task", "t0", NewEvent("Done", {"prio": None}))
    return await store.head()


@contextlib.asynccontextmanager
async def running_worker(
    store: EventStore, db: Path, log: Path, *extra: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A worker process on ``store``'s stream that has folded the log's head; killed after."""
    proc = start_worker(store.url, store.settings, db, log, *extra)
    try:
        await wait_folded(db, await store.head(), proc, log)
        await wait_serving(db, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 20)


async def wait_serving(db: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until this worker (not an earlier one of the same log) logged that its query service
    is up."""
    await wait_ready(proc, log, event="query service started")


def sqlite_states(db: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every current state of the entities projection, straight from the file."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT aggregate_type, aggregate_id, version, seq, state, vclock, lamport "
            "FROM states WHERE projection = 'entities'"
        ).fetchall()
    finally:
        con.close()
    return {
        (t, i): {
            "version": v,
            "seq": s,
            "state": json.loads(st),
            "vclock": json.loads(vc),
            "lamport": lam,
        }
        for t, i, v, s, st, vc, lam in rows
    }
