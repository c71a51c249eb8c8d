"""``consumers.WorkerProcess``: a real ``eventstore worker`` child, started once it serves and
has caught up, stopped by SIGTERM (exit 0), crashed by SIGKILL and resumed from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import ProjectionClient, WorkerProcess
from eventstore import ConfigError, EventStore, NewEvent, ProjectionError, StreamSettings
from projections import EntitiesProjection, ProjectionDB, projection_checkpoint, verify


async def test_start_returns_once_what_was_appended_before_is_served(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """``start`` returns only when the worker serves the events appended before it, and
    ``stop`` (SIGTERM) ends it with exit code 0; the config holds the load list and settings."""
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
        assert worker.running and worker.returncode is None
    assert not worker.running and worker.returncode == 0
    assert worker.db.exists()
    config = worker.config.read_text()
    assert config.startswith('[projections]\nload = ["entities"]\n')
    assert "snapshot_every = 10" in config


async def test_kill_is_a_crash_and_a_restart_resumes_from_the_checkpoint(
    nats_url: str, store: EventStore, tmp_path: Path
) -> None:
    """``kill`` SIGKILLs the worker (exit -9); a second ``start`` of the same object is a new
    child on the same file that serves what was appended while none ran, every event applied
    once (``verify`` agrees); SIGTERM then exits 0."""
    worker = WorkerProcess(
        nats_url, stream=store.settings, directory=tmp_path, settings={"snapshot_every": 3}
    )
    await worker.start()
    try:
        client = ProjectionClient(store)
        for i in range(5):
            res = await store.append("counter", "c1", NewEvent("Set", {"n": i}))
        await client.wait_for(res.last_seq)
        first = worker.pid
        assert worker.kill() == -9
        assert not worker.running and worker.returncode == -9
        for i in range(5, 9):
            res = await store.append("counter", "c1", NewEvent("Set", {"n": i}))
        await worker.start()
        assert worker.pid != first
        reply = await client.state("counter", "c1")  # no min_seq: start caught up
        assert (reply.version, reply.state) == (9, {"n": 8})
    finally:
        code = await worker.stop()
    assert code == 0
    async with await ProjectionDB.open(worker.db, readonly=True) as db:
        report = await verify(store, db, [EntitiesProjection()])
    assert report.ok, report.mismatches


async def test_a_new_worker_beside_a_running_one_waits_for_its_own_database(
    nats_url: str, store: EventStore, tmp_path: Path
) -> None:
    """Workers of one stream answer queries as one queue group: a second worker's ``start``
    returns only once its own database (not the caught-up first worker) holds the head; a
    second ``start`` of a running worker is refused."""
    for i in range(60):
        await store.append("doc", f"d{i % 7}", NewEvent("Set", {"n": i}))
    async with WorkerProcess(nats_url, stream=store.settings, directory=tmp_path / "a") as a:
        with pytest.raises(ProjectionError, match="already running"):
            await a.start()
        head = await store.head()
        async with WorkerProcess(nats_url, stream=store.settings, directory=tmp_path / "b") as b:
            async with await ProjectionDB.open(b.db, readonly=True) as db:
                assert await projection_checkpoint(db, "entities") >= head
            assert b.db != a.db


async def test_a_worker_that_cannot_start_is_one_error_naming_why(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A projection that cannot be imported makes the worker exit; ``start`` raises a
    ``ProjectionError`` carrying its last line at once, instead of waiting for its timeout,
    and the log holds the whole story."""
    worker = WorkerProcess(
        nats_url, stream=settings.name, prefix=settings.prefix, directory=tmp_path,
        projections=["no_such_module_here:Nothing"], serves="nothing",
    )  # fmt: skip
    with pytest.raises(ProjectionError, match="no_such_module_here"):
        await worker.start(timeout=60)
    assert not worker.running and worker.returncode not in (None, 0)
    assert "no_such_module_here" in worker.tail()
    assert await worker.stop() == worker.returncode  # stopping a dead worker: its code


def test_a_config_the_worker_could_not_use_is_refused_up_front(tmp_path: Path) -> None:
    """No projection, only ``module:object`` specs without ``serves``, a prefix that is not
    the stream's, or a settings key that is ``load`` or no TOML key: ``ConfigError``."""
    url, stream = "nats://127.0.0.1:1", StreamSettings(name="X", prefix="x")
    with pytest.raises(ConfigError, match="at least one"):
        WorkerProcess(url, stream=stream, directory=tmp_path, projections=[])
    with pytest.raises(ConfigError, match="serves"):
        WorkerProcess(url, stream=stream, directory=tmp_path, projections=["m:P"])
    with pytest.raises(ConfigError, match="prefix"):
        WorkerProcess(url, stream=stream, directory=tmp_path, prefix="y")
    for key in ("load", "a b", "x]\n[y"):
        with pytest.raises(ConfigError, match="settings"):
            WorkerProcess(url, stream=stream, directory=tmp_path, settings={key: 1})
    never = WorkerProcess(url, stream="X", directory=tmp_path)
    assert (never.pid, never.returncode, never.running) == (None, None, False)
    assert never.stream == StreamSettings(name="X", prefix="events")
