"""Group commit at scale: batched head lookups, refusals resolved in bulk, batches in flight.

Requests are counted on the wire: a second connection subscribes to the JetStream API
subjects the producer uses to read heads (``$JS.API.DIRECT.GET.>`` and
``$JS.API.STREAM.MSG.GET.>``) and sees every request the producer sends there.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from eventstore import (
    AppendRequest,
    EventStore,
    InvalidEvent,
    NewEvent,
    StreamSettings,
    VersionConflict,
    collector,
)
from eventstore.directget import MULTI_LAST_MAX, last_messages


class Wire:
    """Counts the head-reading API requests sent on the server, by kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.leader_heads: Counter[str] = Counter()  # leader's last-message gets by subject
        self.nc: Any = None

    async def _on(self, msg: Any) -> None:
        kind = "direct" if msg.subject.startswith("$JS.API.DIRECT.GET.") else "leader"
        self.counts[kind] += 1
        if kind == "leader" and b"last_by_subj" in msg.data:
            self.leader_heads[json.loads(msg.data)["last_by_subj"]] += 1

    async def open(self, url: str, stream: str) -> None:
        self.nc = await nats.connect(url)
        await self.nc.subscribe(f"$JS.API.DIRECT.GET.{stream}", cb=self._on)
        await self.nc.subscribe(f"$JS.API.DIRECT.GET.{stream}.>", cb=self._on)
        await self.nc.subscribe(f"$JS.API.STREAM.MSG.GET.{stream}", cb=self._on)
        await self.nc.flush()

    async def settled(self) -> Counter[str]:
        """The counts once every request sent so far has reached this connection."""
        await self.nc.flush()
        await asyncio.sleep(0.2)
        return Counter(self.counts)

    def reset(self) -> None:
        self.counts.clear()
        self.leader_heads.clear()


@pytest.fixture
async def wire(nats_url: str, settings: StreamSettings) -> AsyncIterator[Wire]:
    w = Wire()
    await w.open(nats_url, settings.name)
    yield w
    await w.nc.close()


def _one_each(agg_type: str, ids: list[str], n: int = 1) -> list[AppendRequest]:
    return [AppendRequest(agg_type, i, [NewEvent("Tick", {"i": k}) for k in range(n)]) for i in ids]


async def _ok(results: list[Any]) -> list[Any]:
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, failed[:3]
    return results


@pytest.fixture
async def looking(nats_url: str, settings: StreamSettings) -> AsyncIterator[EventStore]:
    """A producer that looks every unknown head up (never guesses them new)."""
    async with await EventStore.connect(
        nats_url, producer="looker", stream=settings, guess_new=False
    ) as s:
        yield s


async def test_a_cold_batch_learns_every_head_in_a_few_requests(
    looking: EventStore, wire: Wire
) -> None:
    """1,200 appends to new aggregates read their heads in ceil(1200/500) multi_last requests,
    with no per-aggregate get at all, and every append lands at version 1."""
    store = looking
    await store.append("agent", "warmup", NewEvent("Tick"))  # opens the stream and clocks
    await wire.settled()
    wire.reset()
    ids = [f"cold-{i:04d}" for i in range(1200)]
    results = await _ok(await store.append_many(_one_each("agent", ids)))
    counts = await wire.settled()
    assert {r.version for r in results} == {1}
    assert counts["leader"] == 0
    # One multi_last request per chunk of at most 500 subjects, however the batches fall.
    assert 0 < counts["direct"] <= -(-1200 // MULTI_LAST_MAX) + 1


async def test_a_cold_batch_continues_aggregates_written_elsewhere(
    nats_url: str, settings: StreamSettings, looking: EventStore, wire: Wire
) -> None:
    """Aggregates another producer already wrote are found by the batched lookup and counted:
    the appends take the next versions, the new ones version 1."""
    store = looking
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        await _ok(await other.append_many(_one_each("agent", [f"old-{i}" for i in range(30)], 3)))
    await store.append("agent", "warmup", NewEvent("Tick"))
    await wire.settled()
    wire.reset()
    ids = [f"old-{i}" for i in range(30)] + [f"new-{i}" for i in range(30)]
    results = await _ok(await store.append_many(_one_each("agent", ids)))
    counts = await wire.settled()
    assert [r.version for r in results] == [4] * 30 + [1] * 30
    assert counts["leader"] == 0  # no refusal: the batched heads were right
    for i in (0, 29):
        assert [e.version async for e in store.read("agent", f"old-{i}")] == [1, 2, 3, 4]


async def test_multi_last_reads_every_head_even_when_truncated(
    nats_url: str, settings: StreamSettings, store: EventStore, wire: Wire
) -> None:
    """A ``batch`` smaller than the answer is truncated by the server (Nats-Num-Pending > 0):
    the rest is asked for again until every subject with a message is answered, and subjects
    without one are absent."""
    for i in range(5):
        await store.append("agent", f"t{i}", [NewEvent("Tick"), NewEvent("Tick")])
    subjects = [store.subject("agent", f"t{i}") for i in range(5)]
    subjects += [store.subject("agent", "never")]
    await wire.settled()
    wire.reset()
    nc = await nats.connect(nats_url)
    try:
        found = await last_messages(
            nc, settings.name, subjects, url=nats_url, refused=lambda _: None, batch=2
        )
    finally:
        await nc.close()
    assert sorted(found) == sorted(subjects[:5])
    for s in subjects[:5]:
        assert found[s].seq == await store.reader.last_seq(s)
    assert (await wire.settled())["direct"] >= 3  # 5 answers at 2 a request: truncated twice


@pytest.mark.parametrize("one_copy", [True, False], ids=["one-copy", "replicated"])
async def test_a_refused_batch_is_resolved_per_subject_not_per_append(
    nats_url: str, settings: StreamSettings, store: EventStore, wire: Wire, one_copy: bool
) -> None:
    """When another producer moved 10 cached aggregates, the refused batch of 200 appends is
    resolved with one batched direct read of the heads on a single-copy stream, or one leader
    get per aggregate (10) where replicas may lag, never one request per append; every append
    is then stored once with contiguous versions."""
    assert store._committer is not None and store._committer.direct_refresh  # R1 here
    store._committer.direct_refresh = one_copy  # as a replicated stream's committer would be
    ids = [f"shared-{i}" for i in range(10)]
    await _ok(await store.append_many(_one_each("agent", ids)))  # cached at version 1
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        await _ok(await other.append_many(_one_each("agent", ids, 2)))  # now at version 3
    await wire.settled()
    wire.reset()
    retries = store.counters.retries
    results = await _ok(await store.append_many(_one_each("agent", ids * 20)))
    counts = await wire.settled()
    assert store.counters.retries > retries  # the first attempt was refused
    if one_copy:
        assert counts["leader"] == 0
        assert counts["direct"] <= 3  # one multi_last, one ranged read of what came after
    else:
        assert counts["leader"] == 10
        assert counts["direct"] <= 2  # the messages after the cached heads: one ranged read
    assert sorted(r.version for r in results) == sorted(list(range(4, 24)) * 10)
    for i in ids:
        assert [e.version async for e in store.read("agent", i)] == list(range(1, 24))


async def test_an_expected_version_is_checked_with_the_leader_after_a_direct_refresh(
    nats_url: str, settings: StreamSettings, store: EventStore
) -> None:
    """After a refusal refreshed by direct reads, an append whose expected version does not
    match is failed only once the leader confirmed the head: a conflict from a direct read
    alone could come from a lagging copy. A matching expectation is simply stored."""
    ids = [f"exp-{i}" for i in range(6)]
    await _ok(await store.append_many(_one_each("agent", ids)))  # cached at version 1
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        await _ok(await other.append_many(_one_each("agent", ids)))  # now at version 2
    assert store._committer is not None
    reader = store._committer._head_reader
    asked: list[str] = []
    leader_last = reader._leader_last

    async def counted(subject: str) -> Any:
        asked.append(subject)
        return await leader_last(subject)

    reader._leader_last = counted  # type: ignore[method-assign]
    reqs = [AppendRequest("agent", i, [NewEvent("Tick")]) for i in ids[:4] * 3]  # a batch
    reqs.append(AppendRequest("agent", ids[4], [NewEvent("Tick")], expected_version=1))
    reqs.append(AppendRequest("agent", ids[5], [NewEvent("Tick")], expected_version=2))
    results = await store.append_many(reqs)
    assert [getattr(r, "version", r) for r in results[:12]] == [3] * 4 + [4] * 4 + [5] * 4
    assert isinstance(results[12], VersionConflict)  # the cache said 1: the batch was refused
    assert (results[12].expected, results[12].actual) == (1, 2)
    assert getattr(results[13], "version", results[13]) == 3
    # The conflict was confirmed by the leader's get of that head before it was reported.
    assert asked.count(store.subject("agent", ids[4])) == 1


async def test_two_producers_interleaving_store_every_append_exactly_once(
    nats_url: str, settings: StreamSettings
) -> None:
    """Two producers (two connections) appending at once to the same 20 aggregates refuse
    each other's batches over and over; still every append is stored exactly once, each
    aggregate's versions are 1..N without a gap, and each append got the version it holds."""
    ids = [f"hot-{i:02d}" for i in range(20)]
    async with (
        await EventStore.connect(nats_url, producer="p-a", stream=settings) as a,
        await EventStore.connect(nats_url, producer="p-b", stream=settings) as b,
    ):
        await _ok(await a.append_many(_one_each("agent", ids)))
        await _ok(await b.append_many(_one_each("agent", ids)))  # both have the heads cached

        async def writer(store: EventStore, tag: str) -> list[Any]:
            out: list[Any] = []
            for round_ in range(6):
                reqs = [
                    AppendRequest("agent", i, [NewEvent("Tick", {"by": tag, "r": round_})])
                    for i in ids * 10
                ]
                out += await _ok(await store.append_many(reqs))
            return out

        before = a.counters.retries + b.counters.retries
        got_a, got_b = await asyncio.gather(writer(a, "a"), writer(b, "b"))
        assert a.counters.retries + b.counters.retries > before  # they did refuse each other
        stored: dict[str, tuple[str, int]] = {}
        for i in ids:
            events = [e async for e in a.read("agent", i)]
            assert [e.version for e in events] == list(range(1, 2 + 2 * 6 * 10 + 1))
            for e in events:
                stored[e.id] = (i, e.version)
    results = got_a + got_b
    assert len(results) == 2 * 6 * 200
    ids_sent = [r.ids[0] for r in results]
    assert len(set(ids_sent)) == len(ids_sent)
    assert all(r.ids[0] in stored for r in results)  # each one is in the log ...
    assert len(stored) == 2 * 20 + len(results)  # ... and nothing else (no second copy)
    assert all(stored[r.ids[0]][1] == r.version for r in results)
    assert not any(r.duplicate for r in results)


async def test_batches_in_flight_keep_each_aggregates_order(store: EventStore) -> None:
    """With several batches in flight, appends to one aggregate still take their versions in
    the order they were submitted, and distinct aggregates all land."""
    reqs = []
    for k in range(3000):
        agg = f"o-{k % 7}" if k % 3 == 0 else f"u-{k}"
        reqs.append(AppendRequest("agent", agg, [NewEvent("Tick", {"k": k})]))
    results = await _ok(await store.append_many(reqs))
    for agg in (f"o-{j}" for j in range(7)):
        mine = [(r.version, q.events[0].data["k"]) for q, r in zip(reqs, results, strict=True)
                if q.aggregate_id == agg]  # fmt: skip
        assert [v for v, _ in mine] == list(range(1, len(mine) + 1))
        events = [e async for e in store.read("agent", agg)]
        assert [e.data["k"] for e in events] == [k for _, k in mine]


async def test_a_transaction_gets_its_turn_while_batches_are_in_flight(store: EventStore) -> None:
    """A transaction started while thousands of appends are being group-committed gets the
    committer between batches (the pipeline drains for it), and everything is stored."""
    reqs = _one_each("agent", [f"bulk-{k}" for k in range(4000)])
    bulk = asyncio.ensure_future(store.append_many(reqs))
    await asyncio.sleep(0)  # the bulk appends are queued and the first batches go out
    async with store.transaction() as tx:
        tx.append("agent", "tx-a", NewEvent("Tick"))
        tx.append("agent", "tx-b", NewEvent("Tick"))
    results = await _ok(await bulk)
    assert {r.version for r in results} == {1}
    stored = [e async for e in store.read("agent", "tx-a")]
    stored += [e async for e in store.read("agent", "tx-b")]
    assert [e.version for e in stored] == [1, 1]
    # It went in between the bulk's batches, not after all of them.
    assert max(e.seq for e in stored) < max(r.last_seq for r in results)


async def test_batches_in_flight_never_share_clock_values(
    nats_url: str, settings: StreamSettings
) -> None:
    """Two batches in flight that both have to reserve clock values (a tiny ``clock_block``:
    a bucket write every other append) still tick within their reservations: every append is
    stored and no counter or Lamport time is used twice."""
    async with await EventStore.connect(
        nats_url, producer="clocky", stream=settings, clock_block=1, max_batch=100
    ) as s:
        results = await _ok(
            await s.append_many(_one_each("agent", [f"c-{k}" for k in range(1500)]))
        )
        counters = [r.vclock["clocky"] for r in results]
        assert len(set(counters)) == len(counters) == 1500
        assert len({r.lamport for r in results}) == 1500


async def test_append_many_collects_garbage_less_while_it_runs(store: EventStore) -> None:
    """While ``append_many`` holds its requests the youngest generation's threshold is
    ``BURST_THRESHOLD`` (no full collection of the process in the middle of a burst); the
    process's thresholds come back when the call returns, and when it fails."""
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    collections: list[int] = []

    def counted(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and gc.get_threshold()[0] == collector.BURST_THRESHOLD:
            collections.append(info["generation"])  # one while the call held the threshold

    async def watch() -> None:
        while True:
            seen.append(gc.get_threshold())
            await asyncio.sleep(0)

    requests = [AppendRequest("agent", f"g{i}", [NewEvent("E", {"i": i})]) for i in range(2000)]
    watcher = asyncio.create_task(watch())
    gc.callbacks.append(counted)
    try:
        results = await store.append_many(requests)
    finally:
        gc.callbacks.remove(counted)
        watcher.cancel()
    assert all(not isinstance(r, BaseException) for r in results)
    assert gc.get_threshold() == before
    assert seen and set(seen) == {(collector.BURST_THRESHOLD, *before[1:])}
    assert collections == []  # 2,000 appends: not one collection of any generation meanwhile
    head = await store.head()
    with pytest.raises(InvalidEvent, match="AppendRequest items, got None"):
        await store.append_many([requests[0], None])  # type: ignore[list-item]
    assert gc.get_threshold() == before
    assert await store.head() == head  # checked before anything was submitted
