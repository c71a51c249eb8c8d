"""Rebuild: a fresh fold beside the live file, swapped in atomically while a worker runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from helpers_projections import scalar
from test_runner import Counter

from eventstore import AppendRequest, EventStore, NewEvent
from projections import (
    EntitiesProjection,
    ProjectionDB,
    ProjectionError,
    Runner,
    RunnerSettings,
    rebuild,
    verify,
)


async def test_rebuild_replaces_a_damaged_file_under_a_running_worker(
    store: EventStore, tmp_path: Path
) -> None:
    """The rebuilt content replaces the live file in one step; the running worker notices,
    resumes from the rebuilt checkpoint, and the result verifies against the log."""
    path = tmp_path / "live.db"
    for i in range(300):
        await store.append("agent", f"b{i % 10}", NewEvent("E", {"i": i}))
    async with await ProjectionDB.open(path) as db:
        runner = Runner(store, db, [EntitiesProjection()], settings=RunnerSettings(batch_size=50))
        worker = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(10):
                await runner.wait_for(300)
            old_generation = await db.meta("generation")
            await db.execute(
                "UPDATE states SET state = '{\"broken\": true}' WHERE aggregate_id = 'b3'"
            )
            assert not (await verify(store, db, [EntitiesProjection()])).ok

            async def keep_writing() -> None:
                for i in range(20):
                    await store.append_many(
                        AppendRequest("agent", f"b{j}", [NewEvent("E", {"late": i})])
                        for j in range(10)
                    )
                    if i % 5 == 0:
                        await store.js.publish(f"{store.settings.prefix}.agent.junk{i}", b"!")
                    await asyncio.sleep(0.01)

            writer = asyncio.create_task(keep_writing())
            progress: list[tuple[int, int]] = []
            result = await rebuild(
                store,
                path,
                [EntitiesProjection()],
                progress=lambda done, head: progress.append((done, head)),
            )
            await writer
            await store.append("agent", "b0", NewEvent("E", {"after": "rebuild"}))
            head = await store.head()
            async with asyncio.timeout(10):
                await runner.wait_for(head)
        finally:
            runner.stop()
            await worker
        assert await db.meta("generation") != old_generation
        assert runner.resyncs == 1
        assert result.checkpoint >= 300 and progress[-1][0] == result.checkpoint
        assert [d for d, _ in progress] == sorted(d for d, _ in progress)
        report = await verify(store, db, [EntitiesProjection()])
        assert report.ok, [m.describe() for m in report.mismatches]
        assert head == 505 and report.checkpoints == {"entities": 505}
    assert [n for n in os.listdir(tmp_path) if ".rebuild" in n] == []
    assert (
        scalar(path, "SELECT json_extract(state, '$.late') FROM states WHERE aggregate_id = 'b3'")
        == 19
    )


async def test_rebuild_refuses_to_drop_a_projection_it_does_not_load(
    store: EventStore, tmp_path: Path
) -> None:
    """A live file holding a projection the rebuild would not rebuild is left alone."""
    path = tmp_path / "two.db"
    await store.append("agent", "x", NewEvent("E"))
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection(), Counter()]).catch_up()
    with pytest.raises(ProjectionError, match=r"also holds projections \['counter'\]"):
        await rebuild(store, path, [EntitiesProjection()])
    result = await rebuild(store, path, [EntitiesProjection(), Counter()])
    assert result.projections == ["entities", "counter"] and result.checkpoint == 1


async def test_rebuild_creates_a_missing_database(store: EventStore, tmp_path: Path) -> None:
    """Rebuilding into a path with no file yet leaves a complete WAL database there."""
    await store.append("agent", "n", NewEvent("E", {"a": 1}))
    path = tmp_path / "sub" / "new.db"
    await rebuild(store, path, [EntitiesProjection()])
    assert scalar(path, "SELECT state FROM states") == '{"a":1}'
    assert scalar(path, "PRAGMA journal_mode") == "wal"
