"""A reactor for the crash tests: every ``Ordered`` gets one ``Shipped`` on ``shipment/<id>``."""

from __future__ import annotations

from consumers import Reactor
from eventstore import AppendRequest, Event, NewEvent


class Shipper(Reactor):
    name = "shipper"
    handles = frozenset({"Ordered"})
    lease_ttl = 1.0  # fast takeovers: the test kills the active worker twenty times

    def react(self, event: Event) -> list[AppendRequest]:
        shipped = NewEvent("Shipped", {"order": event.aggregate_id})
        return [AppendRequest("shipment", event.aggregate_id, [shipped])]


class AsyncShipper(Shipper):
    name = "async-shipper"

    async def react(self, event: Event) -> list[AppendRequest]:  # type: ignore[override]
        return Shipper.react(self, event)
