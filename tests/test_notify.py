"""The worker speaks systemd's notify protocol to a real datagram socket: READY only after the
start-up catch-up, STATUS with checkpoint and lag, WATCHDOG at half of WATCHDOG_USEC and only
while the fold loop is healthy, STOPPING on SIGTERM and exit 0; without NOTIFY_SOCKET, nothing."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_projections import start_worker

from consumers.notify import Notifier, watchdog_seconds
from eventstore import AppendRequest, EventStore, NewEvent, StreamSettings

STATUS = re.compile(r"checkpoint (\d+), lag (\d+)")


def db_checkpoint(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=0.2) as conn:
            row = conn.execute("SELECT checkpoint FROM projections WHERE name = 'entities'")
            found = row.fetchone()
        return int(found[0]) if found else 0
    except sqlite3.Error:
        return -1


class Listener:
    """A bound AF_UNIX datagram socket; a thread records every message with its arrival time
    (and, for READY=1, the database's checkpoint at that moment)."""

    def __init__(self, address: str | bytes, db: Path, *, lock_first: bool = False) -> None:
        self.lock_first = lock_first
        self.lock: sqlite3.Connection | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.db = db
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.ready_checkpoint: int | None = None
        self._done = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._done:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if self.lock_first:  # wedge the catch-up from its start
                self.lock_first = False
                self.lock = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
                self.lock.execute("BEGIN EXCLUSIVE")
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if "READY" in fields and self.ready_checkpoint is None:
                self.ready_checkpoint = db_checkpoint(self.db)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [t for t, f in list(self.messages) if key in f and since <= t <= until]

    def unlock(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, f in list(self.messages) if "STATUS" in f]

    def close(self) -> None:
        self._done = True
        self._thread.join()
        self.unlock()
        self.sock.close()


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def append(store: EventStore, n: int, tag: str) -> int:
    results = await store.append_many(
        AppendRequest("agent", f"{tag}{i % 20}", [NewEvent("E", {"i": i})]) for i in range(n)
    )
    return max(r.last_seq for r in results)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=15)


async def test_ready_status_watchdog_stopping(
    nats_url: str, settings: StreamSettings, store: EventStore, tmp_path: Path
) -> None:
    """READY=1 comes only once the events already in the log are committed: a catch-up held
    up by a database lock repeats EXTEND_TIMEOUT_USEC and STATUS (checkpoint, lag) well before
    each expires, READY follows the release; then STATUS lines carry checkpoint and lag,
    WATCHDOG=1 comes every half of WATCHDOG_USEC, and SIGTERM gives STOPPING=1 and exit 0."""
    head = await append(store, 5000, "a")
    db = tmp_path / "w.db"
    listener = Listener(str(tmp_path / "notify.sock"), db, lock_first=True)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    proc = start_worker(nats_url, settings, db, tmp_path / "worker.log", env=env)
    try:
        await until(lambda: listener.lock is not None, 30, "the first note")
        await asyncio.sleep(2.6)  # the catch-up is held up
        assert not listener.times("READY")
        released = time.monotonic()
        listener.unlock()
        await until(lambda: bool(listener.times("READY")), 30, "READY=1")
        assert listener.ready_checkpoint is not None and listener.ready_checkpoint >= head
        ready_at = listener.times("READY")[0]
        first = listener.messages[0][1]
        grant = int(first["EXTEND_TIMEOUT_USEC"]) / 1e6
        extends = listener.times("EXTEND_TIMEOUT_USEC")
        assert extends[0] == listener.messages[0][0] and max(extends) <= ready_at
        assert len(extends) >= 5, extends  # repeated while the catch-up ran ...
        assert max(b - a for a, b in itertools.pairwise(extends)) < grant / 2  # ... in time
        catching = [s for s in listener.statuses() if s.startswith("catching up")]
        lags = [int(m[2]) for s in catching if (m := STATUS.search(s))]
        assert len(lags) >= 5 and all(0 < lag <= head for lag in lags), catching
        assert ready_at > released
        ready = next(f for _, f in listener.messages if "READY" in f)
        assert ready["READY"] == "1" and "caught up" in ready["STATUS"]
        assert "serving queries and the change feed" in ready["STATUS"]

        more = await append(store, 200, "b")
        following = f"checkpoint {more}, lag 0"
        await until(lambda: any(following in s for s in listener.statuses()), 15, following)
        for text in listener.statuses():
            if text.startswith(("following", "catching up")):
                assert STATUS.search(text) and "events/s" in text, text

        started = time.monotonic()
        await asyncio.sleep(3.2)
        pings = listener.times("WATCHDOG", since=started)
        assert 5 <= len(pings) <= 8, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.3 < g < 0.8 for g in gaps), gaps

        stopping_from = time.monotonic()
        assert stop(proc) == 0
        assert listener.times("STOPPING", since=stopping_from)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


async def test_wedged_commit_stops_the_pings(
    nats_url: str, settings: StreamSettings, store: EventStore, tmp_path: Path
) -> None:
    """With an abstract @socket: while the database is locked (BEGIN EXCLUSIVE) and events
    arrive, the commit hangs and no WATCHDOG=1 comes for more than two watchdog intervals; once
    the lock is released the batch commits and the pings come again."""
    db = tmp_path / "w.db"
    name = f"eventstore-test-{os.getpid()}-{settings.name}"
    listener = Listener(b"\0" + name.encode(), db)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"}
    proc = start_worker(nats_url, settings, db, tmp_path / "worker.log", env=env)
    lock = None
    try:
        await until(lambda: bool(listener.times("READY")), 30, "READY=1")
        await until(lambda: len(listener.times("WATCHDOG")) >= 2, 5, "pings")
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        head = await append(store, 100, "c")
        appended = time.monotonic()
        await asyncio.sleep(4.6)  # far below the worker's 30 s busy timeout
        silent = listener.times("WATCHDOG", since=appended + 1.6)
        assert silent == [], "pinged while the commit hung"
        assert listener.times("WATCHDOG", since=appended - 2, until=appended)  # it did before
        stuck = lock.execute("SELECT checkpoint FROM projections").fetchone()[0]
        assert stuck < head
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        released = time.monotonic()
        await until(lambda: bool(listener.times("WATCHDOG", since=released)), 5, "pings again")
        await until(lambda: db_checkpoint(db) == head, 10, "the batch committed")
        assert stop(proc) == 0
    finally:
        if lock is not None:
            lock.close()
        if proc.poll() is None:
            proc.kill()
        listener.close()


async def test_nothing_without_notify_socket(
    nats_url: str, settings: StreamSettings, store: EventStore, tmp_path: Path
) -> None:
    """Without NOTIFY_SOCKET (WATCHDOG_USEC set or not) the worker sends nothing at all."""
    db = tmp_path / "w.db"
    listener = Listener(str(tmp_path / "notify.sock"), db)
    proc = start_worker(
        nats_url, settings, db, tmp_path / "worker.log", env={"WATCHDOG_USEC": "1000000"}
    )
    try:
        head = await append(store, 300, "d")
        await until(lambda: db_checkpoint(db) == head, 30, "the fold")
        await asyncio.sleep(1.5)
        assert stop(proc) == 0
        assert listener.messages == []
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_send_errors_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A socket nobody listens on: sends return False, never raise, and log one warning."""
    notifier = Notifier(str(tmp_path / "nobody.sock"))
    with caplog.at_level(logging.WARNING, logger="consumers"):
        assert notifier.send(READY=1) is False
        assert notifier.send(WATCHDOG=1) is False
    notifier.close()
    assert [vars(r)["event_dict"]["event"] for r in caplog.records] == [
        "systemd notify failed, the worker goes on without it (logged once)"
    ]
    assert Notifier(None).send(READY=1) is False and not Notifier(None).enabled


def test_watchdog_only_for_this_process() -> None:
    """WATCHDOG_USEC counts only when WATCHDOG_PID is unset or this process."""
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000"}) == 2.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_seconds(mine) == 2.0
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_seconds({}) is None and watchdog_seconds({"WATCHDOG_USEC": "x"}) is None
