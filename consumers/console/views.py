"""What each page shows, as plain JSON-able data: the HTML pages render it, ``?format=json``
returns it as it is (so the console is scriptable with the same numbers a person sees).

Every read goes through the query service (``ProjectionClient``) or the log's public reader
(``EventStore``); a point in time travel is the worker's own ``state`` at that version or
time, so the slider shows exactly what ``eventstore state TYPE ID --version V`` prints.
"""

from __future__ import annotations

import argparse
import itertools
from datetime import datetime
from typing import Any

import msgspec

from consumers.cli_serving import where_item
from consumers.console.backend import Backend
from consumers.console.settings import is_loopback
from eventstore import (
    MAX_INT,
    InvalidRequest,
    Malformed,
    VectorClock,
    validate_aggregate_type,
)
from projections import MAX_LIMIT, Scalar

__all__ = [
    "aggregate_view",
    "aggregates_view",
    "overview",
    "parse_time",
    "parse_version",
    "parse_where",
    "path_changes",
    "point_view",
    "recent_events",
]

_HISTORY_PAGE = 500
_MAX_ROWS = 5000  # history rows one aggregate page shows


def _plain(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


# -- input -----------------------------------------------------------------------------------


def parse_where(items: list[str]) -> dict[str, Scalar]:
    """``F=V`` filters (V as JSON when it parses, as ``eventstore query --where``)."""
    out: dict[str, Scalar] = {}
    for text in items:
        try:
            field, value = where_item(text)
        except argparse.ArgumentTypeError as exc:
            raise InvalidRequest(f"where: {exc}") from None
        out[field] = value
    return out


def parse_version(text: str | None, name: str = "version") -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, got {text[:40]!r}") from None
    if not 0 <= value <= MAX_INT:
        raise InvalidRequest(f"{name} must be between 0 and {MAX_INT}, got {value}")
    return value


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time with its offset (``Z`` for UTC); a naive one is refused."""
    if text is None or text == "":
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidRequest(f"at must be an RFC 3339 time, got {text[:60]!r}") from None
    if at.tzinfo is None:
        raise InvalidRequest(f"at must carry its UTC offset (…Z or …+02:00), got {text[:60]!r}")
    return at


# -- the pages ---------------------------------------------------------------------------------


async def overview(backend: Backend) -> dict[str, Any]:
    """The stream, the plots' series, each projection's progress, counts and services."""
    stream = await backend.stream_info()
    samples = list(backend.samples)
    rate = [
        [b.t, max(0.0, (b.head - a.head) / (b.t - a.t))]
        for a, b in itertools.pairwise(samples)
        if b.t > a.t
    ]
    projections = []
    last = samples[-1] if samples else None
    for name in backend.projections():
        series = [[s.t, s.checkpoints[name], s.lags[name]] for s in samples if name in s.lags]
        projections.append(
            {
                "projection": name,
                "checkpoint": last.checkpoints.get(name) if last else None,
                "lag": last.lags.get(name) if last else None,
                "conflicts": last.conflicts.get(name) if last else None,
                "quarantined": last.quarantined.get(name) if last else None,
                "series": series,
            }
        )
    census = backend.census
    return {
        "stream": stream,
        "append_rate": rate,
        "projections": projections,
        "conflicts": census.conflicts,
        "quarantined": census.quarantined,
        "counted_to_seq": census.seq,
        "services": [
            {
                "name": s.get("name"),
                "id": s.get("id"),
                "version": s.get("version"),
                "metadata": s.get("metadata") or {},
            }
            for s in backend.services
        ],
        "console": {
            "projection": backend.settings.projection,
            "loopback": is_loopback(backend.settings.host),
        },
    }


async def aggregates_view(
    backend: Backend,
    aggregate_type: str | None,
    where: dict[str, Scalar],
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """One page of the projection's aggregates (by type and id), filtered."""
    if aggregate_type:
        validate_aggregate_type(aggregate_type)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    client = await backend.client()
    page = await client.query(
        aggregate_type=aggregate_type or None, where=where or None, limit=limit, cursor=cursor
    )
    return {
        "projection": backend.settings.projection,
        "aggregate_type": aggregate_type or None,
        "where": where,
        "limit": limit,
        "checkpoint": page.checkpoint,
        "items": [_plain(i) for i in page.items],
        "next_cursor": page.next_cursor,
    }


async def _history(backend: Backend, aggregate_type: str, aggregate_id: str) -> list[Any]:
    client = await backend.client()
    entries: list[Any] = []
    start: int | None = 1
    while start is not None and len(entries) < _MAX_ROWS:
        page = await client.history(
            aggregate_type, aggregate_id, from_version=start, limit=_HISTORY_PAGE
        )
        entries += page.entries
        start = page.next_version
    return entries


async def aggregate_view(
    backend: Backend, aggregate_type: str, aggregate_id: str
) -> dict[str, Any]:
    """Its state now, its history (with clocks and what the fold made of each), its machine."""
    validate_aggregate_type(aggregate_type)
    client = await backend.client()
    store = await backend.store()
    now = await client.state(aggregate_type, aggregate_id)
    entries = await _history(backend, aggregate_type, aggregate_id)
    clocks: dict[int, tuple[int, dict[str, int]]] = {}
    skipped: dict[int, str] = {}

    def bad(m: Malformed) -> None:
        skipped[m.seq] = f"{m.kind}: {m.reason}"

    async for ev in store.read(aggregate_type, aggregate_id, on_malformed=bad):
        clocks[ev.seq] = (ev.lamport, ev.vclock)
    rows: list[dict[str, Any]] = []
    previous: dict[str, int] | None = None
    for entry in entries:
        lamport, vclock = clocks.get(entry.seq, (None, None))
        concurrent = (
            vclock is not None
            and previous is not None
            and VectorClock(vclock).concurrent_with(previous)
        )
        row = _plain(entry)
        row.update(
            lamport=lamport,
            vclock=vclock,
            concurrent=concurrent or entry.outcome == "conflict",
        )
        if entry.outcome == "quarantined" and not entry.detail and entry.seq in skipped:
            row["detail"] = skipped[entry.seq]
        rows.append(row)
        if vclock is not None and entry.outcome != "quarantined":
            previous = vclock
    book = store.rules.current
    rules = book.rules if book is not None else None
    table = rules.machines.get(aggregate_type) if rules is not None else None
    machine_state = next((r["transition"][1] for r in reversed(rows) if r["transition"]), None)
    if table is not None and machine_state is None:
        machine_state = table.initial
    resolver = rules.resolvers.get(backend.settings.projection) if rules is not None else None
    return {
        "projection": now.projection,
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "version": now.version,
        "seq": now.seq,
        "checkpoint": now.checkpoint,
        "state": _plain(now.state),
        "vclock": now.vclock,
        "lamport": now.lamport,
        "history": rows,
        "machine": (
            {
                "initial": table.initial,
                "transitions": [list(t) for t in table.transitions],
                "current": machine_state,
            }
            if table is not None
            else None
        ),
        "resolver": resolver or "log order (default)",
    }


def path_changes(before: Any, after: Any, path: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every difference between two JSON values (objects key by key), sorted by path."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(before.keys() | after.keys()):
            sub = (*path, str(key))
            if key not in after:
                out.append({"path": list(sub), "op": "remove", "old": before[key], "new": None})
            elif key not in before:
                out.append({"path": list(sub), "op": "add", "old": None, "new": after[key]})
            else:
                out += path_changes(before[key], after[key], sub)
        return out
    if before == after and type(before) is type(after):
        return []
    return [{"path": list(path), "op": "replace", "old": before, "new": after}]


async def point_view(
    backend: Backend,
    aggregate_type: str,
    aggregate_id: str,
    version: int | None,
    at: datetime | None,
) -> dict[str, Any]:
    """The state at a version (or recorded time) and the diff to the version before it."""
    validate_aggregate_type(aggregate_type)
    if (version is None) == (at is None):
        raise InvalidRequest("give exactly one of version=V or at=TIME")
    client = await backend.client()
    got = await client.state(aggregate_type, aggregate_id, version=version, at=at)
    before: Any = None
    previous: dict[str, Any] | None = None
    if got.version > 1:
        prev = await client.state(aggregate_type, aggregate_id, version=got.version - 1)
        before = _plain(prev.state)
        previous = {"version": prev.version, "seq": prev.seq, "state": before}
    state = _plain(got.state)
    return {
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "version": got.version,
        "seq": got.seq,
        "recorded_at": got.recorded_at.isoformat() if got.recorded_at else None,
        "state": state,
        "vclock": got.vclock,
        "lamport": got.lamport,
        "rules_version": got.rules_version,
        "previous": previous,
        "changes": path_changes(before if previous is not None else {}, state),
    }


def event_row(ev: Any) -> dict[str, Any]:
    """One event of the tail (everything but the payload's bulk is kept)."""
    row: dict[str, Any] = _plain(ev)
    return row


async def recent_events(
    backend: Backend, aggregate_type: str | None, count: int = 50
) -> dict[str, Any]:
    """The tail page's start: the last ``count`` events of the log (of one type), and the
    messages among them no fold can take, with their reason."""
    if aggregate_type:
        validate_aggregate_type(aggregate_type)
    store = await backend.store()
    head = await store.head()
    start = max(1, head - count + 1)
    events: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []

    def bad(m: Malformed) -> None:
        quarantined.append(malformed_row(m))

    if head:
        async for ev in store.read_all(
            start, head, aggregate_type or None, on_malformed=bad
        ):  # fmt: skip
            events.append(event_row(ev))
    return {"aggregate_type": aggregate_type or None, "head": head, "events": events,
            "quarantined": quarantined}  # fmt: skip


def malformed_row(m: Malformed) -> dict[str, Any]:
    return {"seq": m.seq, "subject": m.subject, "kind": m.kind, "reason": m.reason}
