"""The projections part of the demo: state now, a time-travel answer and a recorded conflict."""

from __future__ import annotations

import io
from pathlib import Path

from consumers.projections_demo import demo_projections
from eventstore import EventStore, NewEvent


async def test_the_demo_shows_state_time_travel_and_a_conflict(
    store: EventStore, tmp_path: Path
) -> None:
    """After a worker catches up, the demo prints current and past state and the conflict."""
    for step in ("Created", "Configured", "Started"):
        await store.append("agent", "asst_qa", NewEvent(step, {"step": step}))
    out = io.StringIO()
    await demo_projections(store, tmp_path / "demo.db", out)
    text = out.getvalue().splitlines()
    assert any(line.startswith("projection worker folded the log") for line in text)
    assert 'state now      agent/asst_qa v3: {"step":"Started"}' in text
    assert any(
        line.startswith('time travel    agent/asst_qa at version 1: {"step":"Created"}')
        for line in text
    )
    conflict = [line for line in text if line.startswith("conflict")]
    assert len(conflict) == 1 and "night-shift" in conflict[0] and "log-order" in conflict[0]
    assert 'state now      config/te_po v3: {"model":"gpt-4o","temp":0.2}' in text
