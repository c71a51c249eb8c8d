"""Clock reservations made ahead of need, and a Lamport time observed while one is on its way:
real reservations in a real nats-server's key-value bucket."""

from __future__ import annotations

import asyncio

import msgspec

from eventstore import EventStore, StreamSettings
from eventstore.clockstore import ProducerClock, bucket_name


async def _stored(store: EventStore, settings: StreamSettings, producer: str) -> dict[str, int]:
    kv = await store.js.key_value(bucket_name(settings.name))
    entry = await kv.get(producer)
    assert entry.value is not None
    got: dict[str, int] = msgspec.json.decode(entry.value)
    return got


async def test_a_time_observed_during_a_reservation_is_covered(
    store: EventStore, settings: StreamSettings
) -> None:
    """An event read while a reservation is being written moves the Lamport time past what
    the write covers; the reservation goes on until the next ticks are covered."""
    clock = ProducerClock(store.js, settings.name, "observer")
    await clock.reserve(1)
    writing = asyncio.create_task(clock.reserve(5))
    await asyncio.sleep(0)  # the write is on its way: its high mark is computed
    clock.observe(clock.lamport + 10_000)
    await writing
    times = [clock.tick()[0] for _ in range(5)]  # an unreserved value fails its assertion
    stored = await _stored(store, settings, "observer")
    assert stored["lamport"] >= times[-1] and stored["counter"] >= clock.counter
    await clock.close()


async def test_the_next_block_is_reserved_ahead_within_the_bound(
    store: EventStore, settings: StreamSettings
) -> None:
    """Past half of a full block, the next one is reserved in the background: the ticks that
    follow find it persisted without waiting, and never more than ``block`` values are
    reserved beyond those used."""
    block = 40
    clock = ProducerClock(store.js, settings.name, "ahead", block=block)
    waited = 0
    aheads = 0
    for _ in range(400):
        if clock.needs_reservation(1):
            waited += 1
            await clock.reserve(1)
        clock.tick()
        clock.reserve_ahead()
        if (ahead := clock._ahead) is not None:
            aheads += 1
            await ahead  # the write goes on while the producer prepares its next batch
        stored = await _stored(store, settings, "ahead")
        assert clock.lamport <= stored["lamport"] and clock.counter <= stored["counter"]
        assert stored["counter"] - clock.counter <= block
    assert aheads >= 400 // block - 2  # one per half block used, once blocks are full-size
    assert waited <= 8  # only while blocks grow to full size (1, 2, 4, ... 40)
    await clock.close()


async def test_closing_stops_a_reservation_ahead(
    store: EventStore, settings: StreamSettings
) -> None:
    """A reservation ahead still on its way when the clock closes is cancelled, not left
    running; a later process starts above everything reserved."""
    clock = ProducerClock(store.js, settings.name, "closing", block=4)
    for _ in range(40):
        if clock.needs_reservation(1):
            await clock.reserve(1)
        clock.tick()
        clock.reserve_ahead()
        if clock._ahead is not None:
            break
    assert clock._ahead is not None  # on its way: nothing awaited it yet
    await clock.close()
    assert clock._ahead is None
    again = ProducerClock(store.js, settings.name, "closing", block=4)
    await again.reserve(1)
    assert again.tick()[1] > clock.counter
    await again.close()
