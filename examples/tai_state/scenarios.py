"""The seed 002 scenarios, one coroutine each: each prints what it shows, records its checks
in ``Env.checks`` and returns the figures it checked."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from consumers import ProjectionClient
from eventstore import (
    EventStore,
    InvalidTransition,
    NewEvent,
    Retryable,
    StreamSettings,
    VectorClock,
    VersionConflict,
    export_events,
)
from examples._shell import Checks
from projections import Repository

T = TypeVar("T")


@dataclass
class Env:
    """What every scenario gets: where the log is, this run's tag (ids and producer names
    carry it, so the example runs again against the same server) and the checks."""

    url: str
    settings: StreamSettings
    run: str
    checks: Checks
    client: ProjectionClient

    async def store(self, producer: str) -> EventStore:
        """A connection of its own, as a separate agent process would have."""
        return await EventStore.connect(
            self.url, producer=f"{producer}-{self.run}", stream=self.settings
        )


# -- optimistic locking with automatic retry -------------------------------------------------


async def contention(env: Env, writers: int = 8, each: int = 25) -> dict[str, int]:
    """``writers`` agents increment one counter ``each`` times with ``Repository.update``:
    read, decide, append at the version read, and on ``VersionConflict`` read and decide anew."""
    doc = f"counter-{env.run}"
    stores = [await env.store(f"writer-{i}") for i in range(writers)]

    def increment(state: dict[str, Any]) -> list[NewEvent]:
        return [NewEvent("Incremented", {"count": state.get("count", 0) + 1})]

    async def writer(store: EventStore) -> int:
        repo, decisions = Repository(store), 0
        for _ in range(each):
            done = await repo.update("doc", doc, increment, retries=500)
            decisions += done.attempts
        return decisions

    try:
        decisions = sum(await asyncio.gather(*(writer(s) for s in stores)))
        final = await Repository(stores[0]).load("doc", doc)
    finally:
        for s in stores:
            await s.close()
    expected = writers * each
    retried = decisions - expected
    print(
        f"  {writers} writers x {each} updates on doc/{doc}: count {final.state['count']}, "
        f"version {final.version}, {retried} conflicts retried"
    )
    env.checks.check(
        f"count is exactly {expected} (no lost update)", final.state["count"] == expected
    )
    env.checks.check("one version per update", final.version == expected)
    return {"count": final.state["count"], "version": final.version, "conflicts_retried": retried}


# -- a multi-document transaction --------------------------------------------------------------


async def transaction(env: Env) -> dict[str, Any]:
    """Move 30 from account a to b and write the ledger, in one atomic batch; then a transfer
    decided on a stale read of a: refused whole, nothing stored on any of the three."""
    store = await env.store("treasurer")
    a, b, ledger = f"a-{env.run}", f"b-{env.run}", f"ledger-{env.run}"
    try:
        await store.append("account", a, NewEvent("Opened", {"balance": 100}), expected_version=0)
        await store.append("account", b, NewEvent("Opened", {"balance": 0}), expected_version=0)
        async with store.transaction() as tx:
            tx.append("account", a, NewEvent("Debited", {"balance": 70}), expected_version=1)
            tx.append("account", b, NewEvent("Credited", {"balance": 30}), expected_version=1)
            tx.append("ledger", ledger, NewEvent("Moved", {"from": a, "to": b, "amount": 30}))
        seqs = [r.last_seq for r in tx.results]
        refused = False
        try:
            async with store.transaction() as tx2:  # decided on version 1 of a: stale now
                tx2.append("account", a, NewEvent("Debited", {"balance": 40}), expected_version=1)
                tx2.append("account", b, NewEvent("Credited", {"balance": 60}), expected_version=2)
                tx2.append("ledger", ledger, NewEvent("Moved", {"amount": 30}))
        except VersionConflict as exc:
            refused = True
            print(f"  stale transfer refused: {exc}")
        versions = [
            await store.version("account", a),
            await store.version("account", b),
            await store.version("ledger", ledger),
        ]
    finally:
        await store.close()
    await env.client.wait_for(max(seqs))
    balances = [(await env.client.state("account", x)).state["balance"] for x in (a, b)]
    print(
        f"  after one committed transfer: balances {balances}, versions {versions}; "
        f"the three events share one atomic batch (seqs {seqs})"
    )
    env.checks.check(
        "the committed transaction stored all three, as one batch (consecutive seqs)",
        seqs == list(range(seqs[0], seqs[0] + 3)),
    )
    env.checks.check("the stale transaction was refused", refused)
    env.checks.check("and stored nothing (versions 2, 2, 1)", versions == [2, 2, 1])
    env.checks.check("money is conserved (70 + 30)", balances == [70, 30])
    return {"balances": balances, "versions": versions, "stale_refused": refused}


# -- conflict strategies and vector clocks -----------------------------------------------------


async def conflicts(env: Env) -> dict[str, Any]:
    """Two governors write one quota without reading each other: the primary five times (its
    own writes are ordered), then the replica once, blind. The replica's clock is concurrent
    with the primary's last event: a conflict, which each projection resolves its own way."""
    primary, replica = await env.store("governor-primary"), await env.store("governor-replica")
    doc = f"quota-{env.run}"
    try:
        for limit in (10, 20, 30, 35, 40):
            await primary.append("quota", doc, NewEvent("Set", {"limit": limit, "owners": ["ops"]}))
        last = await replica.append(
            "quota", doc, NewEvent("Set", {"limit": 25, "owners": ["research"]})
        )
        events = [ev async for ev in primary.read("quota", doc)]
    finally:
        await primary.close()
        await replica.close()
    for ev in events:
        print(
            f"  v{ev.version} {ev.producer:<32} lamport {ev.lamport:<3} vclock {ev.vclock} "
            f"{ev.data}"
        )
    p, r = events[-2], events[-1]
    order = VectorClock(r.vclock).compare(p.vclock).value
    print(f"  the replica's write vs the primary's last: {order}")
    await env.client.wait_for(last.last_seq)
    got = {
        name: (await env.client.state("quota", doc, projection=name)).state
        for name in ("entities", "tai_lww", "tai_priority", "tai_merge")
    }
    for name, state in got.items():
        print(f"  {name:<13} {state}")
    lww_winner = max((p, r), key=lambda e: (e.lamport, e.producer))
    checks = env.checks
    checks.check(
        "the primary's own writes are ordered (before)",
        VectorClock(events[1].vclock).compare(events[0].vclock).value == "after",
    )
    checks.check("the replica's blind write is concurrent", order == "concurrent")
    checks.check("log order (entities): the later write stands", got["entities"]["limit"] == 25)
    checks.check(
        f"lww: the larger (lamport, producer) wins ({lww_winner.producer})",
        got["tai_lww"]["limit"] == lww_winner.data["limit"],
    )
    checks.check("priority: the primary governor wins", got["tai_priority"]["limit"] == 40)
    checks.check(
        "custom merge: lower limit, union of owners",
        got["tai_merge"] == {"limit": 25, "owners": ["ops", "research"]},
    )
    return {"concurrent": order == "concurrent", "states": dict(got)}


# -- snapshots and temporal queries ------------------------------------------------------------


async def temporal(env: Env, steps: int = 25) -> dict[str, Any]:
    """A document with ``steps`` versions (the worker snapshots every 10); its state at the
    recorded time of version 12 is snapshot 10 plus the replay of two events."""
    store = await env.store("persister")
    doc = f"timeline-{env.run}"
    try:
        for i in range(1, steps + 1):
            res = await store.append("doc", doc, NewEvent("Stepped", {"step": i}))
        events = [ev async for ev in store.read("doc", doc)]
    finally:
        await store.close()
    await env.client.wait_for(res.last_seq)
    at = events[11].recorded_at
    assert at is not None
    past = await env.client.state("doc", doc, at=at)
    now = await env.client.state("doc", doc)
    print(
        f"  now: version {now.version}, step {now.state['step']}; at {at.isoformat()}: version "
        f"{past.version}, step {past.state['step']} = snapshot v{past.snapshot_version} + "
        f"{past.replayed} events replayed"
    )
    env.checks.check("the state at T is the state after version 12", past.state == {"step": 12})
    env.checks.check(
        "recovered as snapshot 10 + replay of 2", (past.snapshot_version, past.replayed) == (10, 2)
    )
    return {
        "version_now": now.version,
        "version_at": past.version,
        "snapshot_version": past.snapshot_version,
        "replayed": past.replayed,
    }


# -- transient and permanent errors ------------------------------------------------------------


async def with_retry(call: Callable[[], Awaitable[T]], *, retries: int = 5) -> tuple[T, int]:
    """The seed's retry policy: a ``Retryable`` error (timeout, no server, a request not
    answered in time) is tried again with exponential backoff and jitter, 10 ms to 1 s, at
    most ``retries`` times; anything else is permanent and raised at once."""
    delay = 0.01
    for attempt in range(1, retries + 2):
        try:
            return await call(), attempt
        except Retryable:
            if attempt > retries:
                raise
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


async def errors(env: Env) -> dict[str, Any]:
    """Transient: a read-your-write asked for before the write exists times out
    (``RequestTimeout``, retryable) until it lands. Permanent: a refused workflow transition
    (``InvalidTransition``) is not retried."""
    store = await env.store("publisher")
    doc = f"wf-{env.run}"
    try:
        first = await store.append("workflow", doc, NewEvent("Drafted", {"title": "plan"}))

        async def late_write() -> None:
            await asyncio.sleep(0.6)
            await store.append(
                "workflow", doc, NewEvent("Submitted", transition=("Draft", "Review"))
            )

        writer = asyncio.create_task(late_write())
        reply, transient_attempts = await with_retry(
            lambda: env.client.state("workflow", doc, min_seq=first.last_seq + 1, timeout=0.2),
            retries=10,
        )
        await writer
        permanent_attempts = 0

        async def publish_from_draft() -> Any:
            nonlocal permanent_attempts
            permanent_attempts += 1
            return await store.append(
                "workflow", f"{doc}-b", NewEvent("Published", transition=("Draft", "Published"))
            )

        refused = ""
        try:
            await with_retry(publish_from_draft)
        except InvalidTransition as exc:
            refused = str(exc)
    finally:
        await store.close()
    print(f"  transient: answered on attempt {transient_attempts} (status {reply.state['status']})")
    print(f"  permanent: {refused.split(';')[0]} (attempts: {permanent_attempts})")
    env.checks.check(
        "a transient error is retried until it succeeds",
        transient_attempts > 1 and reply.state["status"] == "Review",
    )
    env.checks.check(
        "a permanent error is raised at once", bool(refused) and permanent_attempts == 1
    )
    return {"transient_attempts": transient_attempts, "permanent_attempts": permanent_attempts}


# -- a distributed lock on a hot document ------------------------------------------------------


async def hot_lock(env: Env, holders: int = 6, each: int = 10) -> dict[str, Any]:
    """``holders`` agents take the document's lock in turn (``store.lock``: a lease with a
    fencing token), read, write at the version read: under the lock nobody conflicts."""
    doc = f"hot-{env.run}"
    stores = [await env.store(f"holder-{i}") for i in range(holders)]
    tokens: list[int] = []
    conflicts = 0

    async def holder(store: EventStore) -> None:
        nonlocal conflicts
        repo = Repository(store)
        for _ in range(each):
            async with store.lock(f"doc:{doc}", ttl=10, wait=60) as lease:
                tokens.append(lease.token)
                loaded = await repo.load("doc", doc)
                try:
                    await store.append(
                        "doc",
                        doc,
                        NewEvent("Incremented", {"count": loaded.state.get("count", 0) + 1}),
                        expected_version=loaded.version,
                        lease=lease,
                    )
                except VersionConflict:
                    conflicts += 1

    try:
        await asyncio.gather(*(holder(s) for s in stores))
        final = await Repository(stores[0]).load("doc", doc)
    finally:
        for s in stores:
            await s.close()
    expected = holders * each
    print(
        f"  {holders} holders x {each}: count {final.state['count']}, conflicts {conflicts}, "
        f"fencing tokens {tokens[0]}..{tokens[-1]} ({len(set(tokens))} grants)"
    )
    env.checks.check(
        f"count is exactly {expected}, no conflict under the lock",
        final.state["count"] == expected and conflicts == 0,
    )
    env.checks.check("every grant has a larger fencing token", tokens == sorted(set(tokens)))
    return {"count": final.state["count"], "conflicts": conflicts, "grants": len(set(tokens))}


# -- audit export ------------------------------------------------------------------------------


async def audit(env: Env, from_seq: int) -> dict[str, Any]:
    """The audit trail of this run: every event since it started, with who, when, the clocks."""
    store = await env.store("auditor")
    out = io.BytesIO()
    try:
        report = await export_events(store, out, from_seq=from_seq)
        head = await store.head()
    finally:
        await store.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    ours = [e for e in lines if e["producer"].endswith(env.run)]
    first = ours[0]
    print(
        f"  {report.events} events exported from seq {from_seq} to {report.last_seq}; first: "
        f"{first['type']} by {first['producer']} at {first['recorded_at']}"
    )
    env.checks.check(
        "the export holds every event of the run, once",
        len({e["id"] for e in lines}) == head - from_seq + 1 == report.events,
    )
    env.checks.check(
        "each line says who, when and its clocks",
        all({"producer", "recorded_at", "vclock", "lamport"} <= e.keys() for e in lines),
    )
    return {"exported": report.events, "ours": len(ours)}
