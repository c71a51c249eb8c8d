"""Fencing in the fold (``projections.fencing``): per aggregate, an event of an older lease
grant than one already applied is quarantined as ``fenced``, by every reader alike."""

from __future__ import annotations

from pathlib import Path

from eventstore import EventStore, NewEvent
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    SnapshotPolicy,
    TimeTravel,
    list_quarantine,
)


def stamped(value: str, token: int, lease: str = "job") -> NewEvent:
    return NewEvent("Set", {"value": value}, metadata={"lease": {"name": lease, "token": token}})


async def test_fences_survive_snapshots_and_time_travel_agrees(
    store: EventStore, tmp_path: Path
) -> None:
    """The highest token travels in snapshots: time travel from a snapshot taken before the
    stale write refuses it as the runner did; another lease or an unstamped event is not
    fenced, and an equal or newer token is applied."""
    await store.append("realm", "r", stamped("new", 7))
    for i in range(5):
        await store.append("realm", "r", NewEvent("Tick", {"i": i}))  # snapshot at version 5
    await store.append("realm", "r", stamped("stale", 6))  # version 7: fenced
    await store.append("realm", "r", stamped("other lease", 1, lease="other"))
    await store.append("realm", "r", stamped("same grant", 7))
    policy = SnapshotPolicy(every=5, keep=3, interval=0)
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()],
                        settings=RunnerSettings(snapshots=policy))  # fmt: skip
        await runner.catch_up()
        q = await list_quarantine(db, "entities")
        travelled = await TimeTravel(store, EntitiesProjection(), db).state_at(
            "realm", "r", version=7
        )
        scratch = await TimeTravel(store, EntitiesProjection()).state_at("realm", "r", version=7)
        latest = await TimeTravel(store, EntitiesProjection(), db).state_at("realm", "r")
    assert [(r.version, r.kind) for r in q] == [(7, "fenced")]
    assert travelled.snapshot_version == 5
    assert travelled.state["value"] == scratch.state["value"] == "new"
    assert latest.state["value"] == "same grant"
