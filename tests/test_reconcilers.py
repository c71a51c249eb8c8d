"""The reconciler helper with the seed-001 request machine (``examples/reconciler``): a real
worker process walks each request to its end state, one stored step per transition."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from helpers_projections import ROOT, start_worker

from consumers.reactors import ReactorRunner
from eventstore import EventStore, NewEvent, StreamSettings

sys.path.insert(0, str(ROOT / "examples" / "reconciler"))
from request_machine import RequestReconciler


async def statuses(store: EventStore, request: str) -> list[str]:
    return [e.transition.to async for e in store.read("request", request) if e.transition]


async def wait_for_end(store: EventStore, request: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (got := await statuses(store, request)) or got[-1] not in ("Completed", "Failed"):
        assert time.monotonic() < deadline, f"{request} stuck at {got}"
        await asyncio.sleep(0.2)
    return got


async def test_a_worker_reconciles_requests_through_the_machine(
    nats_url: str, settings: StreamSettings, store: EventStore, tmp_path: Path
) -> None:
    """Each request walks Queued -> Routed -> Processing -> Streaming -> Completed (or to
    Failed when its spec says so), each step once, caused by the event it followed."""
    await store.append("request_spec", "r1", NewEvent("Submitted", {"model": "llama-3"}))
    env = {"PYTHONPATH": str(ROOT / "examples" / "reconciler")}
    worker = start_worker(nats_url, settings, tmp_path / "w.db", tmp_path / "w.log",
                          "--reactor", "request_machine:RequestReconciler", env=env)  # fmt: skip
    try:
        await store.append("request_spec", "r2", NewEvent("Submitted", {"fail": "OOM"}))
        done = await wait_for_end(store, "r1")
        failed = await wait_for_end(store, "r2")
        await asyncio.sleep(1)  # no step after the end state
        assert await statuses(store, "r1") == done
    finally:
        worker.kill()
        worker.wait(timeout=10)
    assert done == ["Queued", "Routed", "Processing", "Streaming", "Completed"]
    assert failed == ["Queued", "Routed", "Processing", "Failed"]
    events = [e async for e in store.read("request", "r1")]
    assert all(e.causation_id for e in events)
    assert [e.causation_id for e in events[1:]] == [e.id for e in events[:-1]]


async def test_a_reconcile_of_the_same_state_is_the_same_append(store: EventStore) -> None:
    """Two reconciles from one current state (a retry, a takeover, the period) derive the same
    event ids and expect the same version, so at most one is stored."""
    reconciler = RequestReconciler()
    ReactorRunner(store, reconciler)  # binds the store
    await store.append("request_spec", "r9", NewEvent("Submitted", {"model": "m"}))
    (key1, [a]), (key2, [b]) = [await reconciler.reconcile("r9") for _ in range(2)]
    assert key1 == key2 == "request/r9@0"
    assert [e.id for e in a.events] == [e.id for e in b.events]
    assert a.expected_version == b.expected_version == 0
    periodic = await reconciler.on_period()
    assert [k for k, _ in periodic] == ["request/r9@0"]
