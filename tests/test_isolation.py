"""One projection's failing code never stops the others: a real worker process folds the
built-in ``entities`` and a custom projection (a module in a temp dir on PYTHONPATH) whose
``write()`` or ``initial()`` raises at one event. ``entities`` reaches the head exactly, batch
after batch; the custom one is marked failed in the file (status shows its error and seq) and
keeps its checkpoint, its failing batch dropped whole; after the module is fixed and the worker
restarted, it resumes from there and the mark clears. Every projection failing stops the
worker with one line; systemd's STATUS= names the failed one. In process: a batch whose
read-model statements fail half way leaves none of that projection's rows; stored states that
no longer decode fail their projection only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import (
    brute_entities,
    log_events,
    scalar,
    start_worker,
    stored_states,
    tail,
)
from test_cli import cli
from test_notify import Listener

from consumers import ProjectionClient
from eventstore import AppendRequest, EventStore, NewEvent, StreamSettings
from projections import (
    EntitiesProjection,
    Projection,
    ProjectionDB,
    ProjectionError,
    Runner,
    Statement,
    projection_status,
)

MODULE = """
from projections import Projection, Statement

FAIL = {fail!r}


class Custom(Projection):
    name = "custom"
    version = "1"
    aggregate_types = frozenset({{"agent"}})
    schema = ("CREATE TABLE IF NOT EXISTS custom_rows (id TEXT PRIMARY KEY, n INTEGER)",)
    tables = ("custom_rows",)

    def initial(self, aggregate_type, aggregate_id):
        if FAIL == "initial" and aggregate_id == "poison":
            raise ValueError("no initial state for poison")
        return {{"n": 0}}

    def apply(self, state, event):
        poison = {{"poison": 1}} if event.data.get("poison") else {{}}
        return {{**state, "n": state["n"] + 1, **poison}}

    def write(self, changes):
        if FAIL == "write":
            for c in changes:
                if c.state.get("poison"):
                    raise ValueError(f"poisoned state of {{c.aggregate_id}}")
        return [Statement("INSERT OR REPLACE INTO custom_rows VALUES (?, ?)",
                          [(c.aggregate_id, c.state["n"]) for c in changes])]
"""


def write_module(where: Path, fail: str | None) -> None:
    (where / "isolated_custom.py").write_text(MODULE.format(fail=fail))


def checkpoint(db: Path, name: str) -> int:
    try:
        return int(scalar(db, "SELECT checkpoint FROM projections WHERE name = ?", name) or 0)
    except sqlite3.Error:  # not created yet
        return 0


async def wait_until(check: Any, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert proc.poll() is None, f"the worker died waiting for {what}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{tail(log)}"
        await asyncio.sleep(0.05)


async def append_round(store: EventStore, round_: int) -> int:
    """30 events over agents a0..a9; returns the last seq."""
    results = await store.append_many(
        [AppendRequest("agent", f"a{i % 10}", [NewEvent("Step", {"r": round_, "i": i})])
         for i in range(30)]
    )  # fmt: skip
    return max(r.last_seq for r in results if not isinstance(r, BaseException))


def custom_rows(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1] for r in con.execute("SELECT id, n FROM custom_rows")}
    finally:
        con.close()


def counts_up_to(events: list[Any], seq: int) -> dict[str, int]:
    return dict(Counter(ev.aggregate_id for ev in events if ev.seq <= seq))


def worker(
    nats_url: str, settings: StreamSettings, db: Path, log: Path, where: Path
) -> subprocess.Popen[bytes]:
    env = {"PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
    return start_worker(
        nats_url, settings, db, log, "--projection", "isolated_custom:Custom", env=env
    )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.mark.parametrize("fail", ["write", "initial"])
async def test_a_failing_projection_leaves_the_others_folding(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path, fail: str
) -> None:
    """The custom projection fails at the poison event; entities goes on to the head, twice
    more after it; status shows the failure; fixed and restarted, custom catches up and its
    mark is gone."""
    write_module(tmp_path, fail)
    db, log = tmp_path / "w.db", tmp_path / "worker.log"
    head = await append_round(store, 0)
    proc = worker(nats_url, settings, db, log, tmp_path)
    try:
        await wait_until(lambda: checkpoint(db, "custom") == head, proc, log, "custom at head")
        before = head
        # The poison event is the last one of its aggregate in its batch: write() sees it.
        poison = (await store.append("agent", "poison", NewEvent("Bad", {"poison": True}))).last_seq
        for round_ in (1, 2, 3):
            head = await append_round(store, round_)
            await wait_until(
                lambda h=head: checkpoint(db, "entities") == h, proc, log, f"entities at {head}"
            )
        assert proc.poll() is None  # the worker keeps running
        assert checkpoint(db, "custom") == before  # its checkpoint stays, nothing past it
        events = await log_events(store)
        assert custom_rows(db) == counts_up_to(events, before)
        want = {k: v["state"] for k, v in brute_entities(events).items()}
        assert {k: v["state"] for k, v in stored_states(db).items()} == want

        status = cli(nats_url, settings, "status", "--db", str(db))
        assert status.returncode == 1, status.stderr
        by_name = {s["projection"]: s for s in json.loads(status.stdout)["projections"]}
        assert by_name["entities"]["failed"] is None
        failed = by_name["custom"]["failed"]
        assert (failed["seq"], failed["type"], failed["aggregate"]) == (
            poison, "ValueError", "agent/poison",
        )  # fmt: skip
        cause = "poisoned state of poison" if fail == "write" else "no initial state for poison"
        assert cause in failed["error"]
        assert [ln for ln in status.stderr.splitlines() if "custom FAILED" in ln], status.stderr
        async with await ProjectionDB.open(db, readonly=True) as pdb:
            library = {s.projection: s for s in await projection_status(store, pdb)}
        assert library["custom"].failed is not None and library["custom"].failed.seq == poison
        served = await ProjectionClient(store).status("entities")  # the query service says so
        assert cause in served.failed["custom"] and "entities" not in served.failed

        records = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
        [error] = [r for r in records if r["level"] == "error"]
        assert error["projection"] == "custom" and error["seq"] == poison
        assert "Traceback" in error["exception"] and cause in error["exception"]
    finally:
        if proc.poll() is None:
            stop(proc, log)

    write_module(tmp_path, None)  # the fix
    proc = worker(nats_url, settings, db, log, tmp_path)
    try:
        await wait_until(lambda: checkpoint(db, "custom") == head, proc, log, "custom caught up")
        assert custom_rows(db) == counts_up_to(await log_events(store), head)
        status = cli(nats_url, settings, "status", "--db", str(db))
        assert status.returncode == 0, status.stderr
        assert all(s.get("failed") is None for s in json.loads(status.stdout)["projections"])
    finally:
        stop(proc, log)


async def test_a_worker_whose_every_projection_failed_exits_1_with_one_line(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Nothing left to fold: the worker exits 1, its last line naming the failed projection."""
    write_module(tmp_path, "write")
    config = tmp_path / "only-custom.toml"
    config.write_text('[projections]\nload = ["isolated_custom:Custom"]\n')
    await store.append("agent", "poison", NewEvent("Bad", {"poison": True}))
    db, log = tmp_path / "w.db", tmp_path / "worker.log"
    env = {"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = start_worker(nats_url, settings, db, log, "--config", str(config), env=env)
    try:
        assert proc.wait(timeout=60) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    last = log.read_text().splitlines()[-1]
    assert last.startswith("worker: ProjectionError: projection custom: write() failed"), last
    assert "poisoned state of poison" in last


class HalfWritten(Projection[dict[str, Any]]):
    """A read model whose second statement fails: the first one's rows must not stay."""

    name = "half"
    version = "1"
    schema = ("CREATE TABLE IF NOT EXISTS half_rows (id TEXT PRIMARY KEY)",)
    tables = ("half_rows",)

    def initial(self, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
        return {**state, **event.data}

    def write(self, changes: Any) -> list[Statement]:
        rows = [(c.aggregate_id,) for c in changes]
        statements = [Statement("INSERT OR REPLACE INTO half_rows VALUES (?)", rows)]
        if any(c.state.get("bad") for c in changes):
            statements.append(Statement("INSERT INTO no_such_table VALUES (?)", rows))
        return statements


async def test_a_batch_failing_half_way_leaves_none_of_its_rows(
    store: EventStore, tmp_path: Path
) -> None:
    """In process: the first batch commits; the second's statements fail after one ran: the
    projection keeps its checkpoint and first rows only, entities commits the batch, and the
    runner reports the failure (``Runner.failures``) and the mark is in the file."""
    first = (await store.append("agent", "x", NewEvent("E", {"ok": 1}))).last_seq
    async with await ProjectionDB.open(tmp_path / "h.db") as db:
        runner = Runner(store, db, [EntitiesProjection(), HalfWritten()])
        await runner.catch_up()
        await store.append("agent", "y", NewEvent("E", {"bad": 1}))
        last = (await store.append("agent", "z", NewEvent("E", {"ok": 2}))).last_seq
        await runner.catch_up()
        assert runner.checkpoints() == {"entities": last, "half": first}
        assert runner.checkpoint == last
        assert "SQLite refused" in runner.failures["half"].error
        rows = await db.fetchall("SELECT id FROM half_rows")
        assert [r[0] for r in rows] == ["x"]
        assert await db.meta("failed:half") is not None
        # A runner whose only projection fails raises, naming it.
        alone = Runner(store, db, [HalfWritten()])
        with pytest.raises(ProjectionError, match="projection half: write"):
            await alone.catch_up()


class Typed(Projection[Any]):
    """A projection whose state type changes below (its version does not: a user's mistake)."""

    name = "typed"
    version = "1"

    def initial(self, aggregate_type: str, aggregate_id: str) -> Any:
        return {"n": 0}

    def apply(self, state: Any, event: Any) -> Any:
        return {"n": state["n"] + 1}


class Retyped(Typed):
    state_type = list[int]


async def test_stored_states_that_no_longer_decode_fail_that_projection_only(
    store: EventStore, tmp_path: Path
) -> None:
    """A projection whose stored states do not decode as its state type any more is marked
    failed (with what to do); entities folds on."""
    await store.append("agent", "t", NewEvent("E"))
    async with await ProjectionDB.open(tmp_path / "t.db") as db:
        await Runner(store, db, [EntitiesProjection(), Typed()]).catch_up()
        last = (await store.append("agent", "t", NewEvent("E"))).last_seq
        runner = Runner(store, db, [EntitiesProjection(), Retyped()])
        await runner.catch_up()
        assert runner.checkpoints() == {"entities": last, "typed": last - 1}
        failure = runner.failures["typed"]
        assert "bump its version" in failure.error and failure.seq == last


async def test_the_systemd_status_line_names_a_failed_projection(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Under systemd (a real datagram socket as NOTIFY_SOCKET), STATUS= ends with the failed
    projection and its seq, while READY still comes: entities caught up."""
    write_module(tmp_path, "write")
    poison = (await store.append("agent", "poison", NewEvent("Bad", {"poison": True}))).last_seq
    db, log = tmp_path / "w.db", tmp_path / "worker.log"
    listener = Listener(str(tmp_path / "notify.sock"), db)
    env = {
        "PYTHONPATH": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
    }
    proc = start_worker(
        nats_url, settings, db, log, "--projection", "isolated_custom:Custom", env=env
    )
    try:
        want = f"FAILED: custom at seq {poison}"
        await wait_until(
            lambda: any(want in s for s in listener.statuses()), proc, log, "a FAILED status"
        )
        assert listener.times("READY")
    finally:
        if proc.poll() is None:
            stop(proc, log)
        listener.close()
