"""Reconcilers: bring a current state toward a desired state, one step per change, run once.

The shape of a desired-state/current-state loop (seed 001): the *desired* state is one
aggregate (or a config), the *current* state another aggregate with the same id; ``diff``
compares them and returns the events that move current toward desired. A ``Reconciler`` is a
``Reactor`` (``consumers.reactors``): exactly one instance is active across workers, it runs on
every event of either aggregate type, and every ``period`` seconds over every desired
aggregate, so a step lost to a crash or refused by a concurrent change is taken again.

Each step is appended with ``expected_version`` = the current aggregate's version it was
computed from, and with ids derived from that version: two reconciles of the same current
state (a retry, a takeover, the period and an event at once) are the same append, stored once,
and a step computed from a state that moved on is refused and recomputed from the new one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from msgspec.structs import replace

from consumers.reactors import Reactor, reaction_id
from eventstore import AppendRequest, ConfigError, Event, EventStore, NewEvent
from projections import merge_patch

__all__ = ["Reconciler", "fold_data"]


async def fold_data(store: EventStore, aggregate_type: str, aggregate_id: str) -> tuple[Any, int]:
    """(state, version) of an aggregate folded the way the built-in ``entities`` projection
    does: each event's ``data`` merge-patched in, ``status`` = its transition's target."""
    state: dict[str, Any] = {}
    version = 0
    async for ev in store.read(aggregate_type, aggregate_id):
        state = merge_patch(state, ev.data)
        if ev.transition is not None:
            state = {**state, "status": ev.transition.to}
        version = ev.version
    return state, version


class Reconciler(Reactor):
    """Subclass it: ``name``, ``desired_type``, ``current_type``, and ``diff``."""

    desired_type: ClassVar[str] = ""
    current_type: ClassVar[str] = ""
    period: ClassVar[float] = 30.0

    def wants(self, event: Event) -> bool:
        return event.aggregate_type in (self.desired_type, self.current_type)

    def diff(self, aggregate_id: str, desired: Any, current: Any) -> list[NewEvent]:
        """The events that move ``current`` toward ``desired`` (none: they agree). Called
        again after each step is stored, so returning one step at a time is enough."""
        raise NotImplementedError

    async def react(self, event: Event) -> list[AppendRequest]:
        return (await self.reconcile(event.aggregate_id))[1]

    async def reconcile(self, aggregate_id: str) -> tuple[str, list[AppendRequest]]:
        """(key, appends) of one reconcile; the key names the current state it started from."""
        if self.store is None:
            raise ConfigError("a reconciler runs on a store: start it with ReactorRunner")
        desired, _ = await fold_data(self.store, self.desired_type, aggregate_id)
        current, version = await fold_data(self.store, self.current_type, aggregate_id)
        key = f"{self.current_type}/{aggregate_id}@{version}"
        if not desired:
            return key, []
        steps = self.diff(aggregate_id, desired, current)
        events = [
            e if e.id is not None else replace(e, id=self._id(key, i)) for i, e in enumerate(steps)
        ]
        if not events:
            return key, []
        step = AppendRequest(self.current_type, aggregate_id, events, expected_version=version)
        return key, [step]

    def _id(self, key: str, i: int) -> str:
        """Event ``i`` of the step from the current state ``key``: the same on every retry."""
        return reaction_id(self.name, key, 0, i)

    async def on_period(self) -> list[tuple[str, list[AppendRequest]]]:
        if self.store is None:
            return []
        ids = {e.aggregate_id async for e in self.store.read_all(aggregate_type=self.desired_type)}
        return [await self.reconcile(i) for i in sorted(ids)]
