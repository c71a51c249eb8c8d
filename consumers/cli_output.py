"""The shapes the CLI prints for the library's typed results (time travel, failures).

The library returns typed results (``PastState``, ``Diff``, ``ProjectionFailure``); what a
command prints is decided here, beside the commands, so that a change of output is a change of
the CLI alone.
"""

from __future__ import annotations

from typing import Any

import msgspec

from projections import Diff, PastState, ProjectionFailure

__all__ = ["diff_output", "failed_line", "state_output"]


def state_output(state: PastState, *, past: bool = True) -> dict[str, Any]:
    """``eventstore state``'s JSON object (``snapshot_version``, ``replayed`` and
    ``rules_version`` only for a past point)."""
    out: dict[str, Any] = {
        "aggregate_type": state.aggregate_type,
        "aggregate_id": state.aggregate_id,
        "version": state.version,
        "seq": state.seq,
        "state": msgspec.to_builtins(state.state),
        "vclock": dict(state.vclock),
        "lamport": state.lamport,
    }
    if past:
        out["snapshot_version"] = state.snapshot_version
        out["replayed"] = state.replayed
        out["rules_version"] = state.rules_version  # the rules in force at its seq
    return out


def _point(p: PastState) -> dict[str, Any]:
    return {
        "version": p.version,
        "seq": p.seq,
        "recorded_at": p.recorded_at.isoformat() if p.recorded_at else None,
        "rules_version": p.rules_version,
        "state": msgspec.to_builtins(p.state),
    }


def diff_output(d: Diff) -> dict[str, Any]:
    """``eventstore diff``'s JSON object: both points, the changes, the patch, the messages."""
    return {
        "aggregate_type": d.aggregate_type,
        "aggregate_id": d.aggregate_id,
        "from": _point(d.before),
        "to": _point(d.after),
        "changes": msgspec.to_builtins(d.changes),
        "patch": msgspec.to_builtins(d.patch),
        "events": msgspec.to_builtins(d.events),
    }


def failed_line(f: ProjectionFailure) -> str:
    """``eventstore status``'s stderr line for a projection that stopped folding."""
    return (
        f"projection {f.projection} FAILED at seq {f.seq} ({f.at.isoformat(timespec='seconds')}, "
        f"{f.type}): {' '.join(f.error.split())}; it folds nothing until the worker is "
        "restarted with the cause fixed (it then resumes from its checkpoint)"
    )
