"""The supervision tree of seed 003 as a reactor: a root node supervises the node
``workers``, which supervises the agents (an agent's ``Created`` event names both, the
``supervisor`` and ``root`` of its data).

On an agent's ``Failed`` event the supervisor counts the agent's failures within ``WINDOW``
seconds of recorded time, read from the agent's own history up to the trigger (so a retry of
the same trigger decides the same). Up to ``MAX_RESTARTS`` it waits the backoff (``BASE_BACKOFF``
doubled per failure) and restarts the agent (Failed -> Starting), recording the failure on
its node; after that it gives the agent up (Failed -> Terminated) and escalates to ``root``.
Every restart expects the version it was decided on, so a restart that races the agent is
refused and dropped, never applied twice; the worker's reactor runner makes the effect
exactly once across crashes and takeovers.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from consumers import Reactor
from eventstore import AppendRequest, Event, NewEvent

__all__ = ["BASE_BACKOFF", "MAX_RESTARTS", "NODE", "ROOT", "WINDOW", "Supervisor", "backoff"]

NODE = "workers"  # the supervisor node of every agent here
ROOT = "root"  # the node ``workers`` escalates to
WINDOW = 60.0  # seconds: failures older than this do not count
MAX_RESTARTS = 3  # restarts within the window before the agent is given up
BASE_BACKOFF = 0.05  # seconds before the first restart; doubled for each later one


def backoff(failures: int) -> float:
    """Seconds to wait before restart number ``failures`` (1, 2, ...)."""
    return BASE_BACKOFF * float(2 ** (failures - 1))


class Supervisor(Reactor):
    name = "smith-supervisor"
    handles = frozenset({"Failed"})
    lease_ttl = 5.0

    async def react(self, event: Event) -> list[AppendRequest]:
        if event.aggregate_type != "agent" or self.store is None or event.recorded_at is None:
            return []
        since = event.recorded_at - timedelta(seconds=WINDOW)
        failures, node, root = 0, NODE, ROOT
        async for ev in self.store.read("agent", event.aggregate_id, to_version=event.version):
            if ev.version == 1:  # the agent's place in the tree, given when it was created
                node = str(ev.data.get("supervisor", NODE))
                root = str(ev.data.get("root", ROOT))
            if ev.type == "Failed" and ev.recorded_at is not None and ev.recorded_at >= since:
                failures += 1
        record = {"agent": event.aggregate_id, "failures": failures,
                  "reason": event.data.get("reason")}  # fmt: skip
        if failures <= MAX_RESTARTS:
            wait = backoff(failures)
            await asyncio.sleep(wait)
            return [
                AppendRequest("agent", event.aggregate_id, [NewEvent(
                    "RestartScheduled", {"restarts": failures, "backoff_ms": round(wait * 1000)},
                    transition=("Failed", "Starting"))], expected_version=event.version),
                AppendRequest("supervisor", node, [NewEvent("FailureRecorded", record)]),
            ]  # fmt: skip
        return [
            AppendRequest("agent", event.aggregate_id, [NewEvent(
                "GaveUp", {"failures": failures}, transition=("Failed", "Terminated"))],
                expected_version=event.version),
            AppendRequest("supervisor", root, [NewEvent("Escalated", {**record, "node": node})]),
        ]  # fmt: skip
