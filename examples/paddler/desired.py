"""Paddler's state layers (seed 001) as aggregates, and the projection that serves them.

- ``agent_desired/<agent>``: the *desired* state, written by three sources, each into its
  own layer: ``{"sources": {"api": {...}}}`` by the management API,
  ``{"sources": {"config": {...}}}`` by the configuration file, ``{"sources":
  {"discovery": {...}}}`` by auto-discovery. The projection adds the *applicable* state:
  each field from the highest-priority source that sets it (API > configuration file >
  auto-discovery), and ``origin``, which source that was. A source withdraws a field by
  writing ``null`` to it (JSON Merge Patch), and the next source's value applies again.
- ``agent/<agent>``: the *current* state, the runtime reality the reconciler
  (``examples.paddler.reconciler``) moves toward the applicable state, one event per change.
- ``request/<id>``: the request lifecycle, a state machine stored with the log
  (``rules.toml``): Queued → Routed → Processing → Streaming → Completed, or Failed.

Why layers instead of three writers on one field: priority then does not depend on which
write came last, nor on whether two sources wrote at once: the order of the log only orders
writes of one source. Concurrent writes of different sources touch different paths
(``touches``), so they never conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eventstore import Event
from projections import Projection, merge_patch

__all__ = ["PRODUCERS", "REQUEST_INITIAL", "SOURCES", "PaddlerProjection", "resolve"]

State = dict[str, Any]

REQUEST_INITIAL = "Queued"  # the machine's initial state (rules.toml)
SOURCES = ("api", "config", "discovery")  # highest priority first
PRODUCERS = {"api": "management-api", "config": "config-file", "discovery": "auto-discovery"}


def resolve(sources: Mapping[str, Any]) -> tuple[State, dict[str, str]]:
    """(applicable state, field -> the source it came from) of the desired layers."""
    applicable: State = {}
    origin: dict[str, str] = {}
    for source in reversed(SOURCES):  # the lowest first: a higher one overwrites
        layer = sources.get(source)
        if isinstance(layer, dict):
            for key, value in layer.items():
                applicable[key], origin[key] = value, source
    return dict(sorted(applicable.items())), dict(sorted(origin.items()))


def _paths(patch: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in patch.items():
        if isinstance(value, dict) and value:
            out += _paths(value, (*prefix, key))
        else:
            out.append((*prefix, key))
    return out


class PaddlerProjection(Projection[State]):
    """Desired (with its applicable resolution), current and request states, by merge patch."""

    name = "paddler"
    version = "1"
    aggregate_types = frozenset({"agent_desired", "agent", "request"})

    def apply(self, state: State, event: Event) -> State:
        out: State = merge_patch(state, event.data) if event.data else dict(state)
        if event.transition is not None:
            out["status"] = event.transition.to
        elif event.aggregate_type == "request" and "status" not in out:
            out["status"] = REQUEST_INITIAL  # a request starts in the machine's initial state
        if event.aggregate_type == "agent_desired":
            out["applicable"], out["origin"] = resolve(out.get("sources", {}))
        return out

    def touches(self, event: Event) -> Iterable[tuple[str, ...]]:
        """What the patch writes (``applicable`` is derived from all layers whatever the
        order, so it is not a write of its own)."""
        paths = _paths(event.data)
        if event.transition is not None:
            paths.append(("status",))
        return paths
