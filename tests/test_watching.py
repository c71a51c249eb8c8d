"""ProjectionClient.watch / view / wait_for against real worker processes and a real server:
every version of every aggregate exactly once and in order across SIGKILLs, a server restart
and a slow subscriber; latest mode never goes backwards; wait_for is read-your-writes; a live
view answers from memory."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import start_worker, tail
from helpers_serving import checkpoint, running_worker, sqlite_states, wait_folded, wait_serving

from consumers import ProjectionClient, Watcher
from eventstore import (
    AppendRequest,
    EmbeddedServer,
    EventStore,
    NewEvent,
    RequestTimeout,
    StreamSettings,
    UnknownProjection,
)
from projections import StateRecord


class Seen:
    """What a watch yielded, by aggregate, in arrival order."""

    def __init__(self) -> None:
        self.items: list[StateRecord] = []
        self.by: dict[tuple[str, str], list[int]] = defaultdict(list)

    def add(self, rec: StateRecord) -> None:
        self.items.append(rec)
        self.by[rec.aggregate_type, rec.aggregate_id].append(rec.version)

    def complete(self, finals: dict[tuple[str, str], int]) -> bool:
        return all(self.by.get(k, [0])[-1] >= v for k, v in finals.items())


async def collect(it: AsyncIterator[StateRecord], seen: Seen, pause: float = 0.0) -> None:
    async for rec in it:
        seen.add(rec)
        if pause:
            await asyncio.sleep(pause)


async def until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def finals(db: Path) -> dict[tuple[str, str], int]:
    return {k: r["version"] for k, r in sqlite_states(db).items()}


def assert_exactly_once(seen: Seen, final: dict[tuple[str, str], int], first: int = 1) -> None:
    """Per aggregate, the versions yielded are first..final, each once, in order (an
    aggregate listed at start begins at its listed version)."""
    assert set(seen.by) == set(final)
    for key, versions in seen.by.items():
        start = versions[0] if versions[0] > first else first
        assert versions == list(range(start, final[key] + 1)), (key, versions)


async def produce(store: EventStore, rounds: int, seed: int, pause: float = 0.01) -> None:
    rng = random.Random(seed)
    for r in range(rounds):
        await store.append_many(
            AppendRequest("agent", f"a{rng.randrange(30)}", [NewEvent("E", {"r": r, "i": i})])
            for i in range(10)
        )
        await asyncio.sleep(pause)


async def test_watch_sees_every_version_once_across_worker_sigkills(
    store: EventStore, tmp_path: Path
) -> None:
    """While the worker is SIGKILLed and restarted three times mid-stream, a watcher started
    on a log already holding states yields, per aggregate, its listed version and then every
    later version exactly once, in order, and fills the gaps with state-at-version."""
    await produce(store, 5, seed=1, pause=0)
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    proc = start_worker(store.url, store.settings, db, log)
    await wait_folded(db, await store.head(), proc, log)
    await wait_serving(db, proc, log)
    at_start = finals(db)
    client = ProjectionClient(store)
    watcher = Watcher(client, "entities")
    seen = Seen()
    task = asyncio.create_task(collect(watcher.__aiter__(), seen))
    await asyncio.wait_for(watcher.ready.wait(), 30)
    assert {k: v for k, [v] in seen.by.items()} == at_start  # the current states, only
    writer = asyncio.create_task(produce(store, 60, seed=2))
    try:
        for _ in range(3):
            before = checkpoint(db)
            while checkpoint(db) == before and not writer.done():
                assert proc.poll() is None, tail(log)
                await asyncio.sleep(0.001)
            proc.send_signal(signal.SIGKILL)  # right after a commit
            await asyncio.to_thread(proc.wait, 20)
            await asyncio.sleep(0.2)  # appends go on while no worker runs
            proc = start_worker(store.url, store.settings, db, log)
            await wait_serving(db, proc, log)
        await writer
        await wait_folded(db, await store.head(), proc, log)
        final = finals(db)
        await until(lambda: seen.complete(final), "every final version watched")
    finally:
        task.cancel()
        writer.cancel()
        proc.kill()
        await asyncio.to_thread(proc.wait, 20)
    assert sum(final.values()) == 650
    assert_exactly_once(seen, final)
    for key, version in at_start.items():
        assert seen.by[key][0] == version
    assert watcher.filled > 0  # batches fold several versions into one notification
    assert "re-published" in log.read_text()


async def test_watch_sees_every_version_once_across_a_server_restart(
    private_server: EmbeddedServer, tmp_path: Path
) -> None:
    """nats-server killed and restarted on the same port and store while events are appended:
    the watcher reconnects, resynchronises from its floor and misses or repeats nothing."""
    settings = StreamSettings(name="WATCHRS", prefix="wrs")
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    url = private_server.url
    async with await EventStore.connect(url, producer="p", stream=settings) as store:
        await produce(store, 3, seed=3, pause=0)
        proc = start_worker(url, settings, db, log)
        try:
            await wait_folded(db, await store.head(), proc, log)
            await wait_serving(db, proc, log)
            async with await ProjectionClient.connect(url, stream=settings.name) as client:
                watcher = Watcher(client, "entities", "agent")
                seen = Seen()
                task = asyncio.create_task(collect(watcher.__aiter__(), seen))
                await asyncio.wait_for(watcher.ready.wait(), 30)
                await produce(store, 10, seed=4)
                private_server.kill()
                await asyncio.sleep(0.5)
                private_server.start()
                await produce(store, 20, seed=5)
                await wait_folded(db, await store.head(), proc, log)
                final = finals(db)
                await until(lambda: seen.complete(final), "every final version watched")
                task.cancel()
        finally:
            proc.kill()
            await asyncio.to_thread(proc.wait, 20)
    assert sum(final.values()) == 330
    assert_exactly_once(seen, final)
    assert watcher.resyncs >= 1


async def test_a_slow_subscriber_still_sees_every_version_once(
    store: EventStore, tmp_path: Path
) -> None:
    """A subscriber sleeping between items with a small buffer overflows it and resyncs with
    `changes`, yet yields every version exactly once; a latest-mode watcher as slow never goes
    backwards and ends at every final version."""
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log) as proc:
        client = ProjectionClient(store)
        full, latest = Watcher(client, "entities", buffer=20), Watcher(client, latest=True,
                                                                        projection="entities",
                                                                        buffer=20)  # fmt: skip
        seen_full, seen_latest = Seen(), Seen()
        tasks = [
            asyncio.create_task(collect(full.__aiter__(), seen_full, pause=0.002)),
            asyncio.create_task(collect(latest.__aiter__(), seen_latest, pause=0.002)),
        ]
        await asyncio.gather(full.ready.wait(), latest.ready.wait())
        await produce(store, 40, seed=6, pause=0)
        await wait_folded(db, await store.head(), proc, log)
        final = finals(db)
        await until(lambda: seen_full.complete(final), "full watch complete")
        await until(lambda: seen_latest.complete(final), "latest watch complete")
        for t in tasks:
            t.cancel()
    assert_exactly_once(seen_full, final)
    assert full.resyncs >= 1 and latest.resyncs >= 1
    for key, versions in seen_latest.by.items():
        assert versions == sorted(set(versions)), key  # never backwards, never twice
        assert versions[-1] == final[key]
    assert sum(len(v) for v in seen_latest.by.values()) < sum(final.values())  # coalesced


async def test_watch_one_aggregate_and_no_worker(store: EventStore, tmp_path: Path) -> None:
    """Watching one aggregate that does not exist yet yields its versions from 1; with no
    worker serving the projection a watch fails at once with UnknownProjection."""
    client = ProjectionClient(store)
    with pytest.raises(UnknownProjection):
        async for _ in client.watch("entities"):
            pass
    await store.append("task", "other", NewEvent("E"))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log):
        watcher = Watcher(client, "entities", "task", "t 1")
        seen = Seen()
        task = asyncio.create_task(collect(watcher.__aiter__(), seen))
        await watcher.ready.wait()
        for i in range(5):
            await store.append("task", "t 1", NewEvent("E", {"i": i}))
        await store.append("task", "other", NewEvent("E"))
        await until(lambda: seen.by.get(("task", "t 1"), [0])[-1] == 5, "five versions")
        task.cancel()
    assert seen.by == {("task", "t 1"): [1, 2, 3, 4, 5]}
    assert seen.items[-1].state == {"i": 4}


async def test_wait_for_is_read_your_writes(store: EventStore, tmp_path: Path) -> None:
    """After wait_for(append.last_seq) the state read equals the write, every time; a seq
    never reached times out naming the projection and the checkpoint it got to."""
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log):
        client = ProjectionClient(store)
        for i in range(20):
            res = await store.append("agent", "rw", NewEvent("Set", {"n": i}))
            status = await client.wait_for(res.last_seq, timeout=10)
            assert status.checkpoint >= res.last_seq
            got = await client.state("agent", "rw")
            assert (got.version, got.state) == (i + 1, {"n": i})
        head = await store.head()
        with pytest.raises(RequestTimeout) as info:
            await client.wait_for(head + 5, timeout=0.5)
    assert info.value.projection == "entities"
    assert info.value.checkpoint == head
    assert f"up to seq {head}" in str(info.value) and "entities" in str(info.value)


async def test_a_live_view_answers_from_memory(store: EventStore, tmp_path: Path) -> None:
    """A view holds every agent's current state, follows changes (on_change sees each), and
    keeps answering get() after its connection is closed: no network call behind get."""
    for i in range(5):
        await store.append("agent", f"v{i}", NewEvent("Created", {"n": i}))
    await store.append("task", "x", NewEvent("Queued"))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    changed: list[tuple[str, int]] = []
    async with running_worker(store, db, log):
        client = await ProjectionClient.connect(store.url, stream=store.settings.name)

        async def on_change(rec: StateRecord) -> None:
            changed.append((rec.aggregate_id, rec.version))

        view = await client.view("entities", aggregate_type="agent", on_change=on_change)
        async with view:
            assert len(view) == 5 and view.get("v3") is not None
            assert view.get("x") is None  # a task: not in this view
            listed_at = view.seq
            assert listed_at >= 5
            res = await store.append("agent", "v3", NewEvent("Moved", {"n": 33}))
            await store.append("agent", "v9", NewEvent("Created", {"n": 9}))
            await until(lambda: view.get("v9") is not None, "v9 in the view")
            await until(lambda: view.seq >= res.last_seq, "the floor moves with the beats")
            await client.close()  # nothing below may touch the network
            v3 = view.get("v3")
            assert v3 is not None and (v3.version, v3.state) == (2, {"n": 33})
            assert len(view) == 6
    assert ("v3", 2) in changed and ("v9", 1) in changed
    with contextlib.suppress(Exception):
        await client.close()
