"""Fencing: a projection refuses the work of a lease holder that lost its lease.

An event appended under a lease (``EventStore.append(..., lease=)``) carries
``metadata["lease"] = {"name": ..., "token": ...}``; tokens strictly increase with every grant
of a name (``eventstore.leases``). Per aggregate, the fold remembers the highest token applied
for each lease; an event whose token is lower is quarantined with the reason ``fenced`` and not
applied (the aggregate moves past its version unchanged), so a paused old holder that wakes up
cannot overwrite the new holder's work. The decision depends on the aggregate's own history
only, so the runner, time travel and ``verify`` decide alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from eventstore import Event

__all__ = ["fence"]


class _Position(Protocol):
    """What fencing reads and moves of an ``AggregateState`` (``projections.fold``)."""

    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    recorded_at: datetime | None
    fences: dict[str, int] | None


def fence(agg: _Position, event: Event) -> str | None:
    """Why ``event`` is fenced off (``agg`` then moves past it), or None (its token, if any, is
    now the highest applied for its lease)."""
    stamp = event.metadata.get("lease") if event.metadata else None
    if not isinstance(stamp, dict):
        return None
    name, token = stamp.get("name"), stamp.get("token")
    if type(name) is not str or type(token) is not int:
        return None
    highest = (agg.fences or {}).get(name, 0)
    if token >= highest:
        if token > highest:
            agg.fences = {**(agg.fences or {}), name: token}
        return None
    agg.version, agg.seq, agg.recorded_at = event.version, event.seq, event.recorded_at
    return (
        f"lease {name!r} token {token} is older than token {highest} already applied "
        f"to {agg.aggregate_type}/{agg.aggregate_id} (its holder lost the lease)"
    )
