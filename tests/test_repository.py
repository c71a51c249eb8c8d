"""Decide and append: ``projections.Repository`` loads as the worker folds, retries only
conflicts, and never loses a race (real server, real worker and writer processes)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import ROOT, start_worker, stored_states
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from eventstore import EventStore, InvalidEvent, NewEvent, StreamSettings, VersionConflict
from projections import EntitiesProjection, ProjectionDB, Repository


def increment(state: dict[str, Any]) -> list[NewEvent]:
    return [NewEvent("Incremented", {"count": state.get("count", 0) + 1})]


def _start_writer(
    url: str, settings: StreamSettings, producer: str, n: int
) -> subprocess.Popen[bytes]:
    """A real writer process (``tests/writer_process.py``) incrementing counter/shared."""
    command = [sys.executable, str(ROOT / "tests" / "writer_process.py"), url, settings.name,
               settings.prefix, producer, str(n), "shared"]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _folded_seq(db: Path) -> int | None:
    """The seq of doc/d in the worker's database (None until the worker created it)."""
    try:
        return stored_states(db).get(("doc", "d"), {}).get("seq")
    except sqlite3.OperationalError:
        return None


async def _versions(store: EventStore, agg_type: str, agg_id: str) -> list[int]:
    return [e.version async for e in store.read(agg_type, agg_id)]


async def test_load_of_a_new_aggregate_is_the_initial_state(store: EventStore) -> None:
    """An aggregate without events loads as version 0, the projection's initial state."""
    loaded = await Repository(store).load("counter", "none")
    assert (loaded.version, loaded.seq, loaded.state, loaded.vclock) == (0, 0, {}, {})


async def test_update_appends_at_the_loaded_version_and_returns_the_new_state(
    store: EventStore,
) -> None:
    """Three updates (sync and async decide): versions 1..3, the state after each, the append
    result, and the state's clock as causal context of the next event."""
    repo = Repository(store)

    async def async_increment(state: dict[str, Any]) -> list[NewEvent]:
        await asyncio.sleep(0)
        return increment(state)

    first = await repo.update("counter", "c", increment)
    second = await repo.update("counter", "c", async_increment)
    third = await repo.update("counter", "c", lambda s: NewEvent("Incremented", {"count": 3}))
    assert [u.version for u in (first, second, third)] == [1, 2, 3]
    assert third.state == {"count": 3} and third.attempts == 1
    assert third.result is not None and third.result.version == 3
    assert third.seq == third.result.last_seq
    events = [e async for e in store.read("counter", "c")]
    assert events[2].vclock["tester"] > events[1].vclock["tester"]
    assert (await repo.load("counter", "c")).state == {"count": 3}


async def test_empty_decision_appends_nothing(store: EventStore) -> None:
    """``decide`` returning [] appends nothing and returns the loaded state unchanged."""
    repo = Repository(store)
    await repo.update("counter", "c", increment)
    same = await repo.update("counter", "c", lambda s: [])
    assert (same.version, same.result, same.state) == (1, None, {"count": 1})
    assert await store.head() == 1


async def test_domain_errors_pass_through_with_nothing_appended(store: EventStore) -> None:
    """An error raised by ``decide`` reaches the caller untouched, once, nothing appended."""
    calls = 0

    class InsufficientFunds(Exception):
        pass

    def refuse(state: dict[str, Any]) -> list[NewEvent]:
        nonlocal calls
        calls += 1
        raise InsufficientFunds("balance 0")

    with pytest.raises(InsufficientFunds, match="balance 0"):
        await Repository(store).update("account", "a", refuse)
    assert calls == 1
    assert await store.head() == 0


async def test_a_decision_that_is_not_events_is_invalid(store: EventStore) -> None:
    """``decide`` returning something else than events is an InvalidEvent, nothing stored."""
    with pytest.raises(InvalidEvent, match="list of NewEvent"):
        await Repository(store).update("account", "a", lambda s: "Opened")
    assert await store.head() == 0


async def test_retries_are_bounded_then_the_last_conflict_is_raised(
    store: EventStore, nats_url: str
) -> None:
    """A rival that appends during every decision: ``retries=2`` decides three times, then
    the last VersionConflict is raised; only the rival's events are stored."""
    calls = 0
    async with await EventStore.connect(nats_url, producer="rival", stream=store.settings) as r:

        async def contested(state: dict[str, Any]) -> list[NewEvent]:
            nonlocal calls
            calls += 1
            await r.append("counter", "c", NewEvent("Rival"))
            return increment(state)

        with pytest.raises(VersionConflict) as info:
            await Repository(store).update("counter", "c", contested, retries=2, backoff=0.001)
    assert calls == 3
    assert (info.value.expected, info.value.actual) == (2, 3)
    assert [e.type async for e in store.read("counter", "c")] == ["Rival"] * 3


async def test_a_conflict_is_retried_on_the_new_state(store: EventStore, nats_url: str) -> None:
    """A rival's append between load and append: the update decides again on the state that
    includes the rival's event, and succeeds at the next version."""
    calls = 0
    async with await EventStore.connect(nats_url, producer="rival", stream=store.settings) as r:

        async def once_contested(state: dict[str, Any]) -> list[NewEvent]:
            nonlocal calls
            calls += 1
            if calls == 1:
                await r.append("counter", "c", NewEvent("Set", {"count": 10}))
            return increment(state)

        done = await Repository(store).update("counter", "c", once_contested)
    assert (done.attempts, done.version, done.state) == (2, 2, {"count": 11})


async def test_ten_processes_times_fifty_updates_count_exactly_500(
    nats_url: str, settings: StreamSettings
) -> None:
    """Ten real writer processes each do 50 increments of one aggregate: the counter is
    exactly 500, the versions 1..500, and each process saw its own 50 distinct versions."""
    async with await EventStore.connect(nats_url, producer="setup", stream=settings) as s:
        await s.ensure()
    procs = [_start_writer(nats_url, settings, f"writer-{i}", 50) for i in range(10)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    seen = [json.loads(out)["versions"] for out, _ in outs]
    assert sorted(v for vs in seen for v in vs) == list(range(1, 501))
    assert all(len(set(vs)) == 50 for vs in seen)
    async with await EventStore.connect(nats_url, producer="check", stream=settings) as s:
        assert await _versions(s, "counter", "shared") == list(range(1, 501))
        assert (await Repository(s).load("counter", "shared")).state == {"count": 500}


async def test_load_shows_exactly_what_the_worker_folds(
    store: EventStore, nats_url: str, tmp_path: Path
) -> None:
    """After updates, a blind concurrent write (a conflict) and a raw malformed message, the
    repository's load (from the log, and from the worker's database with its snapshots)
    equals the state a real worker process committed."""
    repo = Repository(store)
    for i in range(7):
        await repo.update("doc", "d", lambda s, i=i: [NewEvent("Edited", {"title": f"t{i}"})])
    async with await EventStore.connect(nats_url, producer="blind", stream=store.settings) as b:
        await b.append("doc", "d", NewEvent("Edited", {"title": "blind"}), context={})
    await store.js.publish(store.subject("doc", "d"), b"not json")
    await repo.update("doc", "d", lambda s: [NewEvent("Tagged", {"tags": [s["title"]]})])
    db = tmp_path / "w.db"
    log = tmp_path / "worker.log"
    config = tmp_path / "w.toml"
    config.write_text("[projections]\nsnapshot_every = 3\n")
    worker = start_worker(nats_url, store.settings, db, log, "--config", str(config))
    try:
        head = await store.head()
        async with asyncio.timeout(60):
            while _folded_seq(db) != head:
                await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    folded = stored_states(db)[("doc", "d")]
    fresh = await Repository(store).load("doc", "d")
    assert (fresh.version, fresh.state) == (folded["version"], folded["state"])
    async with await ProjectionDB.open(db) as pdb:
        from_db = await Repository(store, EntitiesProjection(), pdb).load("doc", "d")
    assert (from_db.version, from_db.state, from_db.vclock) == (
        fresh.version,
        fresh.state,
        fresh.vclock,
    )


async def test_update_many_decides_over_two_aggregates_in_one_transaction(
    store: EventStore, nats_url: str
) -> None:
    """A transfer between two accounts is decided on both states and appended together; a
    rival's deposit on one of them during the first decision makes it decide again."""
    repo = Repository(store)
    await repo.update("account", "a", lambda s: [NewEvent("Opened", {"balance": 100})])
    await repo.update("account", "b", lambda s: [NewEvent("Opened", {"balance": 0})])
    calls = 0
    async with await EventStore.connect(nats_url, producer="rival", stream=store.settings) as r:

        async def transfer(states: dict[tuple[str, str], Any]) -> dict[Any, list[NewEvent]]:
            nonlocal calls
            calls += 1
            if calls == 1:
                await r.append("account", "b", NewEvent("Deposited", {"balance": 5}))
            a, b = states[("account", "a")].state, states[("account", "b")].state
            return {
                ("account", "a"): [NewEvent("Sent", {"balance": a["balance"] - 30})],
                ("account", "b"): [NewEvent("Received", {"balance": b["balance"] + 30})],
            }

        done = await repo.update_many([("account", "a"), ("account", "b")], transfer)
    assert calls == 2
    assert done[("account", "a")].state == {"balance": 70}
    assert done[("account", "b")].state == {"balance": 35}
    assert [done[k].version for k in (("account", "a"), ("account", "b"))] == [2, 3]


OPS = st.lists(
    st.tuples(
        st.integers(0, 2),  # writer
        st.integers(0, 1),  # aggregate
        st.sampled_from(["add", "double", "note"]),
        st.integers(-5, 5),
    ),
    min_size=1,
    max_size=14,
)


def decision(op: int, kind: str, arg: int, state: dict[str, Any]) -> dict[str, Any]:
    """What op ``op`` decides on ``state``: a function of the state, so a decision made on
    a stale state would show in the log."""
    n = state.get("n", 0)
    if kind == "add":
        return {"op": op, "n": n + arg}
    if kind == "double":
        return {"op": op, "n": n * 2 + 1}
    return {"op": op, "trail": [*state.get("trail", []), arg]}


@hsettings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS, jitter=st.lists(st.integers(0, 3), min_size=14, max_size=14))
async def test_any_interleaving_equals_the_serial_run_in_log_order(
    nats_url: str, ops: list[tuple[int, int, str, int]], jitter: list[int]
) -> None:
    """Three writers run their updates concurrently: replaying the decisions one after another
    in log order gives exactly the logged events and the final states the repository loads."""
    tag = uuid.uuid4().hex[:12]
    settings = StreamSettings(name=f"WM_{tag}", prefix=f"wm{tag}")
    stores = [
        await EventStore.connect(nats_url, producer=f"w{i}", stream=settings) for i in range(3)
    ]
    try:
        repos = [Repository(s) for s in stores]

        async def writer(w: int) -> None:
            for i, (who, agg, kind, arg) in enumerate(ops):
                if who != w:
                    continue
                await asyncio.sleep(jitter[i] / 1000)
                await repos[w].update(
                    "thing",
                    f"t{agg}",
                    lambda s, i=i, kind=kind, arg=arg: [NewEvent("D", decision(i, kind, arg, s))],
                )

        await asyncio.gather(*(writer(w) for w in range(3)))
        serial: dict[str, dict[str, Any]] = {}
        logged = [e async for e in stores[0].read_all(aggregate_type="thing")]
        assert sorted(e.data["op"] for e in logged) == list(range(len(ops)))
        for e in logged:
            _, _, kind, arg = ops[e.data["op"]]
            before = serial.get(e.aggregate_id, {})
            assert e.data == decision(e.data["op"], kind, arg, before)
            serial[e.aggregate_id] = {**before, **e.data}
        for agg_id, state in serial.items():
            assert (await Repository(stores[1]).load("thing", agg_id)).state == state
    finally:
        for s in stores:
            await s.close()
