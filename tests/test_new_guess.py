"""Unknown aggregates taken for new (``eventstore.novelty``): no head request for a cold batch
of new aggregates; a wrong guess costs one refused batch and nothing else (every append
stored once, at the right version); the guess stops after it, and starts again once lookups
find new aggregates."""

from __future__ import annotations

import tomllib

import pytest
from test_groupcommit import Wire, _ok, _one_each
from test_groupcommit import wire as wire  # the fixture
from test_producer import losing_one_ack

from eventstore import (
    AppendRequest,
    EventStore,
    InvalidTransition,
    NewEvent,
    Rules,
    StreamSettings,
    VersionConflict,
)


async def _versions(store: EventStore, agg_id: str) -> list[int]:
    return [e.version async for e in store.read("agent", agg_id)]


async def test_a_cold_batch_of_new_aggregates_asks_for_no_head(
    store: EventStore, wire: Wire
) -> None:
    """1,200 appends to aggregates never written: not one head request, every one at
    version 1, nothing sent twice."""
    await store.append("agent", "warmup", NewEvent("Tick"))
    await wire.settled()
    wire.reset()
    results = await _ok(await store.append_many(_one_each("agent", [f"n{i}" for i in range(1200)])))
    counts = await wire.settled()
    assert {r.version for r in results} == {1}
    assert (counts["direct"], counts["leader"], store.counters.retries) == (0, 0, 0)
    assert len({r.first_seq for r in results}) == 1200


async def test_a_wrong_guess_costs_one_refused_batch_and_stops_guessing(
    nats_url: str, settings: StreamSettings, store: EventStore, wire: Wire
) -> None:
    """A fresh producer on aggregates another one wrote: its first cold batches (old and new
    aggregates mixed; those in flight with a guess) are refused once, refreshed and stored once
    at the right versions; the next cold batch of old aggregates is looked up, not guessed
    (no refusal at all)."""
    old = [f"old-{i}" for i in range(80)]
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        await _ok(await other.append_many(_one_each("agent", old, 3)))
    await store.append("agent", "warmup", NewEvent("Tick"))
    ids = old[:40] + [f"new-{i}" for i in range(40)]
    results = await _ok(await store.append_many(_one_each("agent", ids)))
    assert [r.version for r in results] == [4] * 40 + [1] * 40
    refused = store.counters.retries  # appends of the refused batches, sent once more
    assert 0 < refused <= 80
    for agg in (old[0], old[39], "new-0"):
        assert await _versions(store, agg) == ([1, 2, 3, 4] if agg.startswith("old") else [1])
    await wire.settled()
    wire.reset()
    results = await _ok(await store.append_many(_one_each("agent", old[40:])))
    assert [r.version for r in results] == [4] * 40
    assert store.counters.retries == refused  # looked up this time: right at the first try
    assert (await wire.settled())["direct"] >= 1


async def test_lookups_that_find_new_aggregates_start_guessing_again(
    nats_url: str, settings: StreamSettings, store: EventStore, wire: Wire
) -> None:
    """After a wrong guess, a cold batch of 100 new aggregates is looked up (and finds none),
    so the one after it asks for no head again."""
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        await _ok(await other.append_many(_one_each("agent", [f"taken-{i}" for i in range(20)])))
    await store.append("agent", "warmup", NewEvent("Tick"))
    mixed = [f"taken-{i}" for i in range(20)] + [f"fresh-{i}" for i in range(20)]
    await _ok(await store.append_many(_one_each("agent", mixed)))
    refused = store.counters.retries
    assert 0 < refused <= 40  # guessed wrong once (the batches then in flight)
    await wire.settled()
    wire.reset()
    await _ok(await store.append_many(_one_each("agent", [f"a{i}" for i in range(100)])))
    assert (await wire.settled())["direct"] >= 1  # looked up
    wire.reset()
    results = await _ok(await store.append_many(_one_each("agent", [f"b{i}" for i in range(100)])))
    assert {r.version for r in results} == {1}
    counts = await wire.settled()
    assert (counts["direct"], counts["leader"], store.counters.retries) == (0, 0, refused)


async def test_an_expected_version_never_rests_on_a_guess(
    nats_url: str, settings: StreamSettings, store: EventStore
) -> None:
    """Expected versions on aggregates this producer never saw are checked against the log:
    the right one is stored, a wrong one is a VersionConflict, not a refusal loop."""
    async with await EventStore.connect(nats_url, producer="other", stream=settings) as other:
        await _ok(await other.append_many(_one_each("agent", ["e0", "e1"], 2)))
    got = await store.append_many(
        [
            AppendRequest("agent", "e0", [NewEvent("Tick")], expected_version=2),
            AppendRequest("agent", "e1", [NewEvent("Tick")], expected_version=5),
            AppendRequest("agent", "e2", [NewEvent("Tick")], expected_version=0),
        ]
    )
    assert not isinstance(got[0], Exception) and got[0].version == 3
    assert isinstance(got[1], VersionConflict)
    assert not isinstance(got[2], Exception) and got[2].version == 1
    assert await _versions(store, "e1") == [1, 2]


async def test_a_transition_on_an_unseen_aggregate_is_judged_on_its_real_state(
    nats_url: str, settings: StreamSettings
) -> None:
    """A guessed-new head never fails a valid transition of an aggregate that exists (its
    state comes from the log before anything is failed), and an invalid one still fails."""
    rules = Rules.from_mapping(tomllib.loads(_JOBS))
    async with await EventStore.connect(nats_url, producer="first", stream=settings) as first:
        await first.set_rules(rules)
        for agg in ("j0", "j1"):
            await first.append("job", agg, NewEvent("Start", transition="Idle:Running"))
    async with await EventStore.connect(nats_url, producer="second", stream=settings) as second:
        got = await second.append_many(
            [
                AppendRequest("job", "j0", [NewEvent("Finish", transition="Running:Done")]),
                AppendRequest("job", "j1", [NewEvent("Start", transition="Idle:Running")]),
                AppendRequest("job", "j2", [NewEvent("Start", transition="Idle:Running")]),
            ]
        )
        assert not isinstance(got[0], Exception) and got[0].version == 2
        assert isinstance(got[1], InvalidTransition)  # j1 is Running: judged on the log
        assert not isinstance(got[2], Exception) and got[2].version == 1


_JOBS = """
[machines.job]
initial = "Idle"
transitions = [["Idle", "Running"], ["Running", "Done"]]
"""


async def test_a_lost_ack_on_a_guessed_batch_stores_nothing_twice(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold batch stored by the server whose ack is lost: the retry, from the guessed heads
    (last sequence 0), recognises every append as its own stored copy; each aggregate holds
    its one event."""
    committer = store._committer
    assert committer is not None
    lost: list[str] = []
    losing = losing_one_ack(committer._request, lost, batches_only=True)
    monkeypatch.setattr(committer, "_request", losing)
    ids = [f"g{i}" for i in range(50)]
    results = await _ok(await store.append_many(_one_each("agent", ids)))
    assert lost
    assert {r.version for r in results} == {1}
    assert any(r.duplicate for r in results)  # the batch whose ack was lost
    for agg in ids:
        assert await _versions(store, agg) == [1]
    assert await store.head() == 50
