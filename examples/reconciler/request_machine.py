"""Worked example: the inference-request state machine of seed 001, reconciled.

Desired state: a ``request_spec`` aggregate (what a client asked for: a model, and optionally
``"fail": "reason"`` to simulate an agent error). Current state: the ``request`` aggregate of
the same id, walking the machine one step per event::

    Queued -> Routed -> Processing -> Streaming -> Completed
                 \\-> Failed      \\-> Failed

``diff`` looks at the current status and returns the next step (routing picks an agent from
the model name); each step appended triggers the next reconcile, and the period re-runs every
request, so a step lost to a crash or a takeover is taken again, and stored once.

Run it beside the projections::

    PYTHONPATH=examples/reconciler eventstore worker --reactor request_machine:RequestReconciler
    eventstore publish request_spec r1 Submitted --data '{"model": "llama-3"}'
    eventstore state request r1          # ... "status": "Completed", "agent": "agent-..."
"""

from __future__ import annotations

import zlib
from typing import Any

from consumers import Reconciler
from eventstore import NewEvent

AGENTS = ("agent-a", "agent-b", "agent-c")


class RequestReconciler(Reconciler):
    name = "requests"
    desired_type = "request_spec"
    current_type = "request"
    lease_ttl = 5.0
    period = 10.0

    def diff(self, aggregate_id: str, desired: Any, current: Any) -> list[NewEvent]:
        status = current.get("status")
        fail = desired.get("fail")
        if status is None:
            return [
                NewEvent("Queued", {"model": desired.get("model")}, transition=("New", "Queued"))
            ]
        if status == "Queued":
            agent = AGENTS[zlib.crc32(str(desired.get("model")).encode()) % len(AGENTS)]
            return [NewEvent("Routed", {"agent": agent}, transition=("Queued", "Routed"))]
        if status == "Routed":
            return [NewEvent("Sent", transition=("Routed", "Processing"))]
        if status == "Processing" and fail:
            return [NewEvent("Errored", {"error": fail}, transition=("Processing", "Failed"))]
        if status == "Processing":
            return [NewEvent("GenerationStarted", transition=("Processing", "Streaming"))]
        if status == "Streaming":
            return [NewEvent("GenerationDone", transition=("Streaming", "Completed"))]
        return []  # Completed or Failed: nothing left to do
