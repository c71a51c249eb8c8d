"""The projections part of ``eventstore demo``: state now, state in the past, a conflict.

``demo_projections(store, db_path)`` continues on the demo's log: two writers change one
aggregate without reading each other (a conflict by the vector-clock rule), a worker folds the
whole log into SQLite, and the demo prints an aggregate's state now, the same aggregate at an
earlier version (snapshot + replay), and the recorded conflict.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import msgspec

from eventstore import EventStore, NewEvent
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    TimeTravel,
    list_aggregates,
    list_conflicts,
)

__all__ = ["CONFLICT_AGGREGATE", "demo_projections"]

CONFLICT_AGGREGATE = ("config", "te_po")
RIVAL = "night-shift"
_json = msgspec.json.Encoder()


def _show(value: object) -> str:
    return _json.encode(msgspec.to_builtins(value)).decode()


async def demo_projections(
    store: EventStore, db_path: str | Path, out: TextIO | None = None
) -> None:
    """Run a worker to catch-up on ``store``'s log and show what the projection answers."""
    say = (out or sys.stdout).write
    aggregate_type, aggregate_id = CONFLICT_AGGREGATE
    key = (aggregate_type, aggregate_id)
    await store.append(*key, NewEvent("ConfigSet", {"model": "gpt-4", "temp": 0.7}))
    await store.append(*key, NewEvent("ConfigSet", {"model": "gpt-4", "temp": 0.2}))
    async with await EventStore.connect(store.url, producer=RIVAL, stream=store.settings) as rival:
        # The rival never read the config: its clock is concurrent with the last change, and
        # it writes a key that change wrote too (model): a conflict.
        await rival.append(*key, NewEvent("ConfigSet", {"model": "gpt-4o"}))
    projection = EntitiesProjection()
    async with await ProjectionDB.open(db_path) as db:
        runner = Runner(store, db, [projection])
        checkpoint = await runner.catch_up()
        say(f"\nprojection worker folded the log into {db_path} (checkpoint seq {checkpoint})\n")
        tt = TimeTravel(store, projection, db)
        first = await list_aggregates(db, projection.name, "agent", limit=1)
        shown = first[0] if first else CONFLICT_AGGREGATE
        now = await tt.current(*shown)
        say(f"state now      {shown[0]}/{shown[1]} v{now.version}: {_show(now.state)}\n")
        past = await tt.state_at(*shown, version=max(1, now.version - 2))
        snap = (
            f"from the snapshot at version {past.snapshot_version}"
            if past.snapshot_version
            else "no snapshot that early"
        )
        say(
            f"time travel    {shown[0]}/{shown[1]} at version {past.version}: "
            f"{_show(past.state)} ({snap}, {past.replayed} events replayed from the log)\n"
        )
        for c in await list_conflicts(db, projection.name, *key):
            say(
                f"conflict       {c.aggregate_type}/{c.aggregate_id} v{c.version}: "
                f"{c.event_producer} {_show(c.event_vclock)} concurrent with "
                f"{c.previous_producer} {_show(c.previous_vclock)}; {c.resolver}: {c.winner} "
                "wins\n"
            )
        final = await tt.current(*key)
        say(f"state now      {aggregate_type}/{aggregate_id} v{final.version}: "
            f"{_show(final.state)}\n")  # fmt: skip
    (out or sys.stdout).flush()
