"""Brute-force folds for the projection tests: written apart from the library, on purpose.

Each test compares what the projections library stored or answered with these independent,
obviously-correct folds of the events read back from the log (no snapshots, no SQLite, no
shared code with ``projections``), so a bug in the library cannot hide in both.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from eventstore import Event, EventStore, StreamSettings

ROOT = Path(__file__).resolve().parent.parent


def rfc7386(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch, straight from the RFC's pseudo-code (copying, never mutating)."""
    if isinstance(patch, dict):
        result = dict(target) if isinstance(target, dict) else {}
        for name, value in patch.items():
            if value is None:
                result.pop(name, None)
            else:
                result[name] = rfc7386(result.get(name), value)
        return result
    return patch


def concurrent(a: dict[str, int], b: dict[str, int]) -> bool:
    keys = set(a) | set(b)
    return any(a.get(k, 0) < b.get(k, 0) for k in keys) and any(
        a.get(k, 0) > b.get(k, 0) for k in keys
    )


def written_keys(ev: Event) -> set[tuple[str, ...]]:
    """The key paths an entities event writes: leaves of its data, ``status`` for a transition."""
    out: set[tuple[str, ...]] = set()
    stack: list[tuple[tuple[str, ...], Any]] = [((), ev.data or {})]
    while stack:
        path, value = stack.pop()
        for k, v in value.items():
            if isinstance(v, dict) and v:
                stack.append(((*path, k), v))
            else:
                out.add((*path, k))
    if ev.transition is not None:
        out.add(("status",))
    return out


def keys_overlap(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> bool:
    return any(p[: len(q)] == q or q[: len(p)] == p for p in a for q in b)


def brute_entities(events: list[Event]) -> dict[tuple[str, str], dict[str, Any]]:
    """The ``entities`` fold of a clean history (log-order resolution), aggregate by aggregate;
    a conflict is a concurrent pair that writes overlapping key paths."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ev in events:
        key = (ev.aggregate_type, ev.aggregate_id)
        agg = out.setdefault(
            key,
            {
                "version": 0,
                "seq": 0,
                "state": {},
                "vclock": {},
                "lamport": 0,
                "conflicts": [],
                "last_clock": None,
                "last_keys": set(),
            },
        )
        assert ev.version == agg["version"] + 1, f"history of {key} is not contiguous"
        if (
            agg["last_clock"] is not None
            and concurrent(ev.vclock, agg["last_clock"])
            and keys_overlap(written_keys(ev), agg["last_keys"])
        ):
            agg["conflicts"].append(ev.seq)
        state = rfc7386(agg["state"], ev.data)
        if ev.transition is not None:
            state = {**state, "status": ev.transition.to}
        agg["state"] = state
        agg["version"] = ev.version
        agg["seq"] = ev.seq
        for k, v in ev.vclock.items():
            if v > agg["vclock"].get(k, 0):
                agg["vclock"][k] = v
        agg["lamport"] = max(agg["lamport"], ev.lamport)
        agg["last_clock"] = dict(ev.vclock)
        agg["last_keys"] = written_keys(ev)
    return out


async def log_events(store: EventStore) -> list[Event]:
    return [ev async for ev in store.read_all()]


def stored_states(db: Path, projection: str = "entities") -> dict[tuple[str, str], dict[str, Any]]:
    """The states table read with plain sqlite3 (not through the library)."""
    import json

    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT aggregate_type, aggregate_id, version, seq, state, vclock, lamport "
            "FROM states WHERE projection = ?",
            (projection,),
        ).fetchall()
    finally:
        con.close()
    return {
        (r[0], r[1]): {
            "version": r[2],
            "seq": r[3],
            "state": json.loads(r[4]),
            "vclock": json.loads(r[5]),
            "lamport": r[6],
        }
        for r in rows
    }


def scalar(db: Path, sql: str, *params: Any) -> Any:
    con = sqlite3.connect(db)
    try:
        row = con.execute(sql, params).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def damage(db: Path, *statements: str) -> None:
    """Change a projection file behind eventstore's back (what a bad disk or hand does)."""
    con = sqlite3.connect(db)
    try:
        for sql in statements:
            con.execute(sql)
        con.commit()
    finally:
        con.close()


async def log_events_and_garbage(store: EventStore) -> tuple[list[Event], list[int]]:
    """Every decodable event of the log, and the sequences of the messages that are not."""
    from eventstore import InvalidEvent, decode_message

    events: list[Event] = []
    bad: list[int] = []
    async for batch in store.raw(1):
        for m in batch:
            try:
                events.append(decode_message(store.settings.prefix, m))
            except InvalidEvent:
                bad.append(m.seq)
    return events, bad


def tail(log: Path, size: int = 3000) -> str:
    """The end of a subprocess's log, for assertion messages."""
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


# Each worker process start_worker spawned: its log, and how long the log was before it.
_SPAWNED: weakref.WeakKeyDictionary[subprocess.Popen[Any], tuple[Path, int]] = (
    weakref.WeakKeyDictionary()
)


def start_worker(
    url: str,
    settings: StreamSettings,
    db: Path,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """A real worker process (``python -m consumers.cli_worker``) on ``settings``' stream,
    logging (on stdout, as a service does) into ``log``; the environment's EVENTSTORE_ and
    systemd variables are left out, ``env`` added. ``await wait_ready(proc)`` waits for it."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTSTORE_", "NOTIFY_", "WATCHDOG_"))
    }
    command = [sys.executable, "-m", "consumers.cli_worker", "--url", url, "--stream",
               settings.name, "--prefix", settings.prefix, "--db", str(db), *extra]  # fmt: skip
    with log.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(
            command, cwd=ROOT, env=base | (env or {}), stdout=out, stderr=subprocess.STDOUT
        )
    _SPAWNED[proc] = (log, offset)
    return proc


async def wait_ready(
    proc: subprocess.Popen[Any],
    log: Path | None = None,
    *,
    event: str = "worker ready",
    timeout: float = 30.0,
) -> None:
    """Until this process has logged ``event`` (default "worker ready": its database open and
    accepted, about to follow the log). Only what it wrote counts, never an earlier worker's
    line in a shared log: for a ``start_worker`` process from where the log ended when it
    started, for another one (``log`` given) the whole file. Fails, with the log's end, if the
    process dies first or ``timeout`` passes."""
    spawned, since = _SPAWNED.get(proc, (log, 0))
    if log is None:
        assert spawned is not None, "wait_ready: give the log of a process not from start_worker"
        log = spawned
    elif log != spawned:
        since = 0
    mark = f'"{event}"'.encode()
    deadline = time.monotonic() + timeout
    while not (log.exists() and mark in log.read_bytes()[since:]):
        assert proc.poll() is None, f"the worker exited {proc.returncode}: {tail(log)}"
        assert time.monotonic() < deadline, f"no {event!r} within {timeout} s: {tail(log)}"
        await asyncio.sleep(0.02)
