"""Vector-clock arithmetic of the fold: concurrency of two clocks and their merge.

Kept apart from ``projections.fold`` (which imports both) because they are pure functions on
plain dicts, tested on their own (``tests/test_fold_properties.py``).
"""

from __future__ import annotations

__all__ = ["concurrent", "merge_clock"]


def concurrent(a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two vector clocks are concurrent (neither saw everything the other did)."""
    less = greater = False
    for k, v in a.items():
        w = b.get(k, 0)
        if v < w:
            less = True
        elif v > w:
            greater = True
    if not less:
        for k, w in b.items():
            if w > 0 and k not in a:
                less = True
                break
    return less and greater


def merge_clock(a: dict[str, int] | None, b: dict[str, int]) -> dict[str, int]:
    """Entry-wise max; returns ``a`` itself when ``b`` adds nothing (clocks are never mutated)."""
    if not a:
        return {k: v for k, v in b.items() if v > 0}
    out: dict[str, int] | None = None
    for k, v in b.items():
        if v > a.get(k, 0):
            if out is None:
                out = dict(a)
            out[k] = v
    return a if out is None else out
