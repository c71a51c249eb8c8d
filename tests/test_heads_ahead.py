"""Heads looked up ahead: the committer asks the heads of queued appends' new aggregates while
batches are in flight (``HeadReader.look_ahead``), so a freed batch slot does not wait for a
lookup. Requests are counted on the wire by a second connection subscribed to the API subjects
the producer reads heads on, with the subjects each ``multi_last`` request names.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import nats
import pytest

from eventstore import AppendRequest, EventStore, NewEvent, StreamSettings
from eventstore.directget import MULTI_LAST_MAX
from eventstore.pending import Pending


class Wire:
    """Head-reading API requests by kind, and how often each subject was named by one."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.named: Counter[str] = Counter()  # subjects named by multi_last requests
        self.sizes: list[int] = []  # subjects named by each multi_last request
        self.nc: Any = None

    async def _on(self, msg: Any) -> None:
        kind = "direct" if msg.subject.startswith("$JS.API.DIRECT.GET.") else "leader"
        self.counts[kind] += 1
        if kind == "direct" and b"multi_last" in msg.data:
            subjects = json.loads(msg.data)["multi_last"]
            self.named.update(subjects)
            self.sizes.append(len(subjects))

    async def open(self, url: str, stream: str) -> None:
        self.nc = await nats.connect(url)
        await self.nc.subscribe(f"$JS.API.DIRECT.GET.{stream}", cb=self._on)
        await self.nc.subscribe(f"$JS.API.DIRECT.GET.{stream}.>", cb=self._on)
        await self.nc.subscribe(f"$JS.API.STREAM.MSG.GET.{stream}", cb=self._on)
        await self.nc.flush()

    async def settled(self) -> Counter[str]:
        await self.nc.flush()
        await asyncio.sleep(0.2)
        return Counter(self.counts)

    def reset(self) -> None:
        self.counts.clear()
        self.named.clear()
        self.sizes.clear()


@pytest.fixture
async def wire(nats_url: str, settings: StreamSettings) -> AsyncIterator[Wire]:
    w = Wire()
    await w.open(nats_url, settings.name)
    yield w
    await w.nc.close()


def _one_each(ids: list[str], n: int = 1) -> list[AppendRequest]:
    return [AppendRequest("agent", i, [NewEvent("Tick", {"k": k}) for k in range(n)]) for i in ids]


def _ok(results: list[Any]) -> list[Any]:
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, failed[:3]
    return results


async def test_heads_asked_ahead_are_asked_once_and_within_the_bound(
    store: EventStore, wire: Wire
) -> None:
    """3,000 appends to new aggregates: heads are asked ahead while batches are in flight,
    yet every subject is named by exactly one multi_last request, no request names more than
    500, the requests stay within ceil(3000/500) + 3 (the first two batches leave before 500
    appends are queued, so their lookups are smaller; a batch may straddle two requests asked
    ahead and ask its few others itself; a single one left over is the leader's get, as a
    lone head always is), and every append lands at version 1."""
    await store.append("agent", "warmup", NewEvent("Tick"))
    await wire.settled()
    wire.reset()
    assert store._committer is not None
    reader = store._committer._head_reader
    before = reader.asked_ahead
    ids = [f"cold-{i:04d}" for i in range(3000)]
    results = _ok(await store.append_many(_one_each(ids)))
    counts = await wire.settled()
    assert {r.version for r in results} == {1}
    assert reader.asked_ahead > before  # some heads were asked ahead of their batch
    assert counts["leader"] <= 1  # a head asked ahead is the batch's head, not asked again
    assert len(wire.named) >= len(ids) - counts["leader"]
    assert set(wire.named) <= {store.subject("agent", i) for i in ids}
    assert set(wire.named.values()) == {1}
    assert max(wire.sizes) <= MULTI_LAST_MAX
    sizes = " ".join(map(str, wire.sizes))
    assert 0 < counts["direct"] <= -(-3000 // MULTI_LAST_MAX) + 3, sizes


@dataclass
class _Queued:
    """What ``look_ahead`` reads of a queued append."""

    subject: str
    agg_type: str


async def test_a_head_asked_ahead_and_moved_by_another_producer_costs_a_refusal_only(
    nats_url: str, settings: StreamSettings, store: EventStore, wire: Wire
) -> None:
    """Heads asked ahead (none yet: version 0), then two events each written by another
    producer: our batch built on the heads asked ahead is refused by the server's expected
    last sequence, refreshed, and every append is stored exactly once after the other's,
    versions 1..N with no gap."""
    await store.append("agent", "warmup", NewEvent("Tick"))
    assert store._committer is not None
    reader = store._committer._head_reader
    ids = [f"moved-{i}" for i in range(20)]
    queued = [_Queued(store.subject("agent", i), "agent") for i in ids]
    reader.look_ahead(cast(list[Pending], queued))
    assert reader._asking  # asked in the background
    await asyncio.gather(*set(reader._asking.values()))
    assert all(reader.cache[q.subject].seq == 0 for q in queued)  # learned: no message yet
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        _ok(await other.append_many(_one_each(ids, 2)))
    await wire.settled()
    wire.reset()
    retries = store.counters.retries
    results = _ok(await store.append_many(_one_each(ids * 3)))
    assert store.counters.retries > retries  # the heads asked ahead were refused
    assert sorted(r.version for r in results) == sorted([3, 4, 5] * 20)
    mine = {r.ids[0] for r in results}
    for i in ids:
        events = [e async for e in store.read("agent", i)]
        assert [e.version for e in events] == [1, 2, 3, 4, 5]
        assert {e.id for e in events[2:]} <= mine and len({e.id for e in events}) == 5
    assert len(mine) == 60


async def test_a_head_learned_by_a_write_is_not_overwritten_by_an_answer_asked_ahead(
    store: EventStore,
) -> None:
    """An answer asked ahead fills only heads still unknown: a write that lands while the
    lookup is in flight keeps the head it learned from its own ack, so the next append takes
    version 2, not a refused version 1."""
    await store.append("agent", "warmup", NewEvent("Tick"))
    assert store._committer is not None
    reader = store._committer._head_reader
    subjects = [store.subject("agent", f"race-{i}") for i in range(5)]
    reader.look_ahead(cast(list[Pending], [_Queued(s, "agent") for s in subjects]))
    tasks = set(reader._asking.values())
    assert tasks
    # Written through the committer while the lookup may still be in flight: the lookup of
    # this batch waits for the heads asked ahead, then its ack sets the heads.
    first = _ok(await store.append_many(_one_each([f"race-{i}" for i in range(5)])))
    await asyncio.gather(*tasks)
    assert {r.version for r in first} == {1}
    assert all(reader.cache[s].version == 1 for s in subjects)
    retries = store.counters.retries
    second = _ok(await store.append_many(_one_each([f"race-{i}" for i in range(5)])))
    assert {r.version for r in second} == {2}
    assert store.counters.retries == retries  # no refusal: the cached heads were right
