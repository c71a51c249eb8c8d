"""Every way of starting a worker builds the same worker: ``eventstore worker``, ``eventstore
up`` and ``python -m consumers.cli_worker`` all fold with the config's ``[machines]``, its
``[projections]`` settings and the options given, through one ``consumers.Worker``."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_projections import scalar, tail

from consumers import Worker
from eventstore import EventStore, NewEvent, StreamSettings
from eventstore.server import free_port

ROOT = Path(__file__).resolve().parent.parent

MACHINES = """
[machines.agent]
initial = "Created"
transitions = [["Created", "Running"], ["Running", "Stopped"]]
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    return env


def _command(entry: str, url: str, settings: StreamSettings, db: Path, tmp: Path) -> list[str]:
    where = ["--url", url, "--stream", settings.name, "--prefix", settings.prefix]
    where += ["--db", str(db), "--config", str(tmp / "es.toml")]
    if entry == "python -m consumers.cli_worker":
        return [sys.executable, "-m", "consumers.cli_worker", *where]
    if entry == "eventstore worker":
        return [sys.executable, "-m", "consumers.cli", "worker", *where]
    port = url.rsplit(":", 1)[1]
    store_dir = str(tmp / "nats")
    return [sys.executable, "-m", "consumers.cli", "up", "--port", port, "--store-dir", store_dir,
            *where]  # fmt: skip


async def _wait_checkpoint(db: Path, seq: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if (scalar(db, "SELECT min(checkpoint) FROM projections") or 0) >= seq:
                return
        except sqlite3.Error:
            pass
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.05)


async def _connect(url: str, settings: StreamSettings, proc: subprocess.Popen[bytes],
                   log: Path) -> EventStore:  # fmt: skip
    """A producer without machines: it stores whatever transition it is given."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await EventStore.connect(url, producer="rogue", stream=settings)
        except Exception:
            assert proc.poll() is None, tail(log)
            assert time.monotonic() < deadline, tail(log)
            await asyncio.sleep(0.1)


ENTRIES = ["eventstore worker", "eventstore up", "python -m consumers.cli_worker"]


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("entry", ENTRIES)
async def test_every_entry_point_folds_with_the_configured_machines(
    entry: str, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A transition the config's ``[machines]`` forbid, stored by a producer without machines,
    is quarantined (kind ``transition``) by the worker of every entry point, and the allowed
    one is applied."""
    (tmp_path / "es.toml").write_text(MACHINES)
    url = nats_url if entry != "eventstore up" else f"nats://127.0.0.1:{free_port()}"
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    proc = _spawn(_command(entry, url, settings, db, tmp_path), log)
    try:
        store = await _connect(url, settings, proc, log)
        async with store:
            step = NewEvent("Started", transition=("Created", "Running"))
            await store.append("agent", "ok", step)
            bad = await store.append(
                "agent", "bad", NewEvent("Stopped", transition=("Created", "Stopped"))
            )
        await _wait_checkpoint(db, bad.last_seq, proc, log)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kinds = scalar(db, "SELECT group_concat(kind) FROM quarantine WHERE aggregate_id = 'bad'")
    assert kinds == "transition", tail(log)
    ok = scalar(db, "SELECT json_extract(state, '$.status') FROM states WHERE aggregate_id = 'ok'")
    assert ok == "Running"


def test_from_config_reads_machines_projections_and_settings(tmp_path: Path) -> None:
    """``Worker.from_config`` takes the config's machines, its load list plus the projections
    given, and its runner settings, before anything connects."""
    config = tmp_path / "es.toml"
    config.write_text(MACHINES + '\n[projections]\nload = ["entities"]\nbatch_size = 7\n')
    worker = Worker.from_config(db=tmp_path / "x.db", config=config)
    assert "agent" in worker.machines
    assert [p.name for p in worker.projections] == ["entities"]
    assert worker.settings is not None and worker.settings.batch_size == 7
    assert worker.store is None  # nothing connected yet


async def test_run_until_folds_then_stops_on_the_event(store: EventStore, tmp_path: Path) -> None:
    """In process: ``run_until(stop)`` folds what the log holds and, once ``stop`` is set,
    returns the checkpoint it committed; the store it opened is closed again."""
    last = await store.append("agent", "a", [NewEvent("E", {"i": i}) for i in range(5)])
    worker = Worker.from_config(url=store.url, stream=store.settings, db=tmp_path / "w.db")
    stop = asyncio.Event()
    ready = asyncio.Event()
    running = asyncio.create_task(worker.run_until(stop, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    assert worker.runner is not None
    async with asyncio.timeout(10):
        while worker.runner.checkpoint < last.last_seq:
            await asyncio.sleep(0.02)
    stop.set()
    assert await asyncio.wait_for(running, 10) == last.last_seq
    assert worker.store is None
    assert scalar(tmp_path / "w.db", "SELECT version FROM states WHERE aggregate_id = 'a'") == 5
