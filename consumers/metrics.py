"""Prometheus metrics of a worker (and of any process holding an ``EventStore``).

``worker_metrics(runner, db, port=...)`` serves ``/metrics`` in the Prometheus text format on
``host:port`` (loopback by default: metrics say how busy the host is, which is nobody else's
business unless the operator opens it) for as long as the block runs. The names:

========================================== ===========================================
``eventstore_events_applied_total``        messages this worker folded and committed
``eventstore_batch_size``                  histogram: messages per committed batch
``eventstore_commit_seconds``              histogram: fold + SQLite commit of one batch
``eventstore_lag_events{projection}``      log head minus the projection's checkpoint
``eventstore_lag_seconds{projection}``     age of the oldest event not yet applied
``eventstore_checkpoint{projection}``      last stream sequence applied
``eventstore_conflicts{projection}``       conflicts recorded in the database
``eventstore_quarantined{projection}``     messages quarantined in the database
``eventstore_append_retries_total``        producer: batches sent again with the same ids
``eventstore_append_conflicts_total``      producer: appends failed with VersionConflict
``eventstore_query_requests_total{...}``   query service: requests by projection, endpoint, code
========================================== ===========================================

Counts the worker already keeps (events applied, the producer's ``store.counters``) are read
when scraped, so nothing is counted twice; the lag and the database's counts come from
``projections.projection_status`` on a read-only connection of its own, refreshed every few
seconds (WAL readers never block the worker's commits).

The query service counts its requests with ``count_query(projection, endpoint, code)``; the
counter is shared by every registry of the process, so each worker's endpoint shows them.
An agent process exports its producer counts with ``serve_metrics(port,
producer_registry(store))``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventstore import ConfigError, EventStore, cancel_and_wait
from projections import CommitInfo, ProjectionDB, ProjectionStatus, Runner, projection_status

__all__ = [
    "DEFAULT_METRICS_HOST",
    "QUERY_REQUESTS",
    "WorkerMetrics",
    "count_query",
    "producer_registry",
    "serve_metrics",
    "worker_metrics",
]

log = structlog.get_logger("consumers.metrics")

DEFAULT_METRICS_HOST = "127.0.0.1"
REFRESH_EVERY = 2.0  # seconds between looks at the lag and the database's counts

# Shared by every registry of the process (registered into each): the query service calls
# count_query, whichever worker's endpoint is scraped.
QUERY_REQUESTS = Counter(
    "eventstore_query_requests",
    "Query service requests, by projection, endpoint and result code.",
    ["projection", "endpoint", "code"],
    registry=None,
)


def count_query(projection: str, endpoint: str, code: int | str) -> None:
    """Count one query-service request (``code``: 200, 404, 500 ... or an error name)."""
    QUERY_REQUESTS.labels(projection, endpoint, str(code)).inc()


class _ProducerCollector(Collector):
    """The producer's append counters of an ``EventStore``, read at each scrape."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            counters = self.store.counters
        except Exception:  # a closed store: nothing to say
            return
        yield CounterMetricFamily(
            "eventstore_append_retries",
            "Batches the producer sent again with the same event ids.",
            value=counters.retries,
        )
        yield CounterMetricFamily(
            "eventstore_append_conflicts",
            "Appends that failed with VersionConflict.",
            value=counters.conflicts,
        )


def producer_registry(store: EventStore) -> CollectorRegistry:
    """A registry with a producer's append counters and the query requests."""
    registry = CollectorRegistry()
    registry.register(_ProducerCollector(store))
    registry.register(QUERY_REQUESTS)
    return registry


class _WorkerCollector(Collector):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield CounterMetricFamily(
            "eventstore_events_applied",
            "Messages this worker folded and committed.",
            value=m.runner.events_applied,
        )
        gauges = {
            "lag_events": "Log head minus the projection's checkpoint.",
            "lag_seconds": "Age in seconds of the oldest event the projection has not applied.",
            "checkpoint": "Last stream sequence the projection applied.",
            "conflicts": "Conflicts recorded in the projection database.",
            "quarantined": "Messages quarantined in the projection database.",
        }
        families = {
            name: GaugeMetricFamily(f"eventstore_{name}", text, labels=["projection"])
            for name, text in gauges.items()
        }
        for status in m.statuses:
            values = {
                "lag_events": status.lag_events,
                "lag_seconds": status.lag_seconds,
                "checkpoint": status.checkpoint,
                "conflicts": status.conflicts,
                "quarantined": status.quarantined,
            }
            for name, value in values.items():
                if value is not None:
                    families[name].add_metric([status.projection], float(value))
        yield from families.values()


class WorkerMetrics:
    """The metrics of one running worker, in a registry of its own."""

    def __init__(self, runner: Runner, db: str | Path) -> None:
        self.runner = runner
        self.db = Path(db)
        self.statuses: list[ProjectionStatus] = []
        self.registry = CollectorRegistry()
        self.batch_size = Histogram(
            "eventstore_batch_size",
            "Messages per committed batch.",
            buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 20000),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "eventstore_commit_seconds",
            "Seconds to fold and commit one batch (one SQLite transaction).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_WorkerCollector(self))
        self.registry.register(_ProducerCollector(runner.store))
        self.registry.register(QUERY_REQUESTS)

    def committed(self, info: CommitInfo) -> None:
        """The runner's ``on_commit`` callback."""
        self.batch_size.observe(info.messages)
        self.commit_seconds.observe(info.seconds)

    async def refresh(self, every: float = REFRESH_EVERY) -> None:
        """Keep the lag and the database's counts fresh until cancelled."""
        db: ProjectionDB | None = None
        try:
            while True:
                try:
                    if db is None:
                        db = await self.runner.db.sibling(readonly=True)  # never a second open()
                    self.statuses = await projection_status(self.runner.store, db)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the log unreachable: keep the last values
                    log.debug("metrics refresh failed", error=str(exc))
                await asyncio.sleep(every)
        finally:
            if db is not None:
                await db.close()


def serve_metrics(
    port: int, registry: CollectorRegistry, host: str = DEFAULT_METRICS_HOST
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread; a port that
    cannot be bound is a ``ConfigError`` saying so."""
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another "
            "--metrics-port (or free that one)"
        ) from exc


@contextlib.asynccontextmanager
async def worker_metrics(
    runner: Runner,
    db: str | Path,
    port: int | None,
    host: str = DEFAULT_METRICS_HOST,
    *,
    every: float = REFRESH_EVERY,
) -> AsyncIterator[WorkerMetrics | None]:
    """Serve the worker's metrics while the block runs (``port`` None: nothing at all)."""
    if port is None:
        yield None
        return
    metrics = WorkerMetrics(runner, db)
    server, thread = serve_metrics(port, metrics.registry, host)
    runner.on_commit.append(metrics.committed)
    task: asyncio.Task[Any] = asyncio.create_task(metrics.refresh(every))
    log.info("serving metrics", url=f"http://{host}:{port}/metrics")
    try:
        yield metrics
    finally:
        await cancel_and_wait(task)
        with contextlib.suppress(ValueError):
            runner.on_commit.remove(metrics.committed)
        server.shutdown()
        server.server_close()
        await asyncio.to_thread(thread.join, 5.0)
