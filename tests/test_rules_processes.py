"""The rules live with the log, with real processes: set by ``eventstore rules set``, folded by
a worker process, and every reader with no config and no environment gives the worker's
answers; a change mid-log is picked up by a running worker and folds the events after it with
the new rules, the ones before with the old."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import ROOT, start_worker, stored_states, tail

from eventstore import (
    EventStore,
    InvalidTransition,
    MachineTable,
    NewEvent,
    Rules,
    StreamSettings,
)
from projections import EntitiesProjection, ProjectionDB, TimeTravel

RULES = """
[machines.agent]
initial = "Created"
transitions = [["Created", "Starting"], ["Starting", "Running"], ["Running", "Terminated"]]

[projections.resolvers]
entities = "priority:config,balancer"
"""


def cli(
    url: str, settings: StreamSettings, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``eventstore ARGS`` with no config and no EVENTSTORE_ variable at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    where = ["--url", url, "--stream", settings.name, "--prefix", settings.prefix]
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *where, *args],
        capture_output=True, text=True, timeout=60, env=env | {"PYTHONPATH": str(ROOT)},
        cwd=cwd,
    )  # fmt: skip


def out(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


async def wait_checkpoint(db: Path, seq: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            con = sqlite3.connect(db)
            try:
                row = con.execute("SELECT min(checkpoint) FROM projections").fetchone()
            finally:
                con.close()
            if row and (row[0] or 0) >= seq:
                return
        except sqlite3.Error:
            pass
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.05)


def table(db: Path, sql: str) -> list[Any]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, tail(log)


async def test_readers_with_no_config_give_exactly_the_workers_answers(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """The issue's scenario: rules set by `eventstore rules set`, a request written
    concurrently by two producers (priority resolver), agents with a machine; then `state`,
    `state --version`, `diff`, `verify`, `rebuild` and TimeTravel, with no config and no
    environment, all give the worker's answers."""
    (tmp_path / "rules.toml").write_text(RULES)
    set_ = await asyncio.to_thread(cli, nats_url, settings, tmp_path, "rules", "set", "rules.toml")
    assert out(set_)["version"] == 1
    assert "no events of type 'agent' yet: a typo?" in set_.stderr  # a warning, not an error
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    proc = start_worker(nats_url, settings, db, log)
    try:
        config = await EventStore.connect(nats_url, producer="config", stream=settings)
        balancer = await EventStore.connect(nats_url, producer="balancer", stream=settings)
        async with config, balancer:
            await config.append("request", "req-002", NewEvent("Configured", {"max_tokens": 1024}))
            # The balancer never read that event: concurrent, and later in the log.
            await balancer.append("request", "req-002", NewEvent("Balanced", {"max_tokens": 256}))
            await balancer.append("request", "req-002", NewEvent("Tagged", {"tag": "t"}))
            await balancer.append("agent", "a1", NewEvent("AgentCreated", {"model": "m"}))
            for step in ("Created:Starting", "Starting:Running"):
                ack = await balancer.append("agent", "a1", NewEvent("Step", transition=step))
            with pytest.raises(InvalidTransition):  # a producer with no config is held to them
                await balancer.append(
                    "agent", "a1", NewEvent("Back", transition="Running:Starting")
                )
        await wait_checkpoint(db, ack.last_seq, proc, log)
        await asyncio.to_thread(stop, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    worker = stored_states(db)
    assert worker[("request", "req-002")]["state"] == {"max_tokens": 1024, "tag": "t"}
    assert worker[("agent", "a1")]["state"] == {"model": "m", "status": "Running"}
    assert table(db, "SELECT kind FROM quarantine") == []
    conflicts = table(db, "SELECT resolver, winner FROM conflicts")
    assert conflicts == [("priority:config,balancer", "previous")]

    def ask(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(nats_url, settings, tmp_path, "--db", str(db), *args)

    now = out(await asyncio.to_thread(ask, "state", "request", "req-002"))
    assert now["state"] == worker[("request", "req-002")]["state"]
    for version in (2, 3):
        past = out(
            await asyncio.to_thread(ask, "state", "request", "req-002", "--version", str(version))
        )
        assert past["state"]["max_tokens"] == 1024 and past["rules_version"] == 1
    diff = out(await asyncio.to_thread(ask, "diff", "request", "req-002", "--from", "version:1"))
    assert diff["to"]["state"] == now["state"]
    agent = out(await asyncio.to_thread(ask, "state", "agent", "a1", "--version", "3"))
    assert agent["state"]["status"] == "Running"
    verify = await asyncio.to_thread(ask, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    async with (
        await EventStore.connect(nats_url, producer="reader", stream=settings) as store,
        await ProjectionDB.open(db, readonly=True) as pdb,
    ):
        past = await TimeTravel(store, EntitiesProjection(), pdb).state_at(
            "request", "req-002", version=3
        )
    assert past.state == now["state"] and past.rules_version == 1
    assert out(await asyncio.to_thread(ask, "rebuild"))["checkpoint"] == ack.last_seq
    assert stored_states(db) == worker
    assert table(db, "SELECT seq, kind FROM quarantine") == []
    assert table(db, "SELECT resolver, winner FROM conflicts") == conflicts


async def test_a_rules_change_mid_log_is_picked_up_by_the_running_worker(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Events before a change fold with the old rules, after it with the new, in a running
    worker process; a producer connected before the change is held to the new machines once
    it has seen them; `rules show --history` lists both versions with who and when; time
    travel to a point before the change answers with the old rules."""
    old = Rules(machines={"agent": MachineTable("Created", [("Created", "Running"),
                                                            ("Running", "Paused")])})  # fmt: skip
    new = Rules(
        machines={
            "agent": MachineTable("Created", [("Created", "Running"), ("Running", "Stopped")])
        },
        resolvers={"entities": "priority:p1,p2"},
    )
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    p1 = await EventStore.connect(nats_url, producer="p1", stream=settings)
    p2 = await EventStore.connect(nats_url, producer="p2", stream=settings)
    proc = start_worker(nats_url, settings, db, log)
    try:
        async with p1, p2:
            await p1.set_rules(old, comment="first")
            await p1.append("agent", "a", NewEvent("Up", transition="Created:Running"))
            await p1.append("request", "r1", NewEvent("Set", {"by": "p1"}))
            before = await p2.append("request", "r1", NewEvent("Set", {"by": "p2"}))
            with pytest.raises(InvalidTransition):
                await p1.append("agent", "a", NewEvent("Stop", transition="Running:Stopped"))
            async with await EventStore.connect(
                nats_url, producer="operator", stream=settings
            ) as operator:
                changed = await operator.set_rules(new, comment="stop, not pause")
            deadline = time.monotonic() + 10
            while p1.rules.version < 2:  # the change reaches a producer connected before it
                assert time.monotonic() < deadline, "p1 never saw the rules change"
                await asyncio.sleep(0.02)
            with pytest.raises(InvalidTransition, match="allows Stopped"):
                await p1.append("agent", "a", NewEvent("Pause", transition="Running:Paused"))
            await p1.append("agent", "a", NewEvent("Stop", transition="Running:Stopped"))
            await p1.append("request", "r2", NewEvent("Set", {"by": "p1"}))
            last = await p2.append("request", "r2", NewEvent("Set", {"by": "p2"}))
            await wait_checkpoint(db, last.last_seq, proc, log)
            states = stored_states(db)
            assert states[("request", "r1")]["state"] == {"by": "p2"}  # log order, as then
            assert states[("request", "r2")]["state"] == {"by": "p1"}  # priority, from the change
            assert states[("agent", "a")]["state"] == {"status": "Stopped"}
            assert table(db, "SELECT value FROM meta WHERE key = 'rules_version'") == [("2",)]
            tt = TimeTravel(p2, EntitiesProjection())
            then = await tt.state_at("request", "r1", seq=before.last_seq)
            assert then.state == {"by": "p2"} and then.rules_version == 1
            assert (await tt.state_at("request", "r2")).rules_version == 2
        await asyncio.to_thread(stop, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shown = await asyncio.to_thread(cli, nats_url, settings, tmp_path, "rules", "show", "--history")
    assert shown.returncode == 0, shown.stderr
    history = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(h["version"], h["producer"], h["comment"]) for h in history] == [
        (1, "p1", "first"), (2, "operator", "stop, not pause"),
    ]  # fmt: skip
    assert all(h["recorded_at"] for h in history) and history[1]["seq"] == changed.seq
    assert history[1]["resolvers"] == {"entities": "priority:p1,p2"}
    at = await asyncio.to_thread(
        cli, nats_url, settings, tmp_path, "rules", "show", "--at", str(changed.seq - 1)
    )
    assert out(at)["version"] == 1
