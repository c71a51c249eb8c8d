"""The reconciliation engine of seed 001: brings each agent's current state toward its
applicable desired state, re-run on every change of either, and every two seconds.

``eventstore worker --reactor examples.paddler.reconciler:AgentReconciler`` runs it beside the
projections (the example does). It is a ``consumers.Reconciler``: exactly one instance is
active across workers (a lease), each step is appended at the current version it was computed
from with ids derived from that version, so a step retried after a crash, a takeover or the
period reconciling the same state is stored once.
"""

from __future__ import annotations

from typing import Any

from consumers import Reconciler
from eventstore import NewEvent
from examples.paddler.desired import resolve

__all__ = ["AgentReconciler", "model_ref"]


def model_ref(model: Any) -> str | None:
    """A desired model as the one string an agent reports it loaded."""
    if not isinstance(model, dict):
        return None
    where = model.get("model_id") or model.get("path")
    revision = f"@{model['revision']}" if model.get("revision") else ""
    return f"{model.get('source')}:{where}{revision}"


class AgentReconciler(Reconciler):
    name = "paddler-agents"
    desired_type = "agent_desired"
    current_type = "agent"
    lease_ttl = 2.0  # a standby takes over two seconds after the active worker dies
    period = 2.0  # and the whole desired state is reconciled every two seconds

    def diff(self, aggregate_id: str, desired: Any, current: Any) -> list[NewEvent]:
        applicable, _ = resolve(desired.get("sources", {}))
        steps: list[NewEvent] = []
        model = model_ref(applicable.get("desired_model"))
        if model != current.get("model"):
            steps.append(NewEvent("ModelLoaded", {"model": model, "status": "ready"}))
        for key, event in (("slots", "SlotsResized"), ("max_context_length", "ContextSet")):
            if applicable.get(key) != current.get(key):
                steps.append(NewEvent(event, {key: applicable.get(key)}))
        return steps
