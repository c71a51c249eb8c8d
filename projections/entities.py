"""The built-in ``entities`` projection: every aggregate's state as a JSON object, no code needed.

Each event's ``data`` is applied as a JSON Merge Patch (RFC 7386), then a transition sets
``state["status"]`` to its ``to``. Concurrent events are a conflict only when they write
overlapping keys (``touches``). It follows every aggregate type, and it is what the CLI
shows unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from eventstore import Event
from projections.conflicts import Resolver
from projections.mergepatch import merge_patch, patch_paths
from projections.projection import Projection

__all__ = ["EntitiesProjection"]

State = dict[str, Any]


class EntitiesProjection(Projection[State]):
    """State starts as ``{}``; ``data`` merges in; a transition sets ``status``."""

    name = "entities"
    # 2: conflicts only between concurrent events writing overlapping keys; ``status`` from
    # the machine's initial state. Files folded by version 1 are folded again on open.
    version = "2"

    def __init__(self, *, resolver: Resolver | None = None, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        super().__init__(resolver=resolver)

    def initial(self, aggregate_type: str, aggregate_id: str) -> State:
        return {}

    def touches(self, event: Event) -> list[tuple[str, ...]] | None:
        """The keys the patch writes, and ``status`` for a transition: concurrent events that
        write disjoint keys merge the same in either order, so they are no conflict. (A
        subclass with an ``apply`` of its own says so itself, or keeps the default rule.)"""
        if type(self).apply is not EntitiesProjection.apply:
            return None
        paths = patch_paths(event.data) if event.data else []
        if event.transition is not None:
            paths.append(("status",))
        return paths

    def apply(self, state: State, event: Event) -> State:
        out: State = merge_patch(state, event.data) if event.data else state
        if event.transition is not None:
            if out is state:
                out = dict(state)
            out["status"] = event.transition.to
        return out
