"""Failover on a real three-node JetStream cluster: the log survives the loss of a node.

Three producers on three connections append continuously to an R3 stream while a real worker
process folds it; one node is SIGKILLed (the stream's leader, or in the other test a node that
is not), the cluster carries on (a new leader is elected), and nobody is restarted by hand.
Afterwards every acknowledged event is in the log exactly once at the version it was
acknowledged with, every aggregate's versions are 1..n without a gap, ``eventstore verify``
passes and the worker's states equal a fold of the log.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_cluster import Writer, local_cluster, stream_leader
from helpers_projections import (
    ROOT,
    brute_entities,
    log_events,
    scalar,
    start_worker,
    stored_states,
    tail,
)

from eventstore import EventStore, LocalCluster, StreamSettings

pytestmark = pytest.mark.slow
PRODUCERS = 3
AFTER_KILL = 40  # appends each producer must get acknowledged after the kill


def checkpoint(db: Path) -> int:
    try:
        return int(scalar(db, "SELECT checkpoint FROM projections WHERE name = 'entities'") or 0)
    except Exception:  # the database or its table does not exist yet
        return 0


async def _failover(tmp_path: Path, settings: StreamSettings, *, kill_leader: bool) -> None:
    with local_cluster(tmp_path / "cluster") as cluster:
        settings = StreamSettings(name=settings.name, prefix=settings.prefix, replicas=3)
        stores = [
            await EventStore.connect(cluster.url, producer=f"p{i}", stream=settings)
            for i in range(PRODUCERS)
        ]
        db, log = tmp_path / "worker.db", tmp_path / "worker.log"
        worker = start_worker(cluster.url, settings, db, log, "--log-level", "info")
        try:
            await _load_kill_check(cluster, settings, stores, worker, db, log, kill_leader)
        finally:
            if worker.poll() is None:  # a failed check: never leave the worker behind
                worker.kill()
                await asyncio.to_thread(worker.wait)
            for s in stores:
                await s.close()


async def _load_kill_check(
    cluster: LocalCluster, settings: StreamSettings, stores: list[EventStore],
    worker: subprocess.Popen[bytes], db: Path, log: Path, kill_leader: bool,
) -> None:  # fmt: skip
    """Producers append, a node is killed, they carry on; then every check of the module."""
    stop = asyncio.Event()
    writers = [Writer(s, [f"c{i}-{k}" for k in range(4)]) for i, s in enumerate(stores)]
    tasks = [asyncio.create_task(w.run(stop)) for w in writers]
    try:
        await _until(lambda: all(len(w.acks) >= 20 for w in writers), 60, tasks)
        victim = await _victim(cluster, stores[0], settings.name, kill_leader=kill_leader)
        leader = await stream_leader(stores[0], settings.name)
        killed_at = time.monotonic()
        cluster.kill(victim)
        await _until(lambda: all(w.acked_after(killed_at) >= AFTER_KILL for w in writers),
                     90, tasks)  # fmt: skip
        new_leader = await stream_leader(stores[0], settings.name)
        assert new_leader != cluster.names[victim]
        if kill_leader:
            assert leader == cluster.names[victim] != new_leader
        assert worker.poll() is None, tail(log)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    head = await stores[0].head()
    deadline = time.monotonic() + 90
    while checkpoint(db) < head:  # the worker carries on by itself, no restart
        assert time.monotonic() < deadline and worker.poll() is None, tail(log)
        await asyncio.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 60) == 0, tail(log)

    events = await log_events(stores[0])
    assert len(events) == head  # nothing but our events, each message one event
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event is stored twice"
    stored = {(e.aggregate_id, e.version): e.id for e in events}
    for w in writers:
        for agg, acked in w.acked.items():
            versions = sorted(v for (a, v) in stored if a == agg)
            assert versions == list(range(1, len(versions) + 1)), (agg, versions)
            assert len(versions) == len(acked)  # each append is retried until acknowledged
            for version, event_id in enumerate(acked, 1):
                assert stored[(agg, version)] == event_id, (agg, version)
    expected = brute_entities(events)
    states = stored_states(db)
    assert set(states) == set(expected)
    for key, exp in expected.items():
        got = states[key]
        assert (got["version"], got["seq"], got["state"]) == (
            exp["version"], exp["seq"], exp["state"],
        ), key  # fmt: skip
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumers.cli", "--url", cluster.url, "--stream",
         settings.name, "--prefix", settings.prefix, "--db", str(db), "verify"],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr.decode()[-2000:]


async def _victim(
    cluster: LocalCluster, store: EventStore, stream: str, *, kill_leader: bool
) -> int:
    """The node to kill: the stream's leader, or a follower that a producer is connected to
    (so that its connection must fail over too), else any follower."""
    leader = cluster.names.index(await stream_leader(store, stream))
    if kill_leader:
        return leader
    connected = str(store.nc.connected_url.netloc) if store.nc.connected_url else ""
    followers = [i for i in range(len(cluster.names)) if i != leader]
    for i in followers:
        if cluster.urls[i].endswith(connected):
            return i
    return followers[0]


async def _until(check: object, timeout: float, tasks: list[asyncio.Task[None]]) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        for t in tasks:
            if t.done():
                t.result()  # a writer that failed: its error
        assert time.monotonic() < deadline, "the writers made no progress in time"
        await asyncio.sleep(0.05)


async def test_killing_the_stream_leader_loses_no_acknowledged_event(
    tmp_path: Path, settings: StreamSettings
) -> None:
    """SIGKILL the R3 stream's leader under load: a new leader is elected, producers and the
    worker carry on by themselves, and every acknowledged event is stored exactly once."""
    await _failover(tmp_path, settings, kill_leader=True)


async def test_killing_a_follower_loses_no_acknowledged_event(
    tmp_path: Path, settings: StreamSettings
) -> None:
    """SIGKILL a node that is not the stream's leader (one a producer is connected to): the
    connections fail over, nothing is lost or stored twice, the worker carries on."""
    await _failover(tmp_path, settings, kill_leader=False)
