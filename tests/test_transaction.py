"""Multi-aggregate transactions: one atomic batch, all or nothing, and consistency boundaries."""

from __future__ import annotations

import pytest

from eventstore import (
    MAX_EVENTS_PER_TRANSACTION,
    BoundaryConflict,
    EventStore,
    InvalidEvent,
    InvalidTransition,
    MachineTable,
    NewEvent,
    Rules,
    VersionConflict,
)


async def _versions(store: EventStore, agg_type: str, agg_id: str) -> list[int]:
    return [e.version async for e in store.read(agg_type, agg_id)]


async def _messages(store: EventStore) -> int:
    return int((await store.js.stream_info(store.settings.name)).state.messages)


async def test_three_aggregates_are_stored_together(store: EventStore) -> None:
    """A transaction over three aggregates stores every event, versions contiguous, and the
    results say where each append landed (consecutive sequences: one batch)."""
    await store.append("account", "a", NewEvent("Opened", {"balance": 10}))
    async with store.transaction() as tx:
        tx.append("account", "a", NewEvent("Debited", {"amount": 5}), expected_version=1)
        tx.append("account", "b", [NewEvent("Opened"), NewEvent("Credited")], expected_version=0)
        tx.append("ledger", "l1", NewEvent("Moved"))
    assert [r.version for r in tx.results] == [2, 2, 1]
    seqs = [s for r in tx.results for s in range(r.first_seq, r.last_seq + 1)]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert await _versions(store, "account", "a") == [1, 2]
    assert await _versions(store, "account", "b") == [1, 2]
    assert await _versions(store, "ledger", "l1") == [1]


async def test_one_stale_expectation_stores_nothing(store: EventStore) -> None:
    """One stale expected version among three aggregates: VersionConflict naming that
    aggregate, and neither versions nor the stream's message count move."""
    for agg in ("a", "b", "c"):
        await store.append("account", agg, NewEvent("Opened"))
    await store.append("account", "b", NewEvent("Credited"))  # b is at 2 now
    before = await _messages(store)
    with pytest.raises(VersionConflict) as info:
        async with store.transaction() as tx:
            tx.append("account", "a", NewEvent("Debited"), expected_version=1)
            tx.append("account", "b", NewEvent("Debited"), expected_version=1)
            tx.append("account", "c", [NewEvent("Debited"), NewEvent("X")], expected_version=1)
    assert (info.value.aggregate_id, info.value.expected, info.value.actual) == ("b", 1, 2)
    assert await _messages(store) == before
    assert [await store.version("account", x) for x in "abc"] == [1, 2, 1]


async def test_stale_expectation_found_by_the_server_stores_nothing(
    store: EventStore, nats_url: str
) -> None:
    """Another writer appends after this store cached the head: the server refuses the batch
    and the transaction raises the conflict of that aggregate with nothing stored."""
    await store.append("account", "a", NewEvent("Opened"))
    await store.append("account", "b", NewEvent("Opened"))
    async with await EventStore.connect(nats_url, producer="other", stream=store.settings) as o:
        await o.append("account", "a", NewEvent("Credited"))
    before = await _messages(store)
    with pytest.raises(VersionConflict) as info:
        async with store.transaction() as tx:
            tx.append("account", "b", NewEvent("Debited"), expected_version=1)
            tx.append("account", "a", NewEvent("Debited"), expected_version=1)
    assert (info.value.aggregate_id, info.value.actual) == ("a", 2)
    assert await _messages(store) == before


async def test_an_exception_inside_the_block_stores_nothing(store: EventStore) -> None:
    """An error raised inside ``async with`` discards the transaction and propagates."""
    before = await _messages(store)
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with store.transaction() as tx:
            tx.append("account", "a", NewEvent("Opened"))
            raise RuntimeError("changed my mind")
    assert await _messages(store) == before
    with pytest.raises(InvalidEvent, match="over"):
        tx.append("account", "a", NewEvent("Opened"))


async def test_the_event_limit_is_enforced_with_a_clear_error(store: EventStore) -> None:
    """More than 1000 events in one transaction is refused at the append that passes it."""
    async with store.transaction() as tx:
        tx.append("bulk", "a", [NewEvent("E")] * 600)
        with pytest.raises(InvalidEvent, match="at most 1000 events"):
            tx.append("bulk", "b", [NewEvent("E")] * (MAX_EVENTS_PER_TRANSACTION - 599))
        tx.append("bulk", "b", [NewEvent("E")] * (MAX_EVENTS_PER_TRANSACTION - 600))
    assert await store.version("bulk", "a") == 600
    assert await store.version("bulk", "b") == 400


async def test_machines_are_checked_for_each_aggregate(store: EventStore) -> None:
    """A transition the stored machine refuses on one aggregate fails the whole transaction."""
    machine = MachineTable("open", [("open", "closed")])
    await store.set_rules(Rules(machines={"ticket": machine}))
    await store.append("ticket", "t1", NewEvent("Closed", transition=("open", "closed")))
    before = await _messages(store)
    with pytest.raises(InvalidTransition):
        async with store.transaction() as tx:
            tx.append("ticket", "t2", NewEvent("Closed", transition=("open", "closed")))
            tx.append("ticket", "t1", NewEvent("Reopened", transition=("closed", "open")))
    assert await _messages(store) == before


async def test_boundary_without_anything_new_commits(store: EventStore) -> None:
    """Nothing new on the boundary since the sequence decided on: the transaction commits,
    and its own appends under the filter do not count against it."""
    await store.append("request", "r1", NewEvent("Asked"))
    await store.append("other", "x", NewEvent("Noise"))  # outside the boundary
    since = await store.head()
    async with store.transaction() as tx:
        tx.expect_nothing_new("request", since_seq=since)
        tx.append("request", "r2", NewEvent("Asked"), expected_version=0)
    assert await store.version("request", "r2") == 1


async def test_boundary_with_something_new_stores_nothing(store: EventStore, nats_url: str) -> None:
    """Something appeared on the boundary after the sequence decided on: BoundaryConflict (a
    VersionConflict) naming the filter, and nothing is stored."""
    await store.append("request", "r1", NewEvent("Asked"))
    since = await store.head()
    async with await EventStore.connect(nats_url, producer="other", stream=store.settings) as o:
        await o.append("request", "r9", NewEvent("Asked"))
    before = await _messages(store)
    with pytest.raises(BoundaryConflict) as info:
        async with store.transaction() as tx:
            tx.expect_nothing_new("request", since_seq=since)
            tx.append("request", "r2", NewEvent("Asked"), expected_version=0)
            tx.append("audit", "log", NewEvent("Noted"))
    assert isinstance(info.value, VersionConflict)
    assert info.value.subject == f"{store.settings.prefix}.request.*"
    assert info.value.actual == since + 1
    assert await _messages(store) == before


async def test_boundary_race_is_refused_by_the_server(store: EventStore, nats_url: str) -> None:
    """A write on the boundary between the lookup and the commit is caught by the server: a
    boundary riding on a free message (an aggregate's second event) refuses the batch."""
    since = await store.head()
    async with await EventStore.connect(nats_url, producer="other", stream=store.settings) as o:
        tx = store.transaction()
        tx.expect_nothing_new("request", "r1", since_seq=since)
        tx.append("audit", "log", [NewEvent("A"), NewEvent("B")])
        await o.append("request", "r1", NewEvent("Asked"))
        before = await _messages(store)
        with pytest.raises(BoundaryConflict):
            await tx.commit()
    assert await _messages(store) == before


async def test_boundary_needs_a_message_to_ride_on(store: EventStore) -> None:
    """A boundary that no message can carry is a clear InvalidEvent, nothing stored."""
    since = await store.head()
    with pytest.raises(InvalidEvent, match="needs a message"):
        async with store.transaction() as tx:
            tx.expect_nothing_new("request", since_seq=since)
            tx.append("audit", "log", NewEvent("A"))
    assert await store.version("audit", "log") == 0


async def test_boundary_arguments_are_checked(store: EventStore) -> None:
    """A filter outside the prefix, an id without a type, both forms at once: InvalidEvent."""
    tx = store.transaction()
    with pytest.raises(InvalidEvent, match="under the stream's prefix"):
        tx.expect_nothing_new(subject="elsewhere.request.*", since_seq=0)
    with pytest.raises(InvalidEvent, match="needs its aggregate type"):
        tx.expect_nothing_new(aggregate_id="r1", since_seq=0)
    with pytest.raises(InvalidEvent, match="not both"):
        tx.expect_nothing_new("request", subject=f"{store.settings.prefix}.>", since_seq=0)


async def test_a_transaction_of_boundaries_alone_checks_them(store: EventStore) -> None:
    """No appends, only a boundary: it commits nothing, and fails once something is newer."""
    await store.append("request", "r1", NewEvent("Asked"))
    async with store.transaction() as tx:
        tx.expect_nothing_new("request", since_seq=1)
    assert tx.results == []
    with pytest.raises(BoundaryConflict):
        async with store.transaction() as tx:
            tx.expect_nothing_new("request", "r1", since_seq=0)
