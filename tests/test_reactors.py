"""Reactors (``consumers.reactors``): derived ids, causation, clocks; one active across real
worker processes, the active one SIGKILLed again and again, every trigger reacted to once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_projections import ROOT, start_worker
from reactor_sample import AsyncShipper, Shipper

from consumers.reactors import ReactorRunner, load_reactor, reaction_id
from eventstore import ConfigError, Event, EventStore, NewEvent, StreamSettings

SAMPLE = {"PYTHONPATH": str(ROOT / "tests")}


async def all_events(store: EventStore, aggregate_type: str) -> list[Event]:
    return [e async for e in store.read_all(aggregate_type=aggregate_type)]


async def wait_for(store: EventStore, aggregate_type: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(await all_events(store, aggregate_type)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {aggregate_type} events"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("reactor", [Shipper(), AsyncShipper()])
async def test_a_reaction_has_derived_ids_causation_and_the_triggers_clock(
    store: EventStore, reactor: Shipper
) -> None:
    """The reaction's id derives from the trigger, its causation id is the trigger and its
    clock covers the trigger's; reacting again (a retry) stores nothing new."""
    trigger = await store.append("order", "o1", NewEvent("Ordered"))
    runner = ReactorRunner(store, reactor)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run_until(stop))
    await wait_for(store, "shipment", 1, 15)
    stop.set()
    await asyncio.wait_for(task, 15)
    [ordered] = await all_events(store, "order")
    [shipped] = await all_events(store, "shipment")
    assert shipped.id == reaction_id(reactor.name, ordered.id, 0, 0)
    assert shipped.causation_id == ordered.id == shipped.correlation_id
    assert all(shipped.vclock.get(k, 0) >= v for k, v in trigger.vclock.items())
    lease = await store.leases.acquire(runner.lease_name, owner="retry", ttl=5)  # it released
    await runner.react(ordered, lease)
    assert len(await all_events(store, "shipment")) == 1
    assert (await runner.checkpoint())[0] == ordered.seq  # kept in the bucket, not a file


def test_load_reactor_refuses_what_is_not_a_reactor() -> None:
    """A ``module:object`` that is no Reactor (or cannot be imported) is a ``ConfigError``."""
    assert load_reactor("reactor_sample:Shipper").name == "shipper"
    for spec in ("reactor_sample:NewEvent", "no_such_module:X", "reactor_sample"):
        with pytest.raises(ConfigError):
            load_reactor(spec)


async def test_the_active_reactor_worker_killed_twenty_times_reacts_once_to_every_trigger(
    nats_url: str, settings: StreamSettings, store: EventStore, tmp_path: Path
) -> None:
    """Two workers run the reactor; the active one is SIGKILLed twenty times (and replaced)
    while triggers keep coming: each trigger has exactly one reaction in the log."""
    n = 0

    def worker() -> subprocess.Popen[bytes]:
        nonlocal n
        n += 1
        db, log = tmp_path / f"w{n}.db", tmp_path / f"w{n}.log"
        return start_worker(nats_url, settings, db, log, "--reactor", "reactor_sample:Shipper",
                            env=SAMPLE)  # fmt: skip

    procs = [worker(), worker()]
    stop_producing = asyncio.Event()

    async def produce() -> int:
        count = 0
        while not stop_producing.is_set() or count < 50:
            await store.append("order", f"o{count}", NewEvent("Ordered", {"n": count}))
            count += 1
            await asyncio.sleep(0.02)
        return count

    producing = asyncio.create_task(produce())
    killed_tokens: set[int] = set()
    try:
        for _ in range(20):
            deadline = time.monotonic() + 15
            while True:
                info = await store.leases.current("reactor:shipper")
                live = {p.pid: p for p in procs if p.poll() is None}
                if info is not None and info.token not in killed_tokens:
                    pid = int(info.owner.rsplit(":", 1)[1])
                    if pid in live:
                        break
                assert time.monotonic() < deadline, "no worker took the reactor over"
                await asyncio.sleep(0.05)
            live[pid].send_signal(signal.SIGKILL)
            live[pid].wait(timeout=10)
            killed_tokens.add(info.token)
            procs.append(worker())
        stop_producing.set()
        triggers = await asyncio.wait_for(producing, 60)
        await wait_for(store, "shipment", triggers, 30)
        await asyncio.sleep(1.5)  # a late duplicate would show up by now
    finally:
        stop_producing.set()
        for p in procs:
            p.kill()
            p.wait(timeout=10)
    orders = await all_events(store, "order")
    shipments = await all_events(store, "shipment")
    assert len(orders) == triggers
    per_trigger = Counter(s.causation_id for s in shipments)
    assert per_trigger == Counter({o.id: 1 for o in orders})
    assert len(killed_tokens) == 20
