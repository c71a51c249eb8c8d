"""Verify: an independent fold of the log against the database, naming every difference."""

from __future__ import annotations

import json
from pathlib import Path

from eventstore import EventStore, NewEvent
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    SnapshotPolicy,
    verify,
)


async def test_a_faithful_database_verifies_and_every_kind_of_damage_is_named(
    store: EventStore, tmp_path: Path
) -> None:
    """A correct file verifies; changed states, versions, clocks, snapshots, missing and extra
    aggregates, and lost quarantine rows are each reported."""
    for i in range(30):
        await store.append("agent", f"v{i % 3}", NewEvent("E", {"i": i}))
    await store.js.publish(f"{store.settings.prefix}.agent.junk", b"???")
    path = tmp_path / "v.db"
    policy = RunnerSettings(snapshots=SnapshotPolicy(every=5, interval=0))
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()], settings=policy).catch_up()
        report = await verify(store, db, [EntitiesProjection()])
        assert report.ok, report.mismatches
        assert (report.aggregates, report.messages, report.snapshots) == (3, 31, 6)

        await db.execute(
            "UPDATE states SET state = ? WHERE aggregate_id = 'v0'", (json.dumps({"i": -1}),)
        )
        await db.execute("UPDATE states SET version = 99, lamport = 0 WHERE aggregate_id = 'v1'")
        await db.execute("UPDATE states SET vclock = '{}' WHERE aggregate_id = 'v2'")
        await db.execute(
            "UPDATE snapshots SET state = '{}' WHERE version = 5 AND aggregate_id = 'v0'"
        )
        await db.execute(
            "INSERT INTO states SELECT projection, aggregate_type, 'ghost', version, "
            "seq, state, vclock, lamport, recorded_us, resume, base, "
            "snapshot_version FROM states WHERE aggregate_id = 'v0'"
        )
        await db.execute("DELETE FROM quarantine")
        report = await verify(store, db, [EntitiesProjection()])
    found = sorted((m.aggregate_id or "-", m.what) for m in report.mismatches)
    assert found == [
        ("-", "quarantined messages differ"),
        ("ghost", "not in the log"),
        ("v0", "snapshot state differs"),
        ("v0", "state differs"),
        ("v1", "lamport differs"),
        ("v1", "version differs"),
        ("v2", "vclock differs"),
    ]
    text = {m.what: m.describe() for m in report.mismatches}
    assert "entities agent/v0: state differs (at version 10)" in text["state differs"]
    assert "log gives {'i': 27}, database has {'i': -1}" in text["state differs"]


async def test_a_projection_folded_by_other_code_is_reported(
    store: EventStore, tmp_path: Path
) -> None:
    """A code version that differs from the file's is a mismatch (rebuild), not compared."""
    await store.append("agent", "c", NewEvent("E"))
    async with await ProjectionDB.open(tmp_path / "c.db") as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        newer = EntitiesProjection()
        newer.version = EntitiesProjection.version + "-next"
        report = await verify(store, db, [newer, EntitiesProjection(name="other")])
    assert [(m.projection, m.what) for m in report.mismatches] == [
        ("entities", "code version differs"),
        ("other", "not in the database"),
    ]
