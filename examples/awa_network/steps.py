"""Steps 1-4 of the awa_network example (5-7 are in ``recovery``): each a function that
prints what it shows, checks what it claims (``Checks``) and returns its figures for the
final JSON line."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

from consumers import ProjectionClient, WorkerProcess
from eventstore import (
    EventStore,
    LeaseUnavailable,
    NewEvent,
    fenced_events,
)
from examples._shell import Checks
from examples.awa_network.realms import (
    seed_state,
    shape,
    stale_components,
)
from projections import ProjectionDB, list_quarantine

__all__ = [
    "GUARDIAN",
    "LOCK",
    "carving",
    "expiry_and_fencing",
    "heading",
    "initialise",
    "iso",
    "lock_and_operate",
    "staleness",
]

LOCK = "realm:te_po"
GUARDIAN = {"guardian": "kitenga_whiro"}


def iso(t: datetime | None = None) -> str:
    return (t or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def carving(
    operation: str,
    details: dict[str, Any],
    state: dict[str, Any],
    *,
    status: str = "success",
    error: str | None = None,
    duration_ms: int = 0,
) -> dict[str, Any]:
    """An event's data: the seed's carving-log fields plus the merge patch of the state."""
    return {
        "operation": operation,
        "details": details,
        "status": status,
        "error": error,
        "duration_ms": duration_ms,
        "state": state,
    }


def heading(text: str) -> None:
    print(f"\n== {text}")


async def initialise(s: EventStore, client: ProjectionClient, checks: Checks) -> dict[str, int]:
    heading("1. the realm state files as aggregates (realm/te_po, realm/te_hau)")
    out: dict[str, int] = {}
    for realm in ("te_po", "te_hau"):
        document = seed_state(realm, datetime.now(UTC))
        res = await s.append(
            "realm",
            realm,
            NewEvent(
                "realm_initialised",
                carving("write_state", {"file": f"mauri/state/{realm}_state.json"}, document),
                metadata=GUARDIAN,
            ),
            expected_version=0,
        )
        reply = await client.state("realm", realm, min_seq=res.last_seq)
        expected = {"version": "1.0", "realm": realm, "timestamp": iso(), **document}
        if realm == "te_po":
            print(json.dumps(reply.state, indent=2))
        checks.check(
            f"{realm}: the state the worker serves has the seed's JSON shape",
            shape(reply.state) == shape(expected),
            json.dumps(shape(reply.state)),
        )
        out[realm] = reply.version
    return out


async def staleness(client: ProjectionClient, checks: Checks, *, expect_stale: bool) -> list[str]:
    if expect_stale:
        heading("2. staleness: components whose last_sync is older than 5 minutes")
    else:
        heading("3b. staleness after the vector sync")
    reply = await client.state("realm", "te_po")
    stale = stale_components(reply.state, datetime.now(UTC))
    print(f"  stale in te_po: {stale or 'none'}")
    want = ["vector_store"] if expect_stale else []
    checks.check(f"staleness reports {want or 'nothing'}", stale == want, str(stale))
    return stale


async def lock_and_operate(
    s: EventStore, client: ProjectionClient, checks: Checks
) -> dict[str, Any]:
    heading("3. the realm lock: request, acquire, operate, release")
    owner = f"kitenga_whiro_process_{os.getpid()}"
    async with s.lock(LOCK, owner=owner, ttl=30, wait=5) as lease:
        info = (await s.leases.show(LOCK))[0]
        print(
            "  realm_lock.json:",
            json.dumps(
                {
                    "locked_realm": "te_po",
                    "locked_by": info.owner,
                    "locked_at": iso(info.acquired_at),
                    "expires_at": iso(info.expires_at),
                    "operation": "vector_sync",
                    "token": lease.token,
                }
            ),
        )
        max_hold = (info.max_until - info.acquired_at).total_seconds()
        try:
            await s.leases.acquire(LOCK, owner="asst_ops_process", wait=0.5)
            refused = False
        except LeaseUnavailable as exc:
            refused = True
            print(f"  a second guardian's request: {exc}")
        started = time.monotonic()
        await s.append(
            "realm",
            "te_po",
            NewEvent(
                "vector_sync",
                carving(
                    "vector_sync",
                    {"vector_store": "vs_awa"},
                    {
                        "pipelines": {
                            "vector_sync": {"status": "running", "progress": 0.0, "started": iso()}
                        }
                    },
                ),
                metadata=GUARDIAN,
            ),
            lease=lease,
        )
        done = await s.append(
            "realm",
            "te_po",
            NewEvent(
                "vector_sync",
                carving(
                    "vector_sync",
                    {"vector_store": "vs_awa", "added": 6},
                    {
                        "pipelines": {"vector_sync": {"status": "idle", "progress": 1.0}},
                        "vector_store": {"document_count": 1240, "last_sync": iso()},
                    },
                    duration_ms=int((time.monotonic() - started) * 1000),
                ),
                metadata=GUARDIAN,
            ),
            lease=lease,
        )
    released = await s.leases.show(LOCK) == []
    reply = await client.state("realm", "te_po", min_seq=done.last_seq)
    checks.check("a request while the lock is held is refused, naming the holder", refused)
    checks.check("a hold lasts five minutes at most (max_hold 300 s)", max_hold == 300.0)
    checks.check("the lock is released at the end of the operation", released)
    checks.check(
        "the operation's result is in the state (1240 documents)",
        reply.state["vector_store"]["document_count"] == 1240,
    )
    return {
        "token": lease.token,
        "refused_while_held": refused,
        "max_hold_s": max_hold,
        "released": released,
    }


async def expiry_and_fencing(
    s: EventStore, client: ProjectionClient, worker: WorkerProcess, checks: Checks
) -> dict[str, Any]:
    heading("4. released on timeout; a stale holder fenced off")
    old = await s.leases.acquire(LOCK, owner="asst_qa_process_paused", ttl=1)
    stamped = fenced_events(
        NewEvent(
            "assistant_update",
            carving(
                "update_assistant",
                {"assistant_id": "asst_qa"},
                {"assistants": {"asst_qa": {"model": "gpt-4-stale"}}},
            ),
            metadata=GUARDIAN,
        ),
        old,
    )
    print(f"  a holder took the lock (token {old.token}, TTL 1 s) and stopped renewing")
    t0 = time.monotonic()
    new = await s.leases.acquire(LOCK, owner="asst_ops_process", ttl=10, wait=10)
    waited = time.monotonic() - t0
    print(f"  the next request got it after {waited:.1f} s, token {new.token}")
    await s.append(
        "realm",
        "te_po",
        NewEvent(
            "assistant_update",
            carving(
                "update_assistant",
                {"assistant_id": "asst_qa"},
                {"assistants": {"asst_qa": {"model": "gpt-4o"}}},
            ),
            metadata=GUARDIAN,
        ),
        lease=new,
    )
    await s.leases.release(LOCK, new.token)
    late = await s.append("realm", "te_po", stamped)  # the paused holder wakes and writes
    reply = await client.state("realm", "te_po", min_seq=late.last_seq)
    async with await ProjectionDB.open(worker.db, readonly=True) as db:
        fenced = [
            q.seq
            for q in await list_quarantine(db, "realms", "realm", "te_po")
            if q.kind == "fenced"
        ]
    print(f"  the old holder's late write: seq {late.last_seq}, quarantined {fenced}")
    checks.check(
        "an expired lock is taken by the next holder with a larger token", new.token > old.token
    )
    checks.check(
        "the stale holder's write is fenced: quarantined, not in the state",
        fenced == [late.last_seq] and reply.state["assistants"]["asst_qa"]["model"] == "gpt-4o",
    )
    return {
        "old_token": old.token,
        "new_token": new.token,
        "waited_s": round(waited, 2),
        "fenced_seqs": fenced,
    }
