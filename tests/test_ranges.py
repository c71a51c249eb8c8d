"""The query service's ``range`` (one aggregate's states at versions a..b, paged) and what it
buys a watcher, against a real worker process and a real server: each version's state is what
``state`` at that version says, pages are bounded by ``limit`` and by max_payload, a watcher far
behind fills its gaps with a request or two per aggregate; notifications close their batch per
filter, so a live view's ``seq`` moves with every batch, not only with the heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
import pytest
from helpers_serving import running_worker

from consumers import ProjectionClient, Watcher, protocol
from eventstore import (
    AggregateNotFound,
    AppendRequest,
    EventStore,
    InvalidPoint,
    InvalidRequest,
    NewEvent,
)
from projections import StateRecord


async def until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_range_is_state_at_each_version_in_bounded_pages(
    store: EventStore, tmp_path: Path
) -> None:
    """``range`` gives one state per version, each equal to ``state`` at that version (across
    the snapshots at 100 and 200), pages chain by ``next_version`` under ``limit`` and under
    max_payload, a range past the end stops at the last version; bad ranges get errors."""
    for v in range(1, 251):
        await store.append("agent", "r", NewEvent("Step", {"v": v, f"k{v % 7}": v}))
    blob = "x" * 200_000
    for v in range(1, 13):  # ~200 kB states: about four fit in one reply
        await store.append("agent", "big", NewEvent("Step", {"v": v, "blob": blob}))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with (
        running_worker(store, db, log),
        await ProjectionClient.connect(store.url, stream=store.settings.name) as client,
    ):
        whole = await client.state_range("agent", "r", 1)
        assert [s.version for s in whole.items] == list(range(1, 251))
        assert whole.next_version is None and whole.checkpoint == await store.head()
        for v in (1, 2, 99, 100, 101, 150, 200, 201, 250):
            past = await client.state("agent", "r", version=v)
            item = whole.items[v - 1]
            assert (item.version, item.seq, item.state) == (past.version, past.seq, past.state)

        pages, first = [], 95
        while True:
            page = await client.state_range("agent", "r", first, 210, limit=40)
            assert 0 < len(page.items) <= 40
            pages.extend(page.items)
            if page.next_version is None:
                break
            first = page.next_version
        assert pages == whole.items[94:210]

        tail_ = await client.state_range("agent", "r", 248, 400)
        assert [s.version for s in tail_.items] == [248, 249, 250] and tail_.next_version is None

        big = await client.state_range("agent", "big", 1)
        assert 1 <= len(big.items) < 12 and big.next_version == len(big.items) + 1
        rest = await client.state_range("agent", "big", big.next_version)
        got = [s.state["v"] for s in big.items + rest.items]
        while rest.next_version is not None:
            rest = await client.state_range("agent", "big", rest.next_version)
            got += [s.state["v"] for s in rest.items]
        assert got == list(range(1, 13))

        with pytest.raises(InvalidPoint, match="no version 251"):
            await client.state_range("agent", "r", 251)
        with pytest.raises(InvalidRequest, match="to_version 3 < from_version 5"):
            await client.state_range("agent", "r", 5, 3)
        with pytest.raises(InvalidRequest, match="from_version"):
            await client.state_range("agent", "r", 0)
        with pytest.raises(AggregateNotFound):
            await client.state_range("agent", "nobody", 1)


async def _requests_counted(client: ProjectionClient, stream: str) -> list[int]:
    """A plain (non-queue) subscription on the range endpoint sees every request made."""
    counted: list[int] = []

    async def count(msg: Any) -> None:
        counted.append(1)

    await client.nc.subscribe(protocol.endpoint_subject(stream, "entities", "range"), cb=count)
    await client.nc.flush()
    return counted


@pytest.mark.parametrize("buffer", [100_000, 50])
async def test_a_watcher_far_behind_fills_each_aggregate_in_a_request_or_two(
    store: EventStore, tmp_path: Path, buffer: int
) -> None:
    """A watcher that stopped reading while 3,000 events went to 20 aggregates (buffered, or
    its buffer overflowed and it resynchronises) yields every version exactly once and in
    order, reading the missing ones with about one ``range`` request per aggregate."""
    for i in range(20):
        await store.append("agent", f"a{i}", NewEvent("Step", {"i": i}))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with (
        running_worker(store, db, log),
        await ProjectionClient.connect(store.url, stream=store.settings.name) as client,
    ):
        counted = await _requests_counted(client, store.settings.name)
        watcher = Watcher(client, "entities", "agent", buffer=buffer)
        it = watcher.__aiter__()
        by: dict[str, list[int]] = defaultdict(list)
        for _ in range(20):  # the initial states; then it stops reading
            rec = await anext(it)
            by[rec.aggregate_id].append(rec.version)
        for start in range(0, 3000, 500):
            await store.append_many(
                AppendRequest("agent", f"a{k % 20}", [NewEvent("Step", {"k": k})])
                for k in range(start, start + 500)
            )
        await client.wait_for(await store.head(), timeout=60)
        async with asyncio.timeout(60):
            while any(v[-1] < 151 for v in by.values()):
                rec = await anext(it)
                by[rec.aggregate_id].append(rec.version)
        await it.aclose()
    assert {a: v for a, v in by.items()} == {f"a{i}": list(range(1, 152)) for i in range(20)}
    assert watcher.filled >= 1000  # most versions came coalesced, read by range
    assert 1 <= len(counted) <= 3 * 20, len(counted)  # not one request per version


async def test_notifications_close_their_batch_by_type_and_in_whole(
    store: EventStore, tmp_path: Path
) -> None:
    """Each batch's notifications come grouped by aggregate type, all carrying the batch's
    checkpoint (at or past their seq, rising batch by batch); the last of each type says
    ``last_of_type``, the last of the batch ``last_of_batch``, and no other does."""
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    await store.append("agent", "first", NewEvent("Step"))
    async with running_worker(store, db, log):
        nc = await nats.connect(store.url)
        notes: list[dict[str, Any]] = []

        async def on_msg(msg: Any) -> None:
            if not msg.subject.endswith("._beat"):
                notes.append(json.loads(msg.data))

        await nc.subscribe(protocol.feed_wildcard(store.settings.name, "entities"), cb=on_msg)
        await nc.flush()
        for r in range(20):
            await store.append_many(
                AppendRequest(("agent", "task", "zone")[k % 3], f"x{k % 7}",
                              [NewEvent("Step", {"r": r})])
                for k in range(30)
            )  # fmt: skip
        head = await store.head()
        await until(lambda: any(n.get("checkpoint") == head for n in notes), "the last batch")
        await nc.close()
    batches: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for n in notes:
        batches[n["checkpoint"]].append(n)
    assert list(batches) == sorted(batches)  # arrival order is commit order
    assert len(batches) > 1
    for ckpt, group in batches.items():
        types = [n["aggregate_type"] for n in group]
        assert types == sorted(types)
        assert all(n["seq"] <= ckpt for n in group)
        closing = [n.get("last_of_batch", False) for n in group]
        assert closing == [False] * (len(group) - 1) + [True]
        last_of_type = [i == len(types) - 1 or types[i + 1] != t for i, t in enumerate(types)]
        assert [n.get("last_of_type", False) for n in group] == last_of_type


async def test_a_live_view_seq_moves_with_each_notification(
    store: EventStore, tmp_path: Path
) -> None:
    """Once a view holds a change, its ``seq`` is at or past that change's seq at once (the
    notification closed its batch), not a heartbeat (every 2 s) later."""
    await store.append("agent", "v0", NewEvent("Created", {"n": 0}))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with (
        running_worker(store, db, log),
        await ProjectionClient.connect(store.url, stream=store.settings.name) as client,
    ):
        seen: list[tuple[StateRecord, int]] = []
        view = await client.view("entities", aggregate_type="agent")
        async with view:
            for n in range(1, 8):
                res = await store.append("agent", f"v{n % 3}", NewEvent("Moved", {"n": n}))

                def arrived(version: int = res.version, key: str = f"v{n % 3}") -> bool:
                    rec = view.get(key)
                    return rec is not None and rec.version >= version

                await until(arrived, f"change {n} in the view")
                rec = view.get(f"v{n % 3}")
                assert rec is not None
                seen.append((rec, view.seq))
                assert view.seq >= res.last_seq, (n, view.seq, res.last_seq)
    assert all(seq >= rec.seq for rec, seq in seen)
