"""consumers.WorkerProcess: a real ``eventstore worker`` child, ready when it serves, stopped by
SIGTERM (exit 0), crashed by SIGKILL and resumed from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import ProjectionClient, WorkerProcess
from eventstore import ConfigError, EventStore, EventStoreError, NewEvent, StreamSettings
from projections import EntitiesProjection, ProjectionDB, verify


async def test_ready_serves_kill_resumes_and_stop_exits_0(
    nats_url: str, store: EventStore, tmp_path: Path
) -> None:
    """Ready means its query service answers; after a SIGKILL a new child on the same file
    resumes from the checkpoint (every event applied once: verify agrees); SIGTERM exits 0."""
    worker = WorkerProcess(nats_url, store.settings, tmp_path, snapshot_every=3)
    worker.start()
    try:
        await worker.ready()
        client = ProjectionClient(store)
        for i in range(5):
            res = await store.append("counter", "c1", NewEvent("Set", {"n": i}))
        await client.wait_for(res.last_seq)
        first = worker.pid
        assert await worker.kill() == -9
        for i in range(5, 9):
            res = await store.append("counter", "c1", NewEvent("Set", {"n": i}))
        await worker.start().ready()
        assert worker.pid != first
        reply = await client.state("counter", "c1", min_seq=res.last_seq)
        assert (reply.version, reply.state) == (9, {"n": 8})
    finally:
        code = await worker.stop()
    assert code == 0
    assert worker.config.read_text().startswith('[projections]\nload = ["entities"]')
    async with await ProjectionDB.open(worker.db, readonly=True) as db:
        report = await verify(store, db, [EntitiesProjection()])
    assert report.ok, report.mismatches


async def test_a_worker_that_cannot_start_fails_ready_with_its_log(
    nats_url: str, store: EventStore, tmp_path: Path
) -> None:
    """A projection that cannot be imported: the child exits, ``ready`` raises at once with
    the end of the child's log instead of waiting for its timeout."""
    worker = WorkerProcess(
        nats_url, store.settings, tmp_path, projections=["no_such_module:P"], serves="p"
    )
    worker.start()
    try:
        with pytest.raises(EventStoreError, match="no_such_module"):
            await worker.ready(timeout=60)
    finally:
        await worker.stop()


def test_a_worker_needs_a_projection_and_a_name_to_ask(tmp_path: Path) -> None:
    """No projection, or only ``module:object`` specs without ``serves``: refused up front."""
    settings = StreamSettings(name="X", prefix="x")
    with pytest.raises(ConfigError, match="at least one"):
        WorkerProcess("nats://127.0.0.1:1", settings, tmp_path, projections=[])
    with pytest.raises(ConfigError, match="serves"):
        WorkerProcess("nats://127.0.0.1:1", settings, tmp_path, projections=["m:P"])
