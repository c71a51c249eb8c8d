"""SIGTERM, again and again, while a producer appends: each worker exits 0 having committed
what it held, and the final database is exactly a fold of the whole log (nothing lost,
nothing applied twice)."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from pathlib import Path

import pytest
from helpers_projections import (
    brute_entities,
    log_events_and_garbage,
    start_worker,
    stored_states,
    tail,
    wait_ready,
)
from test_worker import checkpoint, produce

from eventstore import EventStore, StreamSettings
from projections import EntitiesProjection, ProjectionDB, verify

STOPS = 8
_STOPPED = re.compile(r'"checkpoint": ?(\d+)[^\n]*"event": ?"worker stopped"|'
                      r'"event": ?"worker stopped"[^\n]*"checkpoint": ?(\d+)')  # fmt: skip


@pytest.mark.slow
async def test_repeated_sigterm_during_appends_loses_and_doubles_nothing(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Eight workers in turn, each stopped by SIGTERM while appends stream in: each exits 0
    with its last checkpoint committed; the database then equals a brute-force fold of the
    log, aggregate by aggregate (versions, seqs, states, clocks) and verifies."""
    db, log = tmp_path / "term.db", tmp_path / "worker.log"
    rng = random.Random(12)
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        done = asyncio.Event()
        producer = asyncio.create_task(produce(alice, bob, 100, 3, done))
        stopped_at: list[int] = []
        try:
            for n in range(STOPS):
                proc = start_worker(nats_url, settings, db, log, "--log-level", "info")
                await wait_ready(proc)
                await asyncio.sleep(rng.uniform(0.3, 0.9))
                assert not producer.done()  # every SIGTERM lands while the log grows
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 30) == 0, tail(log)
                last = [int(a or b) for a, b in _STOPPED.findall(log.read_text())]
                assert len(last) == n + 1, tail(log)
                assert checkpoint(db) == last[-1]  # what it said it held is committed
                stopped_at.append(last[-1])
        finally:
            done.set()
        sent, _ = await producer
        head = await alice.head()
        assert sent == head and stopped_at == sorted(stopped_at) and stopped_at[-1] < head
        proc = start_worker(nats_url, settings, db, log, "--log-level", "info")
        deadline = time.monotonic() + 60
        while checkpoint(db) < head:
            assert time.monotonic() < deadline and proc.poll() is None, tail(log)
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        events, _ = await log_events_and_garbage(alice)
        expected = brute_entities(events)
        stored = stored_states(db)
        assert set(stored) == set(expected)
        for key, exp in expected.items():
            got = stored[key]
            assert (got["version"], got["seq"], got["state"], got["vclock"], got["lamport"]) == (
                exp["version"], exp["seq"], exp["state"], exp["vclock"], exp["lamport"],
            ), key  # fmt: skip
        async with await ProjectionDB.open(db) as pdb:
            report = await verify(alice, pdb, [EntitiesProjection()])
        assert report.ok and report.messages == head, [m.describe() for m in report.mismatches]
