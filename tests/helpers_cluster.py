"""Three real nats-servers as one JetStream cluster, and writers that keep appending through it.

``local_cluster(tmp_path)`` starts an ``eventstore.LocalCluster`` on free loopback ports with
stores under the test's temporary directory (each test gets its own: failover tests kill
nodes). ``Writer`` appends to its own aggregates on one connection, one event at a time at the
version it expects, with an id of its own choosing, and retries an append that failed with a
``Retryable`` error with the *same* id and expectation, as the error hierarchy tells a caller
to: so every acknowledgement it records is one event, and the log must hold each exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eventstore import EventStore, EventStoreError, LocalCluster, NewEvent, Retryable, uuid7


@contextlib.contextmanager
def local_cluster(directory: Path, nodes: int = 3) -> Iterator[LocalCluster]:
    """A started cluster; every node SIGKILLed (and so its store lock released) afterwards."""
    cluster = LocalCluster(directory, nodes=nodes)
    cluster.start()
    try:
        yield cluster
    finally:
        for i in range(nodes):
            cluster.kill(i)


async def stream_leader(store: EventStore, stream: str, timeout: float = 30.0) -> str:
    """The name of the stream's current leader (waiting out an election)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            info = await store.js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return str(info.cluster.leader)
        assert time.monotonic() < deadline, f"stream {stream} has no leader after {timeout}s"
        await asyncio.sleep(0.1)


@dataclass
class Writer:
    """Appends ``Counted`` events to ``aggregates`` in turn, each at its expected version."""

    store: EventStore
    aggregates: list[str]
    acked: dict[str, list[str]] = field(default_factory=dict)  # aggregate -> ids, by version
    acks: list[tuple[float, float]] = field(default_factory=list)  # (sent, acknowledged)
    retries: int = 0
    errors: list[str] = field(default_factory=list)  # Retryable errors met (then retried)

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            agg = self.aggregates[turn % len(self.aggregates)]
            turn += 1
            ids = self.acked.setdefault(agg, [])
            event = NewEvent("Counted", {"n": len(ids) + 1, "by": self.store.producer}, id=uuid7())
            sent = time.monotonic()
            while True:
                try:
                    result = await self.store.append(
                        "counter", agg, event, expected_version=len(ids), timeout=60
                    )
                    break
                except Retryable as exc:  # an election, a lost ack: the same id again
                    self.retries += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)
                except EventStoreError as exc:
                    raise AssertionError(f"{exc!r} after retrying {self.errors[-3:]}") from exc
            assert result.version == len(ids) + 1, (agg, result, len(ids))
            ids.append(event.id or "")
            self.acks.append((sent, time.monotonic()))

    def acked_after(self, moment: float) -> int:
        """Appends sent after ``moment`` and acknowledged."""
        return sum(1 for sent, _ in self.acks if sent > moment)
