"""Reading: ranges by version, sequence and recorded time; the whole log; a live follow."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import nats
import pytest

from eventstore import EmbeddedServer, Event, EventStore, InvalidEvent, Malformed, NewEvent


async def _fill(store: EventStore) -> None:
    for i in range(1, 6):
        await store.append("agent", "a", NewEvent("Step", {"i": i}))
        await store.append("agent", "b", NewEvent("Step", {"i": i}))
    await store.append("task", "t", NewEvent("Created"))


async def test_read_by_version_range(store: EventStore) -> None:
    """read() yields one aggregate's events in the inclusive version range, with seq and time."""
    await _fill(store)
    evs = [e async for e in store.read("agent", "a", from_version=2, to_version=4)]
    assert [e.version for e in evs] == [2, 3, 4]
    assert [e.seq for e in evs] == [3, 5, 7]
    assert all(e.recorded_at is not None and e.aggregate_id == "a" for e in evs)
    assert [e.version async for e in store.read("agent", "a", from_version=5)] == [5]
    assert [e async for e in store.read("agent", "nobody")] == []
    with pytest.raises(InvalidEvent):
        [e async for e in store.read("agent", "a", from_version=0)]


async def test_read_by_sequence_range(store: EventStore) -> None:
    """read_by_seq() yields the aggregate's events whose stream sequence is in the range."""
    await _fill(store)
    evs = [e async for e in store.read_by_seq("agent", "b", from_seq=4, to_seq=8)]
    assert [(e.seq, e.version) for e in evs] == [(4, 2), (6, 3), (8, 4)]


async def test_read_by_recorded_time(store: EventStore) -> None:
    """read_by_time() uses the server's recorded time, not the producer's clock."""
    await store.append("agent", "c", NewEvent("Early"))
    await asyncio.sleep(0.05)
    first_late = await store.append("agent", "c", NewEvent("Late"))
    await store.append("agent", "c", NewEvent("Later"))
    all_events = [e async for e in store.read("agent", "c")]
    start = all_events[1].recorded_at
    assert start is not None
    late = [e async for e in store.read_by_time("agent", "c", start)]
    assert [e.type for e in late] == ["Late", "Later"]
    assert late[0].seq == first_late.first_seq
    window = [e async for e in store.read_by_time("agent", "c", start, start)]
    assert [e.type for e in window] == ["Late"]
    future = start + timedelta(hours=1)
    assert [e async for e in store.read_by_time("agent", "c", future)] == []


async def test_read_all_in_log_order(store: EventStore) -> None:
    """read_all() gives every event once, in stream order, optionally from a seq or of a type."""
    await _fill(store)
    evs = [e async for e in store.read_all()]
    assert [e.seq for e in evs] == list(range(1, 12))
    assert [e.seq async for e in store.read_all(from_seq=10)] == [10, 11]
    tasks = [e.aggregate_id async for e in store.read_all(aggregate_type="task")]
    assert tasks == ["t"]
    assert [e async for e in store.read_all(aggregate_type="nothing")] == []


async def test_read_all_of_an_empty_log(store: EventStore) -> None:
    """Reading an empty log ends at once instead of waiting for events."""

    async def collect() -> list[Event]:
        return [e async for e in store.read_all()]

    assert await asyncio.wait_for(collect(), 5) == []


async def test_malformed_event_in_the_log_is_skipped_and_reported(
    store: EventStore, nats_url: str
) -> None:
    """A garbage message on an aggregate subject is skipped and reported naming its seq."""
    await store.append("agent", "g", NewEvent("Fine"))
    nc = await nats.connect(nats_url)
    await nc.jetstream().publish(store.subject("agent", "g"), b"{not json")
    await nc.close()
    skipped: list[Malformed] = []
    assert [e.seq async for e in store.read("agent", "g", on_malformed=skipped.append)] == [1]
    assert [(m.seq, m.kind) for m in skipped] == [(2, "undecodable")]
    assert "seq 2" in skipped[0].reason


async def test_subject_and_body_must_agree(store: EventStore, nats_url: str) -> None:
    """An event whose body names another aggregate than its subject is skipped on read."""
    good = await store.append("agent", "x", NewEvent("Fine"))
    (ev,) = [e async for e in store.read("agent", "x")]
    body = msgspec.json.encode(msgspec.structs.replace(ev, aggregate_id="y", id="other-id"))
    nc = await nats.connect(nats_url)
    await nc.jetstream().publish(store.subject("agent", "x"), body)
    await nc.close()
    skipped: list[Malformed] = []
    assert [e async for e in store.read_all(good.last_seq + 1, on_malformed=skipped.append)] == []
    assert "stored on the subject" in skipped[0].reason


async def test_follow_sees_only_new_events_by_default(store: EventStore) -> None:
    """follow() without from_seq starts after the current head, live."""
    await store.append("agent", "f", NewEvent("Old"))
    seen: list[Event] = []

    async def consume() -> None:
        async for e in store.follow():
            seen.append(e)
            if len(seen) == 3:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    for i in range(3):
        await store.append("agent", "f", NewEvent("New", {"i": i}))
    await asyncio.wait_for(task, 10)
    assert [e.type for e in seen] == ["New"] * 3
    assert [e.seq for e in seen] == [2, 3, 4]


async def test_follow_one_aggregate(store: EventStore) -> None:
    """follow(type, id) yields that aggregate's events only, from a given sequence."""
    await _fill(store)
    got: list[tuple[str, int]] = []

    async def consume() -> None:
        async for e in store.follow(from_seq=1, aggregate_type="agent", aggregate_id="b"):
            got.append((e.aggregate_id, e.version))
            if len(got) == 6:
                return

    task = asyncio.create_task(consume())
    await store.append("agent", "a", NewEvent("Noise"))
    await store.append("agent", "b", NewEvent("Step"))
    await asyncio.wait_for(task, 10)
    assert got == [("b", v) for v in range(1, 7)]


@pytest.mark.slow
async def test_follow_survives_server_restart_without_skip_or_repeat(
    private_server: EmbeddedServer,
) -> None:
    """A follower sees every event exactly once, in order, across a server SIGKILL + restart."""
    n = 1500
    async with (
        await EventStore.connect(private_server.url, producer="w", append_timeout=60) as writer,
        await EventStore.connect(private_server.url, producer="r") as reader,
    ):
        seen: list[int] = []

        async def consume() -> None:
            async for e in reader.follow(from_seq=1):
                seen.append(e.seq)
                if len(seen) == n:
                    return

        follower = asyncio.create_task(consume())

        async def write() -> None:
            for i in range(n // 10):
                await asyncio.gather(
                    *(writer.append("job", f"j{k}", NewEvent("Step", {"i": i})) for k in range(10))
                )

        producer = asyncio.create_task(write())
        while len(seen) < n // 3:
            await asyncio.sleep(0.01)
        private_server.kill()
        await asyncio.sleep(0.5)
        private_server.start()
        await asyncio.wait_for(producer, 90)
        await asyncio.wait_for(follower, 90)
        assert await writer.head() == n
    assert seen == list(range(1, n + 1))
