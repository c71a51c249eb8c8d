"""The built-in ``entities`` projection: every aggregate's state as a JSON object, no code needed.

Each event's ``data`` is applied as a JSON Merge Patch (RFC 7386), then a transition sets
``state["status"]`` to its ``to``. It follows every aggregate type, and it is what the CLI
shows unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from eventstore import Event
from projections.conflicts import Resolver
from projections.mergepatch import merge_patch
from projections.projection import Projection

__all__ = ["EntitiesProjection"]

State = dict[str, Any]


class EntitiesProjection(Projection[State]):
    """State starts as ``{}``; ``data`` merges in; a transition sets ``status``."""

    name = "entities"
    version = "1"

    def __init__(self, *, resolver: Resolver | None = None, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        super().__init__(resolver=resolver)

    def initial(self, aggregate_type: str, aggregate_id: str) -> State:
        return {}

    def apply(self, state: State, event: Event) -> State:
        out: State = merge_patch(state, event.data) if event.data else state
        if event.transition is not None:
            if out is state:
                out = dict(state)
            out["status"] = event.transition.to
        return out
