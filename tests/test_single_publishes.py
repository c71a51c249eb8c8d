"""A light load of one-event appends goes as single publishes, each in flight on its own.

At a steady few hundred appends a second the committer would otherwise pack the few appends
that arrive while one batch is stored into an atomic batch, which costs the server several
times a single publish: the append -> watch latency was twice the target for that. These tests
watch the wire (a second connection on the stream's subjects sees every stored message's
headers) and check the exactly-once rules still hold when such publishes are refused.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from eventstore import EventStore, NewEvent, StreamSettings, VersionConflict


async def test_a_few_concurrent_one_event_appends_are_not_an_atomic_batch(
    nats_url: str, settings: StreamSettings
) -> None:
    """Five appends at once to five aggregates: five messages, none carrying batch headers;
    five appends at once of two events each still go as one atomic batch (they need it)."""
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    nc = await nats.connect(nats_url)
    await nc.subscribe(f"{settings.prefix}.>", cb=keep)
    await nc.flush()
    try:
        async with await EventStore.connect(nats_url, producer="p", stream=settings) as store:
            await store.append("agent", "warm", NewEvent("Tick"))  # the committer is running
            await nc.flush()
            seen.clear()
            await asyncio.gather(
                *(store.append("agent", f"s{i}", NewEvent("Tick", {"i": i})) for i in range(5))
            )
            await nc.flush()
            await asyncio.sleep(0.2)
            singles = [m for m in seen if m.subject.startswith(f"{settings.prefix}.agent.s")]
            assert len(singles) == 5
            assert not any((m.headers or {}).get("Nats-Batch-Id") for m in singles)
            seen.clear()
            pairs = [[NewEvent("Tick"), NewEvent("Tock")] for _ in range(5)]
            await asyncio.gather(*(store.append("agent", f"d{i}", e) for i, e in enumerate(pairs)))
            await nc.flush()
            await asyncio.sleep(0.2)
            doubles = [m for m in seen if m.subject.startswith(f"{settings.prefix}.agent.d")]
            assert len(doubles) == 10
            assert all((m.headers or {}).get("Nats-Batch-Id") for m in doubles)
    finally:
        await nc.close()


async def test_two_producers_of_single_appends_on_shared_aggregates_store_each_once(
    nats_url: str, settings: StreamSettings
) -> None:
    """Two connections append one event at a time, many in flight, to the same ten aggregates
    (so their single publishes are refused and retried against each other's heads): every
    append is stored exactly once and each aggregate's versions are 1..N."""
    async with (
        await EventStore.connect(nats_url, producer="a", stream=settings) as a,
        await EventStore.connect(nats_url, producer="b", stream=settings) as b,
    ):

        async def burst(store: EventStore, who: str) -> None:
            for round_ in range(20):
                await asyncio.gather(
                    *(store.append("acct", f"x{i}", NewEvent("Add", {"who": who, "r": round_}))
                      for i in range(0, 10, 1 + round_ % 3))
                )  # fmt: skip

        await asyncio.gather(burst(a, "a"), burst(b, "b"))
        per_agg: dict[str, list[int]] = {}
        async for e in a.read_all(aggregate_type="acct"):
            per_agg.setdefault(e.aggregate_id, []).append(e.version)
        expected = 2 * sum(len(range(0, 10, 1 + r % 3)) for r in range(20))
        assert sum(len(v) for v in per_agg.values()) == expected
        for versions in per_agg.values():
            assert versions == list(range(1, len(versions) + 1))
        assert a.counters.retries + b.counters.retries > 0  # they did refuse each other
        try:
            await a.append("acct", "x0", NewEvent("Add"), expected_version=1)
        except VersionConflict:
            pass
        else:
            raise AssertionError("a stale expected version must still be refused")
