"""examples.paddler (seed 001) against the session's real nats-server, with the real worker
process (projection and reconciler) it starts: the domain outcome, from its JSON line and read
back through the public API."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers_examples import run_example

from eventstore import EventStore, InvalidTransition, NewEvent, StreamSettings
from examples.paddler.desired import PaddlerProjection
from projections import ProjectionDB, TimeTravel, query_states, verify


async def test_paddler_runs_seed_001_end_to_end(nats_url: str, tmp_path: Path) -> None:
    """Exit 0 with every check held; read back: requests ended where their paths lead and the
    stored machine still refuses a step out of a final state; desired fields come from the
    right source; the reconciler loaded each model once; the worker's database verifies."""
    tag = uuid.uuid4().hex[:8]
    settings = StreamSettings(name=f"PADDLER_{tag}", prefix=f"paddler{tag}")
    proc, figures = run_example("paddler", nats_url, settings=settings, workdir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert figures["ok"] is True and all(figures["checks"].values())
    assert figures["desired"]["origin"] == {
        "desired_model": "config", "endpoint": "discovery",
        "max_context_length": "config", "slots": "api",
    }  # fmt: skip
    assert figures["requests"]["refused"] == ["Completed:Streaming", "Queued:Processing"]
    assert figures["diff"] == {"changes": 3, "events": 6}

    async with await EventStore.connect(nats_url, producer="paddler-test", stream=settings) as s:
        async with await ProjectionDB.open(tmp_path / "worker.db", readonly=True) as db:
            page = await query_states(db, "paddler", aggregate_type="request")
            agents = await query_states(db, "paddler", aggregate_type="agent")
            desired = await query_states(db, "paddler", aggregate_type="agent_desired")
            checked = await verify(s, db, [PaddlerProjection()])
        assert checked.ok, checked.mismatches
        statuses = {r.aggregate_id: r.state["status"] for r in page.items}
        assert statuses == {"r1": "Completed", "r2": "Completed", "r3": "Failed",
                            "r4": "Failed", "r5": "Queued"}  # fmt: skip
        current = {r.aggregate_id: r.state for r in agents.items}
        applicable = {r.aggregate_id: r.state["applicable"] for r in desired.items}
        assert current["agent-1"]["model"] == "huggingface:microsoft/DialoGPT-medium@main"
        assert current["agent-1"]["slots"] == applicable["agent-1"]["slots"] == 4
        assert current["agent-2"]["model"] == "local:/models/llama-7b.gguf"
        assert applicable["agent-2"]["slots"] == 2  # the config file over discovery's 1
        loads = [
            e.data["model"] async for e in s.read("agent", "agent-1") if e.type == "ModelLoaded"
        ]
        assert len(loads) == 3 and "Llama-3" in loads[1]
        r1 = [e async for e in s.read("request", "r1")]
        with pytest.raises(InvalidTransition):
            await s.append("request", "r1", NewEvent("Retry", transition="Completed:Queued"))
        assert [e.version async for e in s.read("request", "r1")] == [e.version for e in r1]
        past = await TimeTravel(s, PaddlerProjection()).state_at("request", "r1", version=2)
        assert past.state["status"] == "Routed" and past.state["agent"] == "agent-1"
