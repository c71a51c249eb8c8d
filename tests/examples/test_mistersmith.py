"""examples.mistersmith (seed 003) against the real server, with its real worker process
(the supervisor reactor, metrics) and a fresh embedded server for the migration."""

from __future__ import annotations

from helpers_examples import run_example

from eventstore import EventStore, StreamSettings
from projections import Repository


async def test_mistersmith_supervises_replays_and_migrates(nats_url: str) -> None:
    """Exit 0 with every check held; in the log: each lifecycle event stored once despite
    the retries, three restarts caused by the failures they answer, one escalation, and a
    migration that imported every event and verified."""
    proc, figures = run_example("mistersmith", nats_url)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert figures["ok"] and figures["failed"] == []
    assert figures["lifecycles"] == {"agents": 3, "duplicates": 15, "stored": 15}
    sup = figures["supervision"]
    assert (sup["failures"], sup["backoff_ms"], sup["escalations"], sup["status"]) == (
        4, [50, 100, 200], 1, "Terminated",
    )  # fmt: skip
    mig = figures["migration"]
    assert mig["verify_ok"] and mig["imported"] == mig["exported"] > 0
    assert figures["metrics"]["eventstore_lag_events"] == 0

    run = figures["run"]
    settings = StreamSettings(name="SMITH", prefix="smith")
    async with await EventStore.connect(nats_url, producer="reader", stream=settings) as store:
        for n in range(3):
            events = [ev async for ev in store.read("agent", f"agent{n}-{run}")]
            assert [ev.transition.to for ev in events if ev.transition] == [
                "Starting", "Running", "Processing", "Terminated",
            ]  # fmt: skip
        flaky = [ev async for ev in store.read("agent", f"flaky-{run}")]
        by_id = {ev.id: ev for ev in flaky}
        restarts = [ev for ev in flaky if ev.type == "RestartScheduled"]
        assert len(restarts) == 3
        assert all(by_id[r.causation_id or ""].type == "Failed" for r in restarts)
        assert flaky[-1].type == "GaveUp"
        node = [ev async for ev in store.read("supervisor", f"workers-{run}")]
        assert [ev.data["failures"] for ev in node] == [1, 2, 3]
        root = await Repository(store).load("supervisor", f"root-{run}")
        assert root.version == 1 and root.state["failures"] == 4
