"""The worker process: killed with SIGKILL again and again while the log grows, it still ends
in exactly the state a fold of the whole log gives; SIGTERM finishes the batch and exits 0."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import (
    brute_entities,
    log_events_and_garbage,
    scalar,
    start_worker,
    stored_states,
    wait_ready,
)

from eventstore import AppendRequest, EventStore, NewEvent, StreamSettings
from projections import EntitiesProjection, ProjectionDB, verify

KILLS = 12


def checkpoint(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return int(scalar(db, "SELECT checkpoint FROM projections WHERE name = 'entities'") or 0)
    except Exception:  # the table may not exist yet if the first worker died while creating it
        return 0


async def produce(
    alice: EventStore, bob: EventStore, rounds: int, seed: int, until: asyncio.Event
) -> tuple[int, int]:
    """40 events per round on 40 aggregates, at least ``rounds`` rounds and until ``until``;
    bob writes without reading (conflicts); a few malformed messages go straight to the
    stream (quarantine). Returns (messages sent, malformed ones among them)."""
    rng = random.Random(seed)
    sent = malformed = r = 0
    while r < rounds or not until.is_set():
        r += 1
        requests = []
        for _ in range(40):
            n = rng.randrange(1_000_000)
            data: dict[str, Any] = {"n": n, f"f{n % 7}": n % 100, "nested": {f"k{n % 3}": n}}
            if n % 5 == 0:
                data["f1"] = None
                data["nested"] = {"k0": None, "k9": [n, str(n)]}
            step = ("S", f"S{n % 4}") if n % 6 == 0 else None
            requests.append(
                AppendRequest("agent", f"k{rng.randrange(40)}", [NewEvent("Changed", data, step)])
            )
        for result in await alice.append_many(requests):
            assert not isinstance(result, BaseException), result
        sent += len(requests)
        if r % 4 == 0:
            # "n" is a key every event of alice writes: a conflict both ways, also when the
            # previous event's keys come from a row a killed worker committed.
            moved = NewEvent("Moved", {"by": "bob", "n": -1})
            await bob.append("agent", f"k{rng.randrange(40)}", moved)
            sent += 1
        if r % 40 == 0:
            await alice.js.publish(f"{alice.settings.prefix}.agent.broken{r}", b"\x00not json")
            sent += 1
            malformed += 1
        await asyncio.sleep(0.02)
    return sent, malformed


@pytest.mark.slow
async def test_sigkill_at_any_moment_still_folds_every_event_exactly_once(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """SIGKILL a worker subprocess at random moments (12 times) while thousands of events
    arrive; the final states, versions, clocks, conflicts and quarantine equal a fold of the
    log exactly."""
    db = tmp_path / "killed.db"
    log = tmp_path / "worker.log"
    rng = random.Random(20250113)
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        kills_done = asyncio.Event()
        producer = asyncio.create_task(produce(alice, bob, 150, 7, kills_done))
        seen: list[int] = []
        proc: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(KILLS):
                proc = start_worker(nats_url, settings, db, log, "--log-level", "info")
                # The kill lands at a random moment of the fold, counted from the worker's
                # "ready" (its database open) so that a slow start-up on a loaded machine
                # does not turn every kill into a kill during the interpreter's imports.
                await wait_ready(proc)
                await asyncio.sleep(rng.uniform(0.0, 0.8))
                assert proc.poll() is None, log.read_text()[-2000:]
                assert not producer.done()  # every kill lands while the log is growing
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                assert proc.returncode == -signal.SIGKILL
                seen.append(checkpoint(db))
        finally:
            kills_done.set()
            if proc is not None and proc.poll() is None:
                proc.kill()
        sent, malformed = await producer
        head = await alice.head()
        assert sent == head >= 6000
        # The worker made progress between kills: they did not all land at start-up.
        assert seen == sorted(seen) and len(set(seen)) >= 8, seen

        proc = start_worker(nats_url, settings, db, log, "--log-level", "info")
        await wait_ready(proc)
        deadline = time.monotonic() + 60
        while checkpoint(db) < head:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0

        events, garbage = await log_events_and_garbage(alice)
        expected = brute_entities(events)
        stored = stored_states(db)
        assert set(stored) == set(expected)
        mismatched = [
            key
            for key, exp in expected.items()
            if (
                stored[key]["version"],
                stored[key]["seq"],
                stored[key]["state"],
                stored[key]["vclock"],
                stored[key]["lamport"],
            )
            != (exp["version"], exp["seq"], exp["state"], exp["vclock"], exp["lamport"])
        ]
        assert not mismatched
        conflicts = sorted(s for agg in expected.values() for s in agg["conflicts"])
        assert len(conflicts) >= 20
        assert [r[0] for r in _rows(db, "SELECT seq FROM conflicts ORDER BY seq")] == conflicts
        assert [r[0] for r in _rows(db, "SELECT seq FROM quarantine ORDER BY seq")] == garbage
        assert len(garbage) == malformed >= 3
        async with await ProjectionDB.open(db) as pdb:
            report = await verify(alice, pdb, [EntitiesProjection()])
        assert report.ok, [m.describe() for m in report.mismatches]
        assert report.messages == head and report.snapshots > 0


def _rows(db: Path, sql: str) -> list[Any]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_sigterm_commits_what_it_holds_and_exits_zero(
    store: EventStore, tmp_path: Path
) -> None:
    """SIGTERM stops a busy worker cleanly: exit 0, and its last log line names the checkpoint
    the database holds."""
    db, log = tmp_path / "term.db", tmp_path / "term.log"
    for i in range(200):
        await store.append("agent", f"t{i % 9}", NewEvent("E", {"i": i}))
    proc = start_worker(store.url, store.settings, db, log, "--log-level", "info")
    try:
        deadline = time.monotonic() + 20
        while checkpoint(db) < 200:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            await asyncio.sleep(0.02)
        writer = asyncio.create_task(
            store.append_many(AppendRequest("agent", f"t{i}", [NewEvent("E")]) for i in range(300))
        )
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        await writer
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stopped = [line for line in lines if line.get("event") == "worker stopped"]
    assert len(stopped) == 1
    assert stopped[0]["checkpoint"] == checkpoint(db) >= 200
    assert stored_states(db)[("agent", "t0")]["version"] >= 23
