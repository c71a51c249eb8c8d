"""A projection database belongs to one stream: a worker refuses another stream's file (a
store reset under a kept database, or ``--db`` naming another store's file), ``status`` flags
it, ``--reset`` starts over on purpose, and a database written before identities adopts its
stream when it can."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import tail, wait_ready

from eventstore import EmbeddedServer, EventStore, NewEvent, StreamSettings
from eventstore.server import free_port
from projections import EntitiesProjection, ForeignDatabase, ProjectionDB, Runner

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "consumers.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    return env


def _globals(url: str, settings: StreamSettings, db: Path) -> list[str]:
    return ["--url", url, "--stream", settings.name, "--prefix", settings.prefix, "--db", str(db)]


async def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
    )


def spawn(*args: str, log: Path, logs_too: bool = False) -> subprocess.Popen[str]:
    """``logs_too``: the worker's log lines (on stdout) go to ``log`` beside stderr."""
    with log.open("a") as err:
        out = err if logs_too else subprocess.DEVNULL
        return subprocess.Popen(
            [*CLI, *args], env=_env(), cwd=ROOT, stdout=out, stderr=err, text=True
        )


def one_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def statuses(out: str) -> list[dict[str, Any]]:
    """The projections of ``status`` (one JSON document, which also describes the server)."""
    projections: list[dict[str, Any]] = json.loads(out)["projections"]
    return projections


def query(db: Path, sql: str) -> list[Any]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def checkpoint(db: Path) -> int:
    try:
        return int(query(db, "SELECT min(checkpoint) FROM projections")[0][0] or 0)
    except sqlite3.Error:
        return 0


def states(db: Path) -> dict[str, tuple[int, str]]:
    rows = query(db, "SELECT aggregate_id, version, state FROM states ORDER BY aggregate_id")
    return {r[0]: (r[1], r[2]) for r in rows}


def states_or_none(db: Path) -> dict[str, tuple[int, str]] | None:
    """``states`` of a file that may be between a wipe and its new schema."""
    try:
        return states(db)
    except sqlite3.Error:
        return None


async def exits(proc: subprocess.Popen[str], log: Path, within: float) -> int:
    """The exit code of ``proc`` if it ends within ``within`` seconds (else it is killed and
    the test fails: the worker went on silently)."""
    try:
        return await asyncio.to_thread(proc.wait, within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"worker still running after {within}s: {tail(log)}")


async def wait_checkpoint(db: Path, seq: int, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while checkpoint(db) < seq:
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.05)


async def fold(url: str, settings: StreamSettings, db: Path, ids: list[str]) -> int:
    """Append one event per id and fold them into ``db`` with a runner; returns the head."""
    async with await EventStore.connect(url, producer="old", stream=settings) as store:
        for i, agg in enumerate(ids):
            await store.append("agent", agg, NewEvent("Set", {"n": i}))
        async with await ProjectionDB.open(db) as pdb:
            await Runner(store, pdb, [EntitiesProjection()]).catch_up()
        return await store.head()


def reset_store(server: EmbeddedServer) -> None:
    """What an operator does with `rm -rf data/nats`: the store directory goes, the server comes
    back with an empty store on the same port."""
    server.kill()
    shutil.rmtree(server.store_dir)
    server.start()


async def append(url: str, settings: StreamSettings, ids: list[str]) -> int:
    async with await EventStore.connect(url, producer="new", stream=settings) as store:
        for agg in ids:
            await store.append("agent", agg, NewEvent("New", {"fresh": agg}))
        return await store.head()


async def test_a_worker_refuses_a_reset_store_status_flags_it_and_reset_starts_over(
    private_server: EmbeddedServer, settings: StreamSettings, tmp_path: Path
) -> None:
    """After the store is reset under a kept database, the worker exits 1 with one line whether
    the new log is shorter than the checkpoint or longer, the database is untouched, ``status``
    flags the mismatch (exit 1), and ``worker --reset`` folds the new stream from seq 1."""
    url, db, log = private_server.url, tmp_path / "kept.db", tmp_path / "worker.log"
    assert await fold(url, settings, db, [f"old{i}" for i in range(6)]) == 6
    before = states(db)
    reset_store(private_server)
    assert await append(url, settings, ["n0", "n1"]) == 2  # shorter than the checkpoint

    worker = spawn("worker", *_globals(url, settings, db), log=log)
    assert await exits(worker, log, 15) == 1
    line = one_line(log.read_text())
    assert "ForeignDatabase" in line and str(db) in line and "--reset" in line, line
    assert "created at" in line and "past the stream's head" in line, line
    assert states(db) == before and checkpoint(db) == 6

    status = await cli("status", *_globals(url, settings, db))
    assert status.returncode == 1, status
    assert "not folded from this stream" in one_line(status.stderr)
    (out,) = statuses(status.stdout)
    assert (out["projection"], out["checkpoint"], out["head"]) == ("entities", 6, 2)
    assert out["stream_mismatch"] is True and "past the stream's head" in out["problem"]
    # The readers that would use its states or snapshots against this log refuse it too.
    g = _globals(url, settings, db)
    for args in (["verify"], ["state", "agent", "n0", "--version", "1"],
                 ["diff", "agent", "n0", "--from", "1"]):  # fmt: skip
        refused = await cli(*args, *g)
        assert refused.returncode == 1, (args, refused)
        assert "ForeignDatabase" in one_line(refused.stderr), (args, refused.stderr)

    # A new log longer than the old checkpoint: the checkpoint alone would not show it.
    assert await append(url, settings, [f"n{i}" for i in range(2, 8)]) == 8
    log.write_text("")
    worker = spawn("worker", *_globals(url, settings, db), log=log)
    assert await exits(worker, log, 15) == 1
    line = one_line(log.read_text())
    assert "ForeignDatabase" in line and "created at" in line, line
    assert states(db) == before
    status = await cli("status", *_globals(url, settings, db))
    assert status.returncode == 1 and statuses(status.stdout)[0]["stream_mismatch"] is True

    worker = spawn("worker", "--reset", *_globals(url, settings, db), log=log)
    try:
        await wait_checkpoint(db, 8, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0
    assert sorted(states(db)) == [f"n{i}" for i in range(8)]
    assert states(db)["n3"] == (1, '{"fresh":"n3"}')
    status = await cli("status", *_globals(url, settings, db))
    assert status.returncode == 0, status.stderr
    (out,) = statuses(status.stdout)
    assert (out["checkpoint"], out["head"], out["lag_events"]) == (8, 8, 0)
    assert out["stream_mismatch"] is False and out["problem"] is None
    # Started again without --reset, the worker accepts its own database.
    log.write_text("")
    worker = spawn(
        "worker", "--log-level", "info", *_globals(url, settings, db), log=log, logs_too=True
    )
    try:
        await wait_ready(worker, log)  # it opened and accepted the file
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0


async def test_the_database_of_another_server_or_stream_is_refused(
    nats_url: str, private_server: EmbeddedServer, settings: StreamSettings, tmp_path: Path
) -> None:
    """``--db`` naming the file of a stream of the same name on another server (more events,
    so no checkpoint is past the head), or of another stream, is refused: nothing is folded."""
    db = tmp_path / "theirs.db"
    await fold(nats_url, settings, db, ["a", "b"])
    before = states(db)
    await append(private_server.url, settings, ["x", "y", "z", "w"])
    async with (
        await EventStore.connect(private_server.url, stream=settings) as other,
        await ProjectionDB.open(db) as pdb,
    ):
        with pytest.raises(ForeignDatabase, match="created at"):
            await Runner(other, pdb, [EntitiesProjection()]).catch_up()
    assert states(db) == before

    renamed = StreamSettings(name=settings.name + "_B", prefix=settings.prefix + "b")
    async with (
        await EventStore.connect(nats_url, stream=renamed) as store,
        await ProjectionDB.open(db) as pdb,
    ):
        with pytest.raises(ForeignDatabase, match=f"folds stream '{settings.name}'"):
            await Runner(store, pdb, [EntitiesProjection()]).open()
    assert states(db) == before


async def test_a_database_without_identity_adopts_its_stream_unless_past_the_head(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A database written before stream identities (schema 2, only the stream name recorded)
    adopts the stream's identity when its checkpoint is within the log; past the head it is
    refused."""
    db = tmp_path / "pre.db"
    head = await fold(nats_url, settings, db, ["p", "q", "r"])
    con = sqlite3.connect(db)
    con.execute("DELETE FROM meta WHERE key = 'stream_created'")
    con.commit()
    con.close()
    async with await EventStore.connect(nats_url, stream=settings) as store:
        identity = await store.stream_identity()
        assert identity.name == settings.name and identity.created
        async with await ProjectionDB.open(db) as pdb:
            runner = Runner(store, pdb, [EntitiesProjection()])
            assert await runner.catch_up() == head
            assert await pdb.meta("stream_created") == identity.created

        con = sqlite3.connect(db)
        con.execute("DELETE FROM meta WHERE key = 'stream_created'")
        con.execute("UPDATE projections SET checkpoint = ?", (head + 5,))
        con.commit()
        con.close()
        async with await ProjectionDB.open(db) as pdb:
            with pytest.raises(ForeignDatabase, match="past the stream's head"):
                await Runner(store, pdb, [EntitiesProjection()]).open()
            assert await pdb.meta("stream_created") is None


async def test_a_running_worker_stops_when_the_store_is_reset_under_it(
    private_server: EmbeddedServer, settings: StreamSettings, tmp_path: Path
) -> None:
    """A worker folding while the store is reset and refilled past its checkpoint stops with
    one clear line instead of folding the new log onto the old states."""
    url, db, log = private_server.url, tmp_path / "live.db", tmp_path / "live.log"
    await append(url, settings, ["a", "b", "c"])
    worker = spawn("worker", *_globals(url, settings, db), log=log)
    try:
        await wait_checkpoint(db, 3, worker, log)
        before = states(db)
        reset_store(private_server)
        await append(url, settings, ["d", "e", "f", "g", "h"])
        assert await exits(worker, log, 30) == 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    last = log.read_text().strip().splitlines()[-1]
    assert "ForeignDatabase" in last and "created at" in last, log.read_text()[-2000:]
    assert states(db) == before and checkpoint(db) == 3


async def test_up_refuses_a_kept_database_after_a_fresh_store_and_up_reset_starts_over(
    tmp_path: Path,
) -> None:
    """`rm -rf data; eventstore up` with the old database kept: up exits 1 with one line
    naming --reset (and stops its server); `up --reset` serves and folds the new store."""
    db = tmp_path / "up.db"
    settings = StreamSettings()
    with EmbeddedServer(tmp_path / "old-store", port=free_port()) as old:
        await fold(old.url, settings, db, ["u1", "u2", "u3"])
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    args = ["up", "--port", str(port), "--store-dir", str(tmp_path / "new-store"),
            "--url", url, "--db", str(db)]  # fmt: skip
    refused = await cli(*args, timeout=60)
    assert refused.returncode == 1, refused
    line = one_line(refused.stderr)
    assert "ForeignDatabase" in line and "--reset" in line, line
    assert sorted(states(db)) == ["u1", "u2", "u3"]

    log = tmp_path / "up.log"
    proc = spawn(*args, "--reset", log=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                head = await append(url, settings, ["v1"])
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.2)
        # The old file's checkpoint (3) is past the new head until the reset, so wait for
        # the new state itself, not for a checkpoint.
        while sorted(states_or_none(db) or {}) != ["v1"]:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        await wait_checkpoint(db, head, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert sorted(states(db)) == ["v1"]
