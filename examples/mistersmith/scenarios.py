"""The seed 003 scenarios: agent lifecycles with deduplicated retries, supervision (the
reactor in ``supervisor.py``), replay, metrics and a migration to a fresh server."""

from __future__ import annotations

import asyncio
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from consumers import ProjectionClient, StateReply, WorkerProcess
from eventstore import (
    EmbeddedServer,
    EventStore,
    NewEvent,
    Rules,
    export_events,
    free_port,
    import_events,
)
from examples._shell import Checks
from projections import EntitiesProjection, ProjectionDB, Repository, verify

HEALTHY = [
    ("Starting", ("Created", "Starting")),
    ("Running", ("Starting", "Running")),
    ("Processing", ("Running", "Processing")),
    ("Terminated", ("Processing", "Terminated")),
]


def rules() -> Rules:
    """The agent lifecycle of seed 003, plus Failed for the supervisor to act on."""
    pairs = [
        ["Created", "Starting"],
        ["Starting", "Running"],
        ["Running", "Processing"],
        ["Processing", "Running"],
        ["Processing", "Terminated"],
        ["Running", "Terminated"],
        ["Running", "Failed"],
        ["Processing", "Failed"],
        ["Failed", "Starting"],
        ["Failed", "Terminated"],
    ]
    machines = {"agent": {"initial": "Created", "transitions": pairs}}
    return Rules.from_mapping({"machines": machines}, source="examples.mistersmith")


@dataclass
class Env:
    store: EventStore
    client: ProjectionClient
    run: str
    checks: Checks

    def agent(self, name: str) -> str:
        return f"{name}-{self.run}"

    def created(self, name: str) -> NewEvent:
        tree = {"supervisor": f"workers-{self.run}", "root": f"root-{self.run}"}
        return NewEvent(
            "Created", {"model": "claude", "name": name, **tree}, id=f"{self.agent(name)}-created"
        )


async def until(probe: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> bool:
    """Poll ``probe`` every 20 ms until it holds (True) or ``timeout`` passes (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await probe():
            return True
        await asyncio.sleep(0.02)
    return False


async def lifecycles(env: Env, agents: int = 3) -> dict[str, int]:
    """Each agent walks Created -> Starting -> Running -> Processing -> Terminated; every
    append is sent twice with the same event ids, as a client retries after a lost ack."""
    stored = duplicates = 0
    for n in range(agents):
        name = env.agent(f"agent{n}")
        steps = [env.created(f"agent{n}")] + [
            NewEvent(f"To{to}", transition=t, id=f"{name}-{to.lower()}") for to, t in HEALTHY
        ]
        for ev in steps:
            first = await env.store.append("agent", name, ev)
            again = await env.store.append("agent", name, ev)  # the retry: same id
            stored += not first.duplicate
            duplicates += again.duplicate and again.version == first.version
        last = first
    await env.client.wait_for(last.last_seq)
    names = [env.agent(f"agent{n}") for n in range(agents)]
    mine = [
        n for n in names if (await env.client.state("agent", n)).state["status"] == "Terminated"
    ]
    print(
        f"  {agents} agents, {stored} events stored, {duplicates} retries recognised as "
        f"duplicates; Terminated: {len(mine)}"
    )
    env.checks.check("every retry was stored once", stored == duplicates == agents * 5)
    env.checks.check("every agent reached Terminated", len(mine) == agents)
    return {"agents": agents, "stored": stored, "duplicates": duplicates}


async def supervision(env: Env) -> dict[str, Any]:
    """A flaky agent fails each time it runs; the supervisor restarts it three times with a
    doubling backoff, then gives it up and escalates to the root."""
    name = env.agent("flaky")
    await env.store.append("agent", name, env.created("flaky"), expected_version=0)
    failures = 0

    async def state() -> StateReply:
        return await env.client.state("agent", name)

    starting = NewEvent("ToStarting", transition=("Created", "Starting"))
    await env.store.append("agent", name, starting)
    while True:
        await env.store.append(
            "agent", name, NewEvent("ToRunning", transition=("Starting", "Running"))
        )
        res = await env.store.append(
            "agent",
            name,
            NewEvent(
                "Failed",
                {"reason": f"tool crash #{failures + 1}"},
                transition=("Running", "Failed"),
            ),
        )
        failures += 1
        await env.client.wait_for(res.last_seq)
        moved = await until(lambda: _status_is(state, {"Starting", "Terminated"}))
        if not moved or (await state()).state["status"] == "Terminated":
            break
    events = [ev async for ev in env.store.read("agent", name)]
    restarts = [ev for ev in events if ev.type == "RestartScheduled"]
    waits = [
        (r.recorded_at - f.recorded_at).total_seconds()
        for f, r in zip([ev for ev in events if ev.type == "Failed"], restarts, strict=False)
        if r.recorded_at and f.recorded_at
    ]
    node = [ev async for ev in env.store.read("supervisor", f"workers-{env.run}")]
    root = [ev async for ev in env.store.read("supervisor", f"root-{env.run}")]
    final = await state()
    backoffs = [r.data["backoff_ms"] for r in restarts]
    print(
        f"  {failures} failures; restarts after {backoffs} ms (measured "
        f"{[round(w * 1000) for w in waits]} ms); status {final.state['status']}"
    )
    print(
        f"  node workers-{env.run}: {len(node)} failures recorded; root: "
        f"{[ev.type for ev in root]} {root[0].data if root else ''}"
    )
    c = env.checks
    c.check("restarted 3 times with a doubling backoff", backoffs == [50, 100, 200])
    c.check(
        "each restart waited at least its backoff",
        len(waits) == 3 and all(w >= b / 1000 for w, b in zip(waits, backoffs, strict=True)),
    )
    c.check(
        "the 4th failure in the window was escalated, the agent given up",
        failures == 4
        and final.state["status"] == "Terminated"
        and [ev.type for ev in root] == ["Escalated"],
    )
    c.check("the node recorded each restarted failure", len(node) == 3)
    return {
        "failures": failures,
        "backoff_ms": backoffs,
        "escalations": len(root),
        "status": final.state["status"],
        "agent": name,
    }


async def _status_is(state: Callable[[], Awaitable[StateReply]], wanted: set[str]) -> bool:
    return (await state()).state.get("status") in wanted


async def replay(env: Env, name: str) -> dict[str, Any]:
    """The flaky agent's history read back from the log, and its state folded from it."""
    events = [ev async for ev in env.store.read("agent", name)]
    path = ["Created"] + [ev.transition.to for ev in events if ev.transition is not None]
    print("  " + " -> ".join(path))
    folded = await Repository(env.store).load("agent", name)
    served = await env.client.state("agent", name)
    env.checks.check(
        "the replayed fold equals the worker's state",
        (folded.state, folded.version) == (served.state, served.version),
    )
    env.checks.check(
        "the history is the lifecycle with 3 restarts",
        path
        == [
            "Created",
            "Starting",
            *["Running", "Failed", "Starting"] * 3,
            "Running",
            "Failed",
            "Terminated",
        ],
    )
    return {"events": len(events), "path": path}


async def metrics(env: Env, port: int) -> dict[str, float]:
    """The worker's Prometheus endpoint, scraped and parsed once its checkpoint is the head."""
    head = await env.store.head()
    values: dict[str, float] = {}

    async def scraped() -> bool:
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        values.clear()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("projection") in (None, "entities"):
                    values.setdefault(s.name, s.value)
        return values.get("eventstore_checkpoint", 0) >= head

    ok = await until(scraped, timeout=20)
    shown = {
        k: values.get(k, 0.0)
        for k in (
            "eventstore_events_applied_total",
            "eventstore_checkpoint",
            "eventstore_lag_events",
        )
    }
    print(f"  http://127.0.0.1:{port}/metrics: {shown}")
    env.checks.check(
        "the scraped checkpoint reached the head, lag 0", ok and shown["eventstore_lag_events"] == 0
    )
    return shown


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        body: bytes = reply.read()
    return body.decode()


async def migration(env: Env, root: Path) -> dict[str, Any]:
    """Export the whole log, import it into a fresh server, fold it there and verify."""
    with tempfile.TemporaryDirectory(prefix="smith-migrate-") as tmp:
        dump = Path(tmp) / "smith.jsonl"
        with dump.open("wb") as out:
            exported = await export_events(env.store, out)
        fresh = EmbeddedServer(Path(tmp) / "nats", port=free_port())
        await asyncio.to_thread(fresh.start)
        try:
            async with await EventStore.connect(
                fresh.url, producer=f"migrator-{env.run}", stream=env.store.settings
            ) as new:
                with dump.open("rb") as source:
                    imported = await import_events(new, source)
                worker = WorkerProcess(
                    fresh.url,
                    stream=new.settings,
                    directory=Path(tmp),
                    pythonpath=[root],
                )
                async with worker, ProjectionClient(new) as client:
                    moved = await client.state("agent", env.agent("flaky"))
            # verify as ``eventstore verify`` does: a connection of its own, made after the
            # import (it reads the imported rules at connect)
            async with await EventStore.connect(
                fresh.url, producer=f"verifier-{env.run}", stream=env.store.settings
            ) as checker:
                db = await ProjectionDB.open(worker.db, readonly=True)
                try:
                    report = await verify(checker, db, [EntitiesProjection()])
                finally:
                    await db.close()
        finally:
            await asyncio.to_thread(fresh.stop)
    old = await env.client.state("agent", env.agent("flaky"))
    print(
        f"  exported {exported.events}, imported {imported.imported} into {fresh.url}; "
        f"verify: {report.messages} messages, {len(report.mismatches)} mismatches"
    )
    env.checks.check("every exported event was imported", imported.imported == exported.events)
    for m in report.mismatches:
        print(f"  mismatch: {m}")
    env.checks.check("verify is ok on the fresh server", report.ok)
    env.checks.check(
        "the flaky agent has the same state and version there",
        (moved.state, moved.version) == (old.state, old.version),
    )
    return {"exported": exported.events, "imported": imported.imported, "verify_ok": report.ok}
