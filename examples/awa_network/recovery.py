"""Steps 5-7 of the awa_network example: concurrent agents and a worker crash, a guardian
crash and the reconcile, the carving logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from consumers import ProjectionClient, WorkerProcess
from eventstore import EventStore, NewEvent, export_events
from examples._shell import Checks
from examples.awa_network.realms import RealmProjection, carving_entry
from examples.awa_network.steps import GUARDIAN, LOCK, carving, heading, iso
from projections import ProjectionDB, TimeTravel, list_conflicts

__all__ = ["carving_logs", "concurrent_agents", "crash_and_reconcile", "reconcile"]


async def concurrent_agents(
    url: str, s: EventStore, client: ProjectionClient, worker: WorkerProcess, checks: Checks
) -> dict[str, Any]:
    heading("5. three agents update te_po at once; the worker is SIGKILLed meanwhile")
    agents, rounds = ("asst_qa", "asst_ops", "ocr_worker"), 12
    last: dict[str, str] = {}
    written: set[int] = set()
    half = asyncio.Event()
    together = asyncio.Barrier(len(agents))  # each round, the three write at the same moment
    done = 0

    async def agent(name: str) -> None:
        nonlocal done
        producer = f"{name}_agent"
        async with await EventStore.connect(url, producer=producer, stream=s.settings) as a:
            for i in range(rounds):
                await together.wait()
                now, connections = iso(), (agents.index(name) + 1) * 100 + i
                if name == "ocr_worker":
                    patch: dict[str, Any] = {"pipelines": {"ocr_pipeline": {"last_run": now}}}
                else:
                    patch = {"assistants": {name: {"status": "active", "last_sync": now}}}
                patch["database"] = {"active_connections": connections}  # a shared path
                kind = "pipeline_start" if name == "ocr_worker" else "assistant_update"
                await a.append(
                    "realm",
                    "te_po",
                    NewEvent(
                        kind,
                        carving("sync", {"agent": name}, patch),
                        metadata={"guardian": producer},
                    ),
                )
                last[name], done = now, done + 1
                written.add(connections)
                if done == rounds:
                    half.set()

    async def crash() -> None:
        await half.wait()
        at = done
        worker.kill()
        print(f"  worker SIGKILLed after {at} of {rounds * len(agents)} updates; restarted")
        await worker.start()

    await asyncio.gather(*(agent(n) for n in agents), crash())
    reply = await client.state("realm", "te_po", min_seq=await s.head())
    state = reply.state
    scratch = await TimeTravel(s, RealmProjection()).state_at("realm", "te_po")
    async with await ProjectionDB.open(worker.db, readonly=True) as db:
        conflicts = await list_conflicts(db, "realms", "realm", "te_po")
    print(
        f"  {len(conflicts)} conflicts recorded, resolved by "
        f"{sorted({c.resolver for c in conflicts})}"
        f"; active_connections = {state['database']['active_connections']}"
    )
    kept = [
        state["assistants"]["asst_qa"]["last_sync"] == last["asst_qa"],
        state["assistants"]["asst_ops"]["last_sync"] == last["asst_ops"],
        state["pipelines"]["ocr_pipeline"]["last_run"] == last["ocr_worker"],
    ]
    checks.check("disjoint paths merge: every agent's last write is in the state", all(kept))
    checks.check(
        "overlapping writes are recorded conflicts, each resolved by lww",
        bool(conflicts) and all(c.resolver == "lww" for c in conflicts),
    )
    checks.check(
        "the shared value is one an agent wrote", state["database"]["active_connections"] in written
    )
    checks.check(
        "deterministic: a fold from scratch equals the worker's state (after SIGKILL)",
        scratch.state == state and scratch.version == reply.version,
    )
    return {
        "agents": len(agents),
        "updates": rounds * len(agents),
        "conflicts": len(conflicts),
        "version": reply.version,
        "active_connections": state["database"]["active_connections"],
    }


async def reconcile(s: EventStore, client: ProjectionClient, realm: str) -> tuple[list[str], int]:
    """``tehau state reconcile <realm>``: under the realm lock (so nobody operates), every
    pipeline still ``running`` was interrupted; mark it idle and carve the failure."""
    owner = f"reconciler_process_{os.getpid()}"
    async with s.lock(f"realm:{realm}", owner=owner, ttl=30, wait=15) as lease:
        state = (await client.state("realm", realm, min_seq=await s.head())).state
        stuck = sorted(
            p for p, v in state.get("pipelines", {}).items() if v.get("status") == "running"
        )
        if stuck:
            await s.append(
                "realm",
                realm,
                NewEvent(
                    "reconcile",
                    carving(
                        "reconcile",
                        {"interrupted": stuck},
                        {"pipelines": {p: {"status": "idle"} for p in stuck}},
                        status="failure",
                        error="interrupted: its guardian died holding the realm lock",
                    ),
                    metadata=GUARDIAN,
                ),
                lease=lease,
            )
        return stuck, lease.token


async def crash_and_reconcile(
    url: str, s: EventStore, client: ProjectionClient, checks: Checks
) -> dict[str, Any]:
    heading("6. a guardian SIGKILLed mid-operation, then the reconcile")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.awa_network.guardian",
        url,
        s.settings.name,
        s.settings.prefix,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        proc.send_signal(signal.SIGKILL)  # mid-operation: the lock held, the run unfinished
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    _, token, seq = line.decode().split()
    before = await client.state("realm", "te_po", min_seq=int(seq))
    holder = [i.owner for i in await s.leases.show(LOCK)]
    print(
        f"  guardian pid {proc.pid} killed holding token {token}; ocr_pipeline is "
        f"{before.state['pipelines']['ocr_pipeline']['status']}; lock held by {holder}"
    )
    stuck, token_after = await reconcile(s, client, "te_po")
    again, _ = await reconcile(s, client, "te_po")
    after = await client.state("realm", "te_po", min_seq=await s.head())
    print(f"  reconcile (token {token_after}) repaired {stuck}; a second run repaired {again}")
    checks.check(
        "the crash left the pipeline running",
        before.state["pipelines"]["ocr_pipeline"]["status"] == "running",
    )
    checks.check(
        "the reconcile got the dead holder's lock after its TTL, with a larger token",
        token_after > int(token),
    )
    checks.check(
        "the reconcile repaired exactly the interrupted pipeline, once",
        stuck == ["ocr_pipeline"]
        and again == []
        and after.state["pipelines"]["ocr_pipeline"]["status"] == "idle",
    )
    return {"dead_token": int(token), "reconcile_token": token_after, "repaired": stuck}


async def carving_logs(s: EventStore, workdir: Path, checks: Checks) -> dict[str, int]:
    heading("7. the carving logs: the JSONL export of each realm")
    out: dict[str, int] = {}
    for realm in ("te_po", "te_hau"):
        path = workdir / f"{realm}_carving_log.jsonl"
        with path.open("wb") as f:
            report = await export_events(s, f, aggregate_type="realm", aggregate_id=realm)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        entries = [carving_entry(line) for line in lines]
        print(f"  {path.name}: {report.events} lines; the last:")
        print("   ", json.dumps(entries[-1]))
        versions = [line["version"] for line in lines]
        ok = versions == list(range(1, len(lines) + 1)) and {e["realm"] for e in entries} == {realm}
        checks.check(f"{realm}: the carving log is the realm's whole history, in order", ok)
        out[realm] = report.events
    return out
