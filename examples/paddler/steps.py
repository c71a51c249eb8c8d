"""The steps of the paddler example: each prints what it shows, checks what it claims
(``Checks``) and returns its figures for the final JSON line."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from pathlib import Path
from typing import Any

from consumers import ProjectionClient, WorkerProcess
from eventstore import AggregateNotFound, EventStore, InvalidTransition, NewEvent
from examples._shell import Checks
from examples.paddler.desired import PRODUCERS, PaddlerProjection
from examples.paddler.reconciler import model_ref
from projections import Point, TimeTravel

__all__ = [
    "converged",
    "desired_sources",
    "re_reconcile",
    "request_diff",
    "request_lifecycle",
    "state_dump",
]

CONFIG = Path(__file__).with_name("paddler.toml")
LLAMA3 = {"source": "huggingface", "model_id": "meta-llama/Llama-3-8B", "revision": "main"}


def heading(text: str) -> None:
    print(f"\n== {text}")


async def set_desired(url: str, s: EventStore, source: str, agent: str, layer: Any) -> int:
    """One source writes its layer of an agent's desired state, on a connection of its own
    (its producer name is what it is: management-api, config-file, auto-discovery)."""
    async with await EventStore.connect(url, producer=PRODUCERS[source], stream=s.settings) as w:
        event = NewEvent("DesiredStateSet", {"sources": {source: layer}})
        return (await w.append("agent_desired", agent, event)).last_seq


async def converged(
    client: ProjectionClient, agent: str, since: int, timeout: float = 60.0
) -> bool:
    """Wait until the agent's current state matches its applicable desired state as of the
    desired write at stream sequence ``since`` (read your writes: ``min_seq``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await client.state("agent_desired", agent, min_seq=since)
        desired = reply.state["applicable"]
        try:
            current = (await client.state("agent", agent)).state
        except AggregateNotFound:  # the reconciler has not made its first step yet
            current = {}
        if (
            current.get("model") == model_ref(desired.get("desired_model"))
            and current.get("slots") == desired.get("slots")
            and current.get("max_context_length") == desired.get("max_context_length")
        ):
            return True
        await asyncio.sleep(0.1)
    return False


async def desired_sources(url: str, s: EventStore, client: ProjectionClient, checks: Checks) -> Any:
    heading("1. desired state from three sources: management API > configuration file > discovery")
    config = {a.pop("id"): a for a in tomllib.loads(CONFIG.read_text())["agents"]}
    found = {
        "agent-1": {"slots": 8, "max_context_length": 8192, "endpoint": "10.0.0.11:8080"},
        "agent-2": {"slots": 1, "endpoint": "10.0.0.12:8080"},
    }
    writes = [set_desired(url, s, "discovery", a, layer) for a, layer in found.items()]
    writes += [set_desired(url, s, "config", a, layer) for a, layer in config.items()]
    writes.append(set_desired(url, s, "api", "agent-1", {"slots": 6}))
    last = max(await asyncio.gather(*writes))  # all at once: the order must not matter
    reply = await client.state("agent_desired", "agent-1", min_seq=last)
    print("  agent-1 applicable:", json.dumps(reply.state["applicable"]))
    print("  agent-1 origin:    ", json.dumps(reply.state["origin"]))
    want_origin = {
        "desired_model": "config",
        "endpoint": "discovery",
        "max_context_length": "config",
        "slots": "api",
    }
    checks.check(
        "each field comes from the highest-priority source that sets it",
        reply.state["origin"] == want_origin and reply.state["applicable"]["slots"] == 6,
    )
    ok = all([await converged(client, "agent-1", last), await converged(client, "agent-2", last)])
    checks.check("the reconciler brought both agents' current state to the applicable one", ok)
    return {"origin": reply.state["origin"], "applicable": reply.state["applicable"]}


async def re_reconcile(
    url: str, s: EventStore, client: ProjectionClient, worker: WorkerProcess, checks: Checks
) -> Any:
    heading("2. re-run on change: the API overrides the model (worker SIGKILLed), then withdraws")
    seq = await set_desired(url, s, "api", "agent-1", {"desired_model": LLAMA3})
    worker.kill()
    await worker.start()
    print(f"  API set agent-1's model to Llama-3; worker SIGKILLed, restarted as pid {worker.pid}")
    ok_llama = await converged(client, "agent-1", seq)
    llama = (await client.state("agent", "agent-1")).state["model"]
    seq = await set_desired(url, s, "api", "agent-1", {"desired_model": None, "slots": None})
    print("  API withdrew its overrides: the configuration file's values apply again")
    ok_back = await converged(client, "agent-1", seq)
    now = (await client.state("agent", "agent-1")).state
    loads = [e.data["model"] async for e in s.read("agent", "agent-1") if e.type == "ModelLoaded"]
    print(f"  agent-1 models loaded, in order: {loads}")
    checks.check("current followed the change to Llama-3", ok_llama and "Llama-3" in llama)
    checks.check(
        "and came back to the config file's model and slots when the API withdrew",
        ok_back and "DialoGPT" in now["model"] and now["slots"] == 4,
    )
    checks.check(
        "each model change was applied exactly once (SIGKILL and period included)",
        len(loads) == 3 and len(set(loads)) == 2,
    )
    return {"models_loaded": loads, "current": now}


class Request:
    """One inference request walking the machine, appended at the version it last saw."""

    def __init__(self, s: EventStore, rid: str) -> None:
        self.s, self.rid, self.version, self.last_seq = s, rid, 0, 0

    async def step(self, kind: str, data: Any = None, transition: str | None = None) -> None:
        res = await self.s.append(
            "request",
            self.rid,
            NewEvent(kind, data or {}, transition=transition),
            expected_version=self.version,
        )
        self.version, self.last_seq = res.version, res.last_seq


async def request_lifecycle(s: EventStore, client: ProjectionClient, checks: Checks) -> Any:
    heading("3. the request lifecycle: Queued -> Routed -> Processing -> Streaming -> Completed")
    agents = {
        p.aggregate_id: p.state["model"] for p in (await client.query(aggregate_type="agent")).items
    }
    plans = {
        "r1": ("DialoGPT", "done"),
        "r2": ("llama-7b", "done"),
        "r3": ("DialoGPT", "error"),
        "r4": ("llama-7b", "unavailable"),
    }
    requests = {}
    for rid, (model, outcome) in plans.items():
        r = requests[rid] = Request(s, rid)
        await r.step("Queued", {"model": model, "prompt_tokens": 42})
        agent = next(a for a, m in sorted(agents.items()) if model in m)
        await r.step("AgentSelected", {"agent": agent, "slot": 0}, "Queued:Routed")
        if outcome == "unavailable":
            await r.step("AgentUnavailable", {"error": f"{agent} did not answer"}, "Routed:Failed")
            continue
        await r.step("SentToAgent", {}, "Routed:Processing")
        if outcome == "error":
            await r.step("ErrorOccurred", {"error": "CUDA out of memory"}, "Processing:Failed")
            continue
        await r.step("GenerationStarted", {"tokens": 0}, "Processing:Streaming")
        for n in (16, 32, 48):
            await r.step("TokensStreamed", {"tokens": n})
        await r.step(
            "GenerationDone", {"tokens": 57, "finish_reason": "stop"}, "Streaming:Completed"
        )
    refused = []
    r5 = requests["r5"] = Request(s, "r5")
    await r5.step("Queued", {"model": "DialoGPT"})
    for r, kind, transition in (
        (requests["r1"], "GenerationStarted", "Completed:Streaming"),
        (r5, "SentToAgent", "Queued:Processing"),
    ):
        try:
            await r.step(kind, {}, transition)
        except InvalidTransition as exc:
            refused.append(transition)
            print(f"  refused: {exc}")
    last = max(r.last_seq for r in requests.values())
    page = await client.query(aggregate_type="request", min_seq=last)
    statuses = {p.aggregate_id: p.state["status"] for p in page.items}
    print(f"  statuses: {statuses}")
    want = {"r1": "Completed", "r2": "Completed", "r3": "Failed", "r4": "Failed", "r5": "Queued"}
    checks.check("every request ended where its path leads", statuses == want, str(statuses))
    stored = [e.version async for e in s.read("request", "r1")]
    checks.check(
        "invalid transitions are refused and store nothing",
        refused == ["Completed:Streaming", "Queued:Processing"]
        and stored == list(range(1, requests["r1"].version + 1)),
    )
    return {"statuses": statuses, "refused": refused, "last_seq": last}


async def state_dump(client: ProjectionClient, checks: Checks, head: int) -> Any:
    heading("4. the state dump API, answered by the query service")
    dump: dict[str, Any] = {"desired": {}, "applicable": {}, "current": {}, "requests": {}}
    checkpoint = 0
    for kind in ("agent_desired", "agent", "request"):
        async for page in client.query_all(aggregate_type=kind, min_seq=head):
            checkpoint = max(checkpoint, page.checkpoint)
            for item in page.items:
                if kind == "agent_desired":
                    dump["desired"][item.aggregate_id] = item.state["sources"]
                    dump["applicable"][item.aggregate_id] = item.state["applicable"]
                elif kind == "agent":
                    dump["current"][item.aggregate_id] = item.state
                else:
                    dump["requests"][item.aggregate_id] = item.state["status"]
    for section, content in dump.items():
        print(f"  {section}: {json.dumps(content)}")
    agree = all(
        dump["current"][a]["model"] == model_ref(app.get("desired_model"))
        and dump["current"][a].get("slots") == app.get("slots")
        for a, app in dump["applicable"].items()
    )
    checks.check(
        "the dump shows desired, applicable and current, and current = applicable",
        agree and set(dump["current"]) == {"agent-1", "agent-2"},
    )
    checks.check("the dump is as of a checkpoint at or past everything written", checkpoint >= head)
    return {
        "checkpoint": checkpoint,
        "agents": len(dump["current"]),
        "requests": len(dump["requests"]),
    }


async def request_diff(s: EventStore, checks: Checks) -> Any:
    heading("5. a diff between two points of a request's life: Routed (v2) and now")
    d = await TimeTravel(s, PaddlerProjection()).diff("request", "r1", Point(version=2), Point())
    for c in d.changes:
        print(f"  {'.'.join(c.path)}: {c.op} {json.dumps(c.old)} -> {json.dumps(c.new)}")
    print(f"  through {[e.type for e in d.events]}")
    status = next((c for c in d.changes if c.path == ["status"]), None)
    checks.check(
        "the diff shows Routed -> Completed and the tokens, through 6 events",
        status is not None
        and (status.old, status.new) == ("Routed", "Completed")
        and len(d.events) == 6,
    )
    return {"changes": len(d.changes), "events": len(d.events)}
