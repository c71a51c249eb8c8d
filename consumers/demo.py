"""``eventstore demo``: simulated agents publish their lifecycles on a fresh embedded server.

The demo starts nats-server on a free port with a store in a fresh directory, lets three
agents (``asst_qa``, ``asst_ops``, ``ocr_pipeline``) run through the lifecycle
Created → Starting → Running → Processing → Terminated concurrently, each as its own producer
on its own connection, shows the store refusing an invalid transition and a stale write
(version conflict), prints what the log holds, then hands the same log to the projections
part (``consumers.projections_demo``: a worker folds it into SQLite, state now, time travel,
a recorded conflict), shows a subscriber watching the agents live while one more starts
(``consumers.subscriber_demo``) and stops the server.

``demo_environment`` yields the running server and an open store (``Demo``), so that later
parts (projections) can continue on the same log before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from consumers.projections_demo import demo_projections
from consumers.serve import embedded_server
from consumers.subscriber_demo import demo_subscriber
from eventstore import (
    AppendResult,
    EmbeddedServer,
    Event,
    EventStore,
    InvalidTransition,
    MachineTable,
    NewEvent,
    Rules,
    StreamSettings,
    VersionConflict,
    free_port,
)

__all__ = [
    "AGENTS",
    "AGGREGATE_TYPE",
    "Demo",
    "agent_rules",
    "demo_environment",
    "publish_lifecycles",
    "render_table",
    "run_demo",
]

AGGREGATE_TYPE = "agent"
AGENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("asst_qa", {"kind": "assistant", "model": "gpt-4", "realm": "te_po"}),
    ("asst_ops", {"kind": "assistant", "model": "gpt-4", "realm": "te_po"}),
    ("ocr_pipeline", {"kind": "pipeline", "realm": "te_po"}),
)
# (event type, transition) of each step after ``AgentCreated``.
LIFECYCLE: tuple[tuple[str, tuple[str, str]], ...] = (
    ("StartRequested", ("Created", "Starting")),
    ("Started", ("Starting", "Running")),
    ("ProcessingStarted", ("Running", "Processing")),
)
OPERATOR = "operator"
RIVAL = "scheduler"
DEMO_TIMEOUT = 20.0  # seconds; the demo takes about one


def agent_rules() -> Rules:
    """The rules of the demo, stored with its log: the lifecycle of an ``agent``, Created →
    Starting → Running ⇄ Processing → Terminated."""
    lifecycle = MachineTable(
        "Created",
        [
            ("Created", "Starting"),
            ("Starting", "Running"),
            ("Starting", "Terminated"),
            ("Running", "Processing"),
            ("Processing", "Running"),
            ("Processing", "Terminated"),
            ("Running", "Terminated"),
        ],
    )
    return Rules(machines={AGGREGATE_TYPE: lifecycle})


@dataclass
class Demo:
    """A running demo: its server, an open store (producer ``operator``), where it keeps files."""

    server: EmbeddedServer
    store: EventStore
    settings: StreamSettings
    workdir: Path
    out: TextIO

    @property
    def db_path(self) -> Path:
        """Where a projection of the demo keeps its SQLite database."""
        return self.workdir / "eventstore.db"

    def say(self, line: str = "") -> None:
        self.out.write(line + "\n")
        self.out.flush()


@contextlib.asynccontextmanager
async def demo_environment(
    settings: StreamSettings | None = None,
    workdir: Path | None = None,
    out: TextIO | None = None,
) -> AsyncIterator[Demo]:
    """Start a server in ``workdir`` (default: a fresh temp dir, removed afterwards)."""
    settings = settings or StreamSettings()
    keep = workdir is not None
    base = Path(workdir or ".") if keep else Path(tempfile.mkdtemp(prefix="eventstore-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        async with (
            embedded_server(base / "nats", free_port(), settings) as server,
            await EventStore.connect(server.url, producer=OPERATOR, stream=settings) as store,
        ):
            current = store.rules.current
            if current is None or current.rules != agent_rules():  # a kept --dir has them
                await store.set_rules(agent_rules(), comment="the demo's agent lifecycle")
            demo = Demo(server, store, settings, base, out or sys.stdout)
            demo.say(f"embedded nats-server on {server.url} (store {server.store_dir})")
            yield demo
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


async def _agent(
    demo: Demo,
    name: str,
    profile: dict[str, Any],
    reached: asyncio.Event,
    proceed: asyncio.Event,
) -> None:
    """One agent: its own connection and producer name; pauses in Processing until told."""
    async with await EventStore.connect(
        demo.server.url, producer=name, stream=demo.settings
    ) as store:
        await store.append(AGGREGATE_TYPE, name, NewEvent("AgentCreated", data=profile))
        for event_type, step in LIFECYCLE:
            await asyncio.sleep(random.uniform(0, 0.02))
            await store.append(AGGREGATE_TYPE, name, NewEvent(event_type, transition=step))
        reached.set()
        await proceed.wait()
        await store.append(
            AGGREGATE_TYPE,
            name,
            NewEvent("Terminated", transition="Processing:Terminated", data={"reason": "done"}),
        )


async def _version_conflict(demo: Demo, target: str) -> None:
    """Two writers both append to ``target`` expecting the same version: exactly one wins."""
    version = await demo.store.version(AGGREGATE_TYPE, target)
    async with await EventStore.connect(
        demo.server.url, producer=RIVAL, stream=demo.settings
    ) as rival:
        writers = {OPERATOR: demo.store, RIVAL: rival}
        results = await asyncio.gather(
            *(
                s.append(
                    AGGREGATE_TYPE,
                    target,
                    NewEvent("TaskAssigned", data={"task": f"batch from {who}"}),
                    expected_version=version,
                )
                for who, s in writers.items()
            ),
            return_exceptions=True,
        )
    demo.say(f"{' and '.join(writers)} both append to {AGGREGATE_TYPE}/{target} "
             f"expecting version {version}:")  # fmt: skip
    for who, res in zip(writers, results, strict=True):
        if isinstance(res, AppendResult):
            demo.say(f"  {who}: stored as version {res.version} (seq {res.last_seq})")
        elif isinstance(res, VersionConflict):
            demo.say(f"  {who}: refused, VersionConflict: {res}")
        elif isinstance(res, BaseException):
            raise res


async def _invalid_transition(demo: Demo, target: str) -> None:
    """A terminated agent may not start running again: the state machine refuses it."""
    try:
        await demo.store.append(
            AGGREGATE_TYPE, target, NewEvent("Started", transition=("Terminated", "Running"))
        )
    except InvalidTransition as exc:
        demo.say(f"restarting terminated {AGGREGATE_TYPE}/{target}: refused, InvalidTransition: "
                 f"{exc}")  # fmt: skip
    else:
        raise AssertionError("the agent state machine accepted Terminated -> Running")


async def publish_lifecycles(demo: Demo) -> list[Event]:
    """The issue-2 part of the demo; returns every event stored, in log order."""
    names = [name for name, _ in AGENTS]
    demo.say(f"{len(names)} agents publish their lifecycles concurrently: {', '.join(names)}")
    reached = {name: asyncio.Event() for name in names}
    proceed = asyncio.Event()
    agents = [
        asyncio.create_task(_agent(demo, name, profile, reached[name], proceed))
        for name, profile in AGENTS
    ]
    try:
        async with asyncio.timeout(DEMO_TIMEOUT):
            # Once every agent is Processing, race two writers on one of them.
            everyone = asyncio.create_task(_all_set(reached.values()))
            done, _ = await asyncio.wait([everyone, *agents], return_when=asyncio.FIRST_COMPLETED)
            if everyone not in done:
                everyone.cancel()
                for task in done:
                    task.result()  # an agent failed: raise its error
            await _version_conflict(demo, "ocr_pipeline")
            proceed.set()
            await asyncio.gather(*agents)
    finally:
        for task in agents:
            task.cancel()
    await _invalid_transition(demo, "asst_qa")
    events = [ev async for ev in demo.store.read_all()]
    demo.say()
    demo.say(f"the log holds {len(events)} events:")
    demo.say(render_table(events))
    return events


async def _all_set(events: Iterable[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


def render_table(events: Sequence[Event]) -> str:
    """A compact table: seq, aggregate, version, type, transition, producer, lamport."""
    header = ("seq", "aggregate", "ver", "type", "transition", "producer", "lamport")
    rows = [header] + [
        (
            str(ev.seq),
            f"{ev.aggregate_type}/{ev.aggregate_id}",
            str(ev.version),
            ev.type,
            f"{ev.transition.from_} -> {ev.transition.to}" if ev.transition else "-",
            ev.producer,
            str(ev.lamport),
        )
        for ev in events
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = {0, 2, 6}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


async def run_demo(
    settings: StreamSettings | None = None,
    workdir: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """The whole demo; returns the exit code."""
    async with demo_environment(settings, workdir, out) as demo:
        await publish_lifecycles(demo)
        await demo_projections(demo.store, demo.db_path, demo.out)
        await demo_subscriber(demo.server.url, demo.settings, demo.db_path, demo.out)
        demo.say("stopping the server")
    return 0
