"""The subscriber part of ``eventstore demo``: a watch following the agents live.

``demo_subscriber(url, settings, db_path, out)`` runs a worker (``consumers.worker.Worker``,
the object every entry point builds, serving queries and the change feed) on the demo's
database, waits until it has caught up (``ProjectionClient.wait_for``), starts
``ProjectionClient.watch`` on a connection of its own, as an agent on another host would, and
lets a new agent run through its first steps: the watch lines (exactly what ``eventstore
watch agent`` prints) appear between the story's lines, first the current states, then each
change as the worker commits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import msgspec

from consumers.client import ProjectionClient
from consumers.worker import Worker
from eventstore import EventStore, NewEvent, StreamSettings, cancel_and_wait
from projections import EntitiesProjection, StateRecord

__all__ = ["NEWCOMER", "demo_subscriber"]

NEWCOMER = "asst_new"
_json = msgspec.json.Encoder()
_TIMEOUT = 20.0
AGGREGATE_TYPE = "agent"
# The newcomer's first steps (the demo's stored lifecycle allows them).
STEPS = (("StartRequested", ("Created", "Starting")), ("Started", ("Starting", "Running")))
Say = Callable[[str], None]


async def demo_subscriber(
    url: str, settings: StreamSettings, db_path: Path, out: TextIO | None = None
) -> list[StateRecord]:
    """Show a watch following the agents while one more starts; returns what it saw."""
    stream = out or sys.stdout

    def say(line: str = "") -> None:
        stream.write(line + "\n")
        stream.flush()

    stop = asyncio.Event()
    started = asyncio.Event()
    worker = Worker(
        url=url, stream=settings, db=db_path,
        projections=[EntitiesProjection()],
    )  # fmt: skip
    running = asyncio.create_task(worker.run_until(stop, on_ready=lambda _: started.set()))
    seen: list[StateRecord] = []
    try:
        async with asyncio.timeout(_TIMEOUT):
            await _first(started, running)
            say()
            say(f"a subscriber watches every {AGGREGATE_TYPE} (eventstore watch "
                     f"{AGGREGATE_TYPE}): current states first, then each change")  # fmt: skip
            async with await ProjectionClient.connect(url, stream=settings.name) as client:
                if worker.store is not None:
                    await client.wait_for(await worker.store.head(), timeout=_TIMEOUT)
                await _follow(say, client, seen, url, settings)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await running
    return seen


async def _first(started: asyncio.Event, running: asyncio.Task[int]) -> None:
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({waiting, running}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        await running  # raises why the worker stopped


async def _follow(
    say: Say, client: ProjectionClient, seen: list[StateRecord], url: str, settings: StreamSettings
) -> None:
    done, listed = asyncio.Event(), asyncio.Event()
    last = len(STEPS) + 1

    async def watch() -> None:
        async for change in client.watch(aggregate_type=AGGREGATE_TYPE):
            seen.append(change)
            if len(seen) == 3:  # the three agents of the story, listed
                listed.set()
            say("  watch> " + _json.encode(change).decode())
            if change.aggregate_id == NEWCOMER and change.version == last:
                done.set()

    task = asyncio.create_task(watch())
    try:
        waiting = asyncio.create_task(listed.wait())
        await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            task.result()  # the watch failed: raise why
        say(f"{NEWCOMER} joins and starts: the subscriber sees each step as it commits")
        async with await EventStore.connect(url, producer=NEWCOMER, stream=settings) as agent:
            created = NewEvent("AgentCreated", {"kind": "assistant"})
            await agent.append(AGGREGATE_TYPE, NEWCOMER, created)
            for event_type, step in STEPS:
                await agent.append(AGGREGATE_TYPE, NEWCOMER, NewEvent(event_type, transition=step))
                await asyncio.sleep(0.05)  # one commit, one notification, at a time
        waiting = asyncio.create_task(done.wait())
        await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            task.result()  # the watch failed: raise why
    finally:
        await cancel_and_wait(task)
