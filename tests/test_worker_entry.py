"""Every way of starting a worker builds the same worker: ``eventstore worker``, ``eventstore
up`` and ``python -m consumers.cli_worker`` all fold with the rules stored with the log, the
config's ``[projections]`` settings and the options given, through one ``consumers.Worker``."""

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
from eventstore import ConfigError, EventStore, NewEvent, Rules, StreamSettings, Transition
from eventstore.events import Envelope, encode_envelope, utcnow
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
    """A producer of the log (it is held to the rules stored with it)."""
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


def _raw_transition(agg_id: str, step: Transition) -> bytes:
    """A valid event body as a plain NATS client publishes it: no producer checks it."""
    return encode_envelope(
        Envelope(id=f"raw-{agg_id}", type="Stopped", aggregate_type="agent", aggregate_id=agg_id,
                 version=1, occurred_at=utcnow(), producer="raw", vclock={"raw": 1},
                 transition=step)
    )  # fmt: skip


@pytest.mark.parametrize("entry", ENTRIES)
async def test_every_entry_point_folds_with_the_rules_stored_with_the_log(
    entry: str, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Rules set while the worker of each entry point runs (its config names no machines):
    a transition they forbid, published raw, is quarantined (kind ``transition``), the
    allowed one is applied."""
    (tmp_path / "es.toml").write_text('[projections]\nload = ["entities"]\n')
    url = nats_url if entry != "eventstore up" else f"nats://127.0.0.1:{free_port()}"
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    proc = _spawn(_command(entry, url, settings, db, tmp_path), log)
    try:
        store = await _connect(url, settings, proc, log)
        async with store:
            (tmp_path / "rules.toml").write_text(MACHINES)
            await store.set_rules(Rules.from_toml(tmp_path / "rules.toml"))
            step = NewEvent("Started", transition=("Created", "Running"))
            await store.append("agent", "ok", step)
            body = _raw_transition("bad", Transition("Created", "Stopped"))
            ack = await store.js.publish(store.subject("agent", "bad"), body)
        await _wait_checkpoint(db, ack.seq, proc, log)
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


async def test_a_worker_whose_config_declares_other_machines_is_refused(
    store: EventStore, tmp_path: Path
) -> None:
    """A config whose ``[machines]`` differ from the rules stored with the log is refused at
    connect, naming the file and the remedy; the same tables as the stored ones are accepted."""
    config = tmp_path / "es.toml"
    config.write_text(MACHINES)
    worker = Worker.from_config(
        url=store.url, stream=store.settings, db=tmp_path / "w.db", config=config
    )
    with pytest.raises(ConfigError, match=r"es.toml declares \[machines\] that differ.*version 0"):
        async with worker:
            pass
    assert worker.store is None
    await store.set_rules(Rules.from_toml(config))
    async with worker:
        assert worker.store is not None and worker.store.rules.version == 1


def test_from_config_reads_projections_and_settings(tmp_path: Path) -> None:
    """``Worker.from_config`` takes the config's load list plus the projections given, and
    its runner settings, before anything connects."""
    config = tmp_path / "es.toml"
    config.write_text(MACHINES + '\n[projections]\nload = ["entities"]\nbatch_size = 7\n')
    worker = Worker.from_config(db=tmp_path / "x.db", config=config)
    assert worker.config == config
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
