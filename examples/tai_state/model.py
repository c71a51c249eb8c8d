"""The state model of seed 002 (TAI-State): governor documents folded three ways.

The seed's conflict strategies are resolvers, and resolvers belong to projections: the same
document fold is registered under three names, and the rules stored with the log give each its
resolver (``lww``, ``priority:...``, and ``merge_quota`` below). The built-in ``entities``
projection keeps the default, log order. Only concurrent writes (vector clocks neither before
nor after each other) that touch the same keys ever reach a resolver: the seed's
"causality-aware" strategy is what every projection does first, and its "version-based" one
is optimistic locking (``expected_version``), which makes writes ordered instead of concurrent.
"""

from __future__ import annotations

from typing import Any

from eventstore import Rules
from projections import ConflictContext, EntitiesProjection, Resolution

DOC_TYPES = frozenset({"quota"})


class QuotaLww(EntitiesProjection):
    """Quotas, last writer wins by (Lamport time, producer)."""

    name = "tai_lww"
    aggregate_types = DOC_TYPES


class QuotaPriority(EntitiesProjection):
    """Quotas, the primary governors' writes win (source priority)."""

    name = "tai_priority"
    aggregate_types = DOC_TYPES


class QuotaMerge(EntitiesProjection):
    """Quotas, concurrent writes merged by ``merge_quota``."""

    name = "tai_merge"
    aggregate_types = DOC_TYPES


def merge_quota(ctx: ConflictContext) -> Resolution:
    """The seed's custom resolver: of two concurrent quota writes keep the lower ``limit``
    (the conservative one) and the union of the ``owners``. Pure: it sees only the two
    events and the states around them, so every replay decides the same."""
    theirs: dict[str, Any] = ctx.current
    mine: dict[str, Any] = ctx.apply(ctx.current, ctx.event)
    merged = dict(mine)
    limits = [s["limit"] for s in (theirs, mine) if isinstance(s.get("limit"), int)]
    if limits:
        merged["limit"] = min(limits)
    merged["owners"] = sorted({*theirs.get("owners", []), *mine.get("owners", [])})
    return ctx.merged(merged)


PROJECTIONS = [
    "examples.tai_state.model:QuotaLww",
    "examples.tai_state.model:QuotaPriority",
    "examples.tai_state.model:QuotaMerge",
]


def rules() -> Rules:
    """The rules stored with the TAI log: a review workflow and the three resolvers."""
    return Rules.from_mapping(
        {
            "machines": {
                "workflow": {
                    "initial": "Draft",
                    "transitions": [["Draft", "Review"], ["Review", "Published"]],
                }
            },
            "projections": {
                "resolvers": {
                    "tai_lww": "lww",
                    "tai_priority": "priority:governor-primary-*",
                    "tai_merge": "examples.tai_state.model:merge_quota",
                }
            },
        },
        source="examples.tai_state",
    )
