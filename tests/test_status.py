"""Status: checkpoint, head, lag in events and seconds, and what each projection holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_runner import Counter

from eventstore import EventStore, NewEvent
from projections import EntitiesProjection, ProjectionDB, Runner, projection_status


async def test_status_reports_lag_and_counts(store: EventStore, tmp_path: Path) -> None:
    """A caught-up projection has no lag; one behind reports events and the oldest's age."""
    for i in range(5):
        await store.append("agent", f"s{i % 2}", NewEvent("E", {"i": i}))
    await store.js.publish(f"{store.settings.prefix}.agent.bad", b"x")
    async with await ProjectionDB.open(tmp_path / "st.db") as db:
        await Runner(store, db, [EntitiesProjection(), Counter()]).catch_up()
        await asyncio.sleep(0.2)
        await store.append("agent", "s0", NewEvent("E"))
        await store.append("agent", "s0", NewEvent("E"))
        await Runner(store, db, [Counter()]).catch_up()
        await asyncio.sleep(0.1)
        by_name = {s.projection: s for s in await projection_status(store, db)}
    entities, counter = by_name["entities"], by_name["counter"]
    assert (entities.checkpoint, entities.head, entities.lag_events) == (6, 8, 2)
    assert entities.lag_seconds is not None and 0.1 <= entities.lag_seconds < 10
    assert (entities.aggregates, entities.quarantined, entities.conflicts) == (2, 1, 0)
    assert entities.checkpoint_at is not None and entities.updated_at is not None
    assert (counter.checkpoint, counter.lag_events, counter.lag_seconds) == (8, 0, 0.0)
    assert counter.code_version == "1" and counter.snapshots == 0
