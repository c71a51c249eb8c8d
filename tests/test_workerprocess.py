"""``consumers.WorkerProcess``: a real worker child process started and stopped from Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import ProjectionClient, WorkerProcess
from eventstore import EventStore, NewEvent, ProjectionError, StreamSettings


async def test_start_returns_once_what_was_appended_before_is_served(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """``start`` returns only when the worker serves the events appended before it, and
    ``stop`` (SIGTERM) ends it with exit code 0."""
    for i in range(30):
        await store.append("doc", "d1", NewEvent("Set", {"n": i}))
    worker = WorkerProcess(
        nats_url, stream=settings.name, prefix=settings.prefix, directory=tmp_path,
        settings={"snapshot_every": 10},
    )  # fmt: skip
    async with worker:
        async with ProjectionClient(store) as client:
            reply = await client.state("doc", "d1")  # no min_seq: start waited for it
        assert (reply.version, reply.state) == (30, {"n": 29})
        assert worker.process is not None and worker.process.poll() is None
    assert worker.process.returncode == 0
    assert worker.db.exists()
    assert "snapshot_every = 10" in worker.config.read_text()


async def test_a_worker_that_cannot_start_is_one_error_naming_why(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A projection that cannot be imported makes the worker exit; ``start`` raises a
    ``ProjectionError`` carrying its last line instead of waiting forever."""
    worker = WorkerProcess(
        nats_url, stream=settings.name, prefix=settings.prefix, directory=tmp_path,
        projections=["no_such_module_here:Nothing"],
    )  # fmt: skip
    with pytest.raises(ProjectionError, match="no_such_module_here"):
        await worker.start(timeout=60)
    assert worker.process is not None and worker.process.returncode not in (None, 0)


async def test_kill_is_a_crash_and_a_restart_resumes_from_the_checkpoint(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """``kill`` SIGKILLs the worker (exit -9); a new one on the same directory resumes and
    serves the events appended while none ran."""
    worker = WorkerProcess(nats_url, stream=settings.name, prefix=settings.prefix,
                           directory=tmp_path)  # fmt: skip
    await worker.start()
    await store.append("doc", "d2", NewEvent("Set", {"n": 1}))
    worker.kill()
    assert worker.process is not None and worker.process.returncode == -9
    res = await store.append("doc", "d2", NewEvent("Set", {"n": 2}))
    async with WorkerProcess(nats_url, stream=settings.name, prefix=settings.prefix,
                             directory=tmp_path) as again:  # fmt: skip
        async with ProjectionClient(store) as client:
            reply = await client.state("doc", "d2", min_seq=res.last_seq)
        assert (reply.version, reply.state) == (2, {"n": 2})
        assert again.db == worker.db
