"""The Awa Network's realm state files (seed 000) as aggregates of type ``realm``.

A realm's current state is the seed's JSON document itself (``te_po_state.json``,
``te_hau_state.json``): ``version``, ``realm``, ``timestamp``, ``status`` and the realm's
components. Every change is one event whose ``data`` is a carving-log entry (the seed's
``te_po_carving_log.jsonl`` line: ``operation``, ``details``, ``status``, ``error``,
``duration_ms``) plus ``state``, a JSON Merge Patch of the document. The event's type is the
carving ``event_type`` and its producer the guardian process, so the log *is* the carving log
and the state file is its fold: nothing is written twice, and nothing can disagree.

``RealmProjection`` folds the patches. Two agents that update one realm without having seen
each other's write (their vector clocks are concurrent) conflict only when their patches
touch the same path (``touches``); the resolver stored with the log (``lww`` in
``rules.toml``) then decides, the same way on every replay. ``timestamp`` is the latest
recorded time of an event applied, so it does not depend on the order either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from eventstore import Event
from projections import Projection, merge_patch

__all__ = [
    "STALE_AFTER",
    "RealmProjection",
    "carving_entry",
    "patch_paths",
    "seed_state",
    "shape",
    "stale_components",
]

State = dict[str, Any]

STALE_AFTER = timedelta(minutes=5)  # the seed: "If stale (>5 min), fetch fresh from source"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def seed_state(realm: str, now: datetime) -> State:
    """The seed's state document of ``realm`` (without ``version``, ``realm`` and
    ``timestamp``, which the projection writes), with its ``...`` filled in relative to
    ``now``: the vector store was last synced two hours ago, so it starts stale."""
    if realm == "te_po":
        return {
            "status": "healthy",
            "assistants": {
                "asst_qa": {"status": "active", "model": "gpt-4", "last_sync": _iso(now)},
                "asst_ops": {"status": "active", "model": "gpt-4", "last_sync": _iso(now)},
            },
            "pipelines": {
                "ocr_pipeline": {
                    "status": "idle",
                    "last_run": _iso(now - timedelta(hours=1)),
                    "next_run": _iso(now + timedelta(hours=1)),
                },
                "vector_sync": {
                    "status": "idle",
                    "progress": 0.65,
                    "started": _iso(now - timedelta(minutes=1)),
                },
            },
            "vector_store": {
                "id": "vs_awa",
                "document_count": 1234,
                "last_sync": _iso(now - timedelta(hours=2)),
            },
            "database": {"status": "connected", "pool_size": 10, "active_connections": 3},
        }
    if realm == "te_hau":
        return {
            "status": "healthy",
            "cli_status": "ready",
            "workers": {
                "worker_1": {
                    "status": "idle",
                    "last_task": "daily_sync",
                    "next_scheduled": _iso(now + timedelta(hours=6)),
                },
            },
            "scheduled_tasks": [
                {
                    "name": "daily_sync",
                    "next_run": _iso(now + timedelta(hours=6)),
                    "status": "scheduled",
                },
            ],
        }
    raise ValueError(f"the seed describes no realm {realm!r} here (te_po, te_hau)")


def patch_paths(
    patch: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """The key paths a merge patch writes (its leaves; an empty object or a list is a leaf)."""
    for key, value in patch.items():
        if isinstance(value, dict) and value:
            yield from patch_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


class RealmProjection(Projection[State]):
    """``realm`` aggregates folded into the seed's state document."""

    name = "realms"
    version = "1"
    aggregate_types = frozenset({"realm"})

    def initial(self, aggregate_type: str, aggregate_id: str) -> State:
        return {"version": "1.0", "realm": aggregate_id}

    def apply(self, state: State, event: Event) -> State:
        patch = event.data.get("state")
        if patch is not None and not isinstance(patch, dict):
            raise ValueError(f"{event.type}: data.state must be a JSON object (a merge patch)")
        out: State = merge_patch(state, patch) if patch else dict(state)
        out["version"], out["realm"] = "1.0", event.aggregate_id  # never patched away
        if event.recorded_at is not None:
            stamp = _iso(event.recorded_at)
            out["timestamp"] = max(stamp, state.get("timestamp", stamp))
        return out

    def touches(self, event: Event) -> Iterable[tuple[str, ...]] | None:
        patch = event.data.get("state")
        return list(patch_paths(patch)) if isinstance(patch, dict) else []


def shape(value: Any) -> Any:
    """The JSON shape of a document: its keys, with the JSON type of each leaf."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def stale_components(
    state: Mapping[str, Any], now: datetime, threshold: timedelta = STALE_AFTER
) -> list[str]:
    """The dotted paths of every component whose ``last_sync`` is older than ``threshold``."""
    found: list[str] = []

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        sync = node.get("last_sync")
        if isinstance(sync, str):
            when = datetime.fromisoformat(sync.replace("Z", "+00:00"))
            if now - when > threshold:
                found.append(".".join(path))
        for key, child in sorted(node.items()):
            if isinstance(child, dict):
                walk(child, (*path, key))

    walk(state, ())
    return found


def carving_entry(line: Mapping[str, Any]) -> dict[str, Any]:
    """A line of ``eventstore export realm <realm>`` in the seed's carving-log shape."""
    data = line.get("data", {})
    return {
        "timestamp": line.get("recorded_at"),
        "event_type": line.get("type"),
        "guardian": line.get("metadata", {}).get("guardian", line.get("producer")),
        "realm": line.get("aggregate_id"),
        "operation": data.get("operation"),
        "details": data.get("details", {}),
        "status": data.get("status", "success"),
        "error": data.get("error"),
        "duration_ms": data.get("duration_ms", 0),
    }
