"""Metrics over HTTP, parsed with prometheus_client's own parser: a real worker process
serving them, and a producer's append counters."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from helpers_projections import start_worker, tail
from prometheus_client.parser import text_string_to_metric_families

from consumers.metrics import count_query, producer_registry, serve_metrics
from eventstore import ConfigError, EventStore, NewEvent, StreamSettings, VersionConflict, free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``http://127.0.0.1:port/metrics`` by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_worker_serves_applied_lag_batches_conflicts_and_quarantine(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A worker started with --metrics-port reports what it folded: 41 messages applied,
    lag 0, one conflict, one quarantined message, batch and commit histograms, query counts."""
    db, log = tmp_path / "m.db", tmp_path / "worker.log"
    for i in range(38):
        await store.append("agent", f"m{i % 4}", NewEvent("E", {"i": i}))
    async with await EventStore.connect(nats_url, producer="bob", stream=settings) as bob:
        await bob.append("agent", "m0", NewEvent("Blind", {"i": -1}))  # never read m0: a conflict
    await store.js.publish(f"{settings.prefix}.agent.junk", b"not an event")
    await store.append("agent", "m1", NewEvent("Last"))
    count_query("entities", "state", 200)
    port = free_port()
    proc = start_worker(nats_url, settings, db, log, "--metrics-port", str(port))
    entities = (("projection", "entities"),)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, tail(log)
            try:
                got = await asyncio.to_thread(scrape, port)
            except OSError:
                got = {}
            if got.get(("eventstore_checkpoint", entities)) == 41 and got.get(
                ("eventstore_quarantined", entities)
            ):
                break
            await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, tail(log)
    assert got[("eventstore_events_applied_total", ())] == 41
    assert got[("eventstore_lag_events", entities)] == 0
    assert got[("eventstore_lag_seconds", entities)] == 0
    assert got[("eventstore_conflicts", entities)] == 1
    assert got[("eventstore_quarantined", entities)] == 1
    assert (
        got[("eventstore_batch_size_sum", ())] == 41
        and got[("eventstore_batch_size_count", ())] >= 1
    )
    assert got[("eventstore_commit_seconds_count", ())] == got[("eventstore_batch_size_count", ())]
    assert got[("eventstore_append_retries_total", ())] == 0
    with pytest.raises(OSError):
        await asyncio.to_thread(scrape, port)  # the worker stopped serving with it


async def test_producer_counters_and_query_requests_are_scraped(store: EventStore) -> None:
    """A producer's version conflicts and the query service's requests appear on its own
    endpoint, counted exactly."""
    await store.append("agent", "p", NewEvent("E"))
    for _ in range(2):
        with pytest.raises(VersionConflict):
            await store.append("agent", "p", NewEvent("E"), expected_version=0)
    port = free_port()
    server, _thread = serve_metrics(port, producer_registry(store))
    try:
        key = ("eventstore_query_requests_total", (("code", "404"), ("endpoint", "history"),
                                                   ("projection", "tasks")))  # fmt: skip
        before = (await asyncio.to_thread(scrape, port)).get(key, 0)
        count_query("tasks", "history", 404)
        got = await asyncio.to_thread(scrape, port)
    finally:
        server.shutdown()
        server.server_close()
    assert got[("eventstore_append_conflicts_total", ())] == 2
    assert got[("eventstore_append_retries_total", ())] == 0
    assert got[key] == before + 1


def test_a_busy_metrics_port_is_a_config_error(store: EventStore) -> None:
    """A port already taken is a ConfigError naming it, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            serve_metrics(port, producer_registry(store))
