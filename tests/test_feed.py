"""The change feed of real worker processes, received by a plain nats-py subscriber: every
aggregate's final version arrives across SIGKILLs, a start re-publishes what lies past the
recorded mark, heartbeats carry the checkpoint, oversized states come truncated."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
from helpers_projections import start_worker, tail
from helpers_serving import checkpoint, running_worker, sqlite_states, wait_folded, wait_serving

from eventstore import AppendRequest, EventStore, NewEvent

FIELDS = {"projection", "aggregate_type", "aggregate_id", "version", "seq", "state"}


class Collector:
    """A plain subscriber of a stream's feed of the entities projection."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.beats: list[dict[str, Any]] = []
        self.subjects: list[str] = []

    async def on_msg(self, msg: Any) -> None:
        body = json.loads(msg.data)
        if msg.subject.endswith("._beat"):
            self.beats.append(body)
        else:
            self.notes.append(body)
            self.subjects.append(msg.subject)

    def versions(self) -> dict[tuple[str, str], set[int]]:
        out: dict[tuple[str, str], set[int]] = defaultdict(set)
        for n in self.notes:
            out[n["aggregate_type"], n["aggregate_id"]].add(n["version"])
        return out


async def subscribe(url: str, stream: str) -> tuple[Any, Collector]:
    nc = await nats.connect(url)
    collector = Collector()
    await nc.subscribe(f"_ES.CHANGES.{stream}.entities.>", cb=collector.on_msg)
    await nc.flush()
    return nc, collector


async def until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_every_final_version_is_notified_across_sigkills(
    store: EventStore, tmp_path: Path
) -> None:
    """A worker SIGKILLed right after a commit, three times while appends go on: once a last
    worker has caught up, every aggregate's final version has reached the subscriber."""
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    nc, got = await subscribe(store.url, store.settings.name)
    rng = random.Random(7)
    done = asyncio.Event()
    serving = [asyncio.Event() for _ in range(3)]

    async def produce() -> None:
        for round_ in range(40):
            if round_ in (0, 10, 20):  # group commit is fast: keep appending through each kill
                await serving[round_ // 10].wait()
            await store.append_many(
                AppendRequest("agent", f"a{rng.randrange(60)}", [NewEvent("E", {"r": round_})])
                for _ in range(25)
            )
            await asyncio.sleep(0.01)
        done.set()

    writer = asyncio.create_task(produce())
    try:
        for started in serving:
            proc = start_worker(store.url, store.settings, db, log)
            await wait_serving(db, proc, log)
            before = checkpoint(db)
            started.set()  # the next appends land while this worker runs
            while checkpoint(db) == before and not done.is_set():
                assert proc.poll() is None, tail(log)
                await asyncio.sleep(0.001)
            proc.send_signal(signal.SIGKILL)  # right after a commit
            await asyncio.to_thread(proc.wait, 20)
        await writer
        async with running_worker(store, db, log):
            rows = sqlite_states(db)
            await until(
                lambda: all(r["version"] in got.versions()[k] for k, r in rows.items()),
                "every final version notified",
            )
            head = await store.head()
            await until(lambda: any(b["checkpoint"] == head for b in got.beats), "a beat")
        assert len(rows) == 60 and sum(r["version"] for r in rows.values()) == 1000
        assert all(set(n) >= FIELDS for n in got.notes)
        beat = got.beats[-1]
        assert (beat["projection"], beat["stream"]) == ("entities", store.settings.name)
        assert "re-published" in log.read_text()
    finally:
        writer.cancel()
        await nc.close()


async def test_a_start_republishes_every_state_past_the_recorded_mark(
    store: EventStore, tmp_path: Path
) -> None:
    """The mark says how far notifications were confirmed; a start re-publishes exactly the
    aggregates whose state seq lies past it (``previous_version`` null), then follows."""
    for i in range(10):
        await store.append("task", f"t{i}", NewEvent("Queued", {"i": i}))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log) as proc:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    con = sqlite3.connect(db)
    with con:
        mark = con.execute("SELECT value FROM meta WHERE key = 'feed.notified.entities'")
        assert int(mark.fetchone()[0]) == 10  # a clean stop records everything notified
        con.execute("UPDATE meta SET value = '6' WHERE key = 'feed.notified.entities'")
    con.close()
    nc, got = await subscribe(store.url, store.settings.name)
    try:
        async with running_worker(store, db, log):
            await until(lambda: len(got.notes) >= 4, "the re-published states")
            await store.append("task", "t0", NewEvent("Done"))
            await until(lambda: len(got.notes) >= 5, "the new change")
        again, new = got.notes[:4], got.notes[4:]
        assert [(n["aggregate_id"], n["previous_version"]) for n in again] == [
            ("t6", None), ("t7", None), ("t8", None), ("t9", None),
        ]  # fmt: skip
        assert [(n["aggregate_id"], n["version"], n["previous_version"]) for n in new] == [
            ("t0", 2, 1)
        ]
        assert got.subjects[0] == f"_ES.CHANGES.{store.settings.name}.entities.task.t6"
    finally:
        await nc.close()


async def test_previous_versions_chain_and_oversized_states_come_truncated(
    store: EventStore, tmp_path: Path
) -> None:
    """Without crashes each notification's previous_version is the version of the one before
    (0 for a new aggregate); a state above max_payload is sent as state null, truncated."""
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    nc, got = await subscribe(store.url, store.settings.name)
    try:
        async with running_worker(store, db, log) as proc:
            for i in range(30):
                await store.append("agent", f"c{i % 4}", NewEvent("E", {"i": i}))
            await store.append("agent", "c0", [NewEvent("E", {"x": 1}), NewEvent("E", {"x": 2})])
            blob = "x" * 400_000
            for k in range(3):  # 1.2 MB of state from three events below the limit
                await store.append("agent", "big", NewEvent("Blob", {f"k{k}": blob}))
            head = await store.head()
            await wait_folded(db, head, proc, log)
            await until(lambda: 3 in got.versions().get(("agent", "big"), set()), "big v3")
        chains: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for n in got.notes:
            chains[n["aggregate_id"]].append((n["previous_version"], n["version"]))
        for agg, chain in chains.items():
            assert chain[0][0] == 0, agg
            assert all(prev == chain[i - 1][1] for i, (prev, _) in enumerate(chain) if i), agg
        assert chains["c0"][-1][1] == 10
        big = [n for n in got.notes if n["aggregate_id"] == "big"]
        assert big[-1]["version"] == 3 and big[-1]["truncated"] is True
        assert big[-1]["state"] is None
        assert all("truncated" not in n for n in got.notes if n["aggregate_id"] != "big")
    finally:
        await nc.close()
