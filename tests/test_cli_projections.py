"""The projection commands as a user runs them: real subprocesses, a real server, real files."""

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

from helpers_projections import scalar, tail

from eventstore import EventStore, NewEvent, StreamSettings
from eventstore.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _base() -> list[str]:
    """``eventstore`` once its parser has the projection commands, else their own entry point."""
    from consumers.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict))
    assert isinstance(sub.choices, dict)
    if "state" in sub.choices:
        return [sys.executable, "-m", "consumers.cli"]
    return [sys.executable, "-m", "consumers.cli_projections"]


BASE = _base()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    return env


def _globals(url: str, settings: StreamSettings, db: Path) -> list[str]:
    return ["--url", url, "--stream", settings.name, "--prefix", settings.prefix, "--db", str(db)]


async def cli(
    url: str, settings: StreamSettings, db: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*BASE, *args, *_globals(url, settings, db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=ROOT,
    )


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    return err[0]


def spawn(args: list[str], log: Path, *, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """A long-running command; its stderr goes to ``log`` (read it when something fails)."""
    with log.open("a") as err:
        return subprocess.Popen(
            [*BASE, *args], env=_env(), cwd=ROOT, stdout=stdout, stderr=err, text=True
        )


async def wait_checkpoint(db: Path, seq: int, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if (scalar(db, "SELECT min(checkpoint) FROM projections") or 0) >= seq:
                return
        except sqlite3.Error:
            pass
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_worker_then_every_query_command(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """worker, state (now and past), diff, conflicts, quarantine, status, verify and rebuild
    each print what the README says, and a damaged file makes verify exit 1."""
    db = tmp_path / "cli.db"
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        await alice.append("agent", "asst_qa", NewEvent("Created", {"model": "gpt-4", "tmp": 1}))
        # v2 writes model too: bob's blind write of model (v3) conflicts with it.
        await alice.append(
            "agent",
            "asst_qa",
            NewEvent("Started", {"model": "gpt-4"}, transition=("Created", "Running")),
        )
        await bob.append("agent", "asst_qa", NewEvent("Tuned", {"model": "gpt-4o", "tmp": None}))
        await alice.js.publish(f"{settings.prefix}.agent.asst_qa", b"oops")
        head = await alice.head()

    log = tmp_path / "worker.log"
    worker = spawn(["worker", *_globals(nats_url, settings, db)], log)
    try:
        await wait_checkpoint(db, head, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0

    now = await cli(nats_url, settings, db, "state", "agent", "asst_qa")
    assert now.returncode == 0, now.stderr
    assert lines(now.stdout) == [
        {
            "aggregate_type": "agent",
            "aggregate_id": "asst_qa",
            "version": 3,
            "seq": 3,
            "state": {"model": "gpt-4o", "status": "Running"},
            "vclock": {"alice": 2, "bob": 1},
            "lamport": 3,
        },
    ]
    past = lines(
        (await cli(nats_url, settings, db, "state", "agent", "asst_qa", "--version", "1")).stdout
    )[0]
    assert past["state"] == {"model": "gpt-4", "tmp": 1}
    assert (past["version"], past["snapshot_version"], past["replayed"]) == (1, None, 1)
    by_seq = lines(
        (await cli(nats_url, settings, db, "state", "agent", "asst_qa", "--seq", "2")).stdout
    )[0]
    assert by_seq["state"] == {"model": "gpt-4", "tmp": 1, "status": "Running"}
    by_time = lines(
        (
            await cli(
                nats_url, settings, db, "state", "agent", "asst_qa", "--at", "2000-01-01T00:00:00Z"
            )
        ).stdout
    )[0]
    assert (by_time["version"], by_time["state"]) == (0, {})

    diff = lines(
        (
            await cli(
                nats_url,
                settings,
                db,
                "diff",
                "agent",
                "asst_qa",
                "--from",
                "version:1",
                "--to",
                "now",
            )
        ).stdout
    )[0]
    assert diff["patch"] == {"model": "gpt-4o", "tmp": None, "status": "Running"}
    assert [e["outcome"] for e in diff["events"]] == ["applied", "conflict", "quarantined"]

    conflicts = lines((await cli(nats_url, settings, db, "conflicts", "agent", "asst_qa")).stdout)
    assert [
        (c["seq"], c["event_producer"], c["previous_producer"], c["winner"]) for c in conflicts
    ] == [(3, "bob", "alice", "event")]
    assert conflicts[0]["event_vclock"] == {"bob": 1}
    assert lines((await cli(nats_url, settings, db, "conflicts", "task")).stdout) == []
    quarantined = lines((await cli(nats_url, settings, db, "quarantine")).stdout)
    assert [(q["seq"], q["kind"], q["data"]) for q in quarantined] == [(4, "undecodable", "oops")]

    (status,) = lines((await cli(nats_url, settings, db, "status")).stdout)
    assert [
        (
            s["projection"],
            s["checkpoint"],
            s["head"],
            s["lag_events"],
            s["conflicts"],
            s["quarantined"],
        )
        for s in status["projections"]
    ] == [("entities", 4, 4, 0, 1, 1)]
    assert status["server"]["server"] == nats_url and status["server"]["jetstream"] == "enabled"
    stream = status["stream"]
    assert (stream["name"], stream["messages"], stream["first_seq"], stream["last_seq"]) == (
        settings.name, 4, 1, 4,
    )  # fmt: skip
    assert stream["bytes"] > 0 and stream["first_time"] <= stream["last_time"]

    ok = await cli(nats_url, settings, db, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert lines(ok.stdout)[-1]["ok"] is True

    con = sqlite3.connect(db)
    con.execute("UPDATE states SET lamport = 0")
    con.execute("DELETE FROM conflicts")
    con.commit()
    con.close()
    bad = await cli(nats_url, settings, db, "verify")
    assert "2 mismatch(es)" in one_error_line(bad)
    out = lines(bad.stdout)
    assert [o["what"] for o in out[:-1]] == ["lamport differs", "recorded conflicts differ"]
    assert out[0]["mismatch"].startswith("entities agent/asst_qa: lamport differs")
    assert out[-1]["ok"] is False and out[-1]["mismatches"] == 2

    rebuilt = await cli(nats_url, settings, db, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert lines(rebuilt.stdout)[0]["checkpoint"] == 4
    assert (await cli(nats_url, settings, db, "verify")).returncode == 0

    missing = await cli(nats_url, settings, db, "state", "agent", "nobody")
    assert "agent/nobody: projection entities has no state" in one_error_line(missing)
    two = await cli(
        nats_url, settings, db, "state", "agent", "asst_qa", "--version", "1", "--seq", "1"
    )
    assert "one of --version, --seq, --at" in one_error_line(two)
    no_db = await cli(nats_url, settings, tmp_path / "absent.db", "status")
    assert "no projection database" in one_error_line(no_db)


async def test_up_runs_a_server_and_a_worker_and_says_how_to_reach_them(tmp_path: Path) -> None:
    """``up`` prints the URL, folds what agents publish, and stops cleanly on SIGTERM."""
    port = free_port()
    db = tmp_path / "up.db"
    settings = StreamSettings()
    log = tmp_path / "up.log"
    args = ["up", "--port", str(port), "--store-dir", str(tmp_path / "nats"),
            "--url", f"nats://127.0.0.1:{port}", "--db", str(db)]  # fmt: skip
    proc = spawn(args, log, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        url = f"nats://127.0.0.1:{port}"
        assert first.startswith(f"eventstore up: nats-server on {url}"), first
        async with await EventStore.connect(url, producer="agent-1", stream=settings) as store:
            res = await store.append("agent", "asst_ops", NewEvent("Created", {"x": 1}))
        await wait_checkpoint(db, res.last_seq, proc, log)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert scalar(db, "SELECT state FROM states WHERE aggregate_id = 'asst_ops'") == '{"x":1}'
