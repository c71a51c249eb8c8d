"""Many rows in one INSERT: the batch writes of the commit (states, the copy of the events)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

__all__ = ["CHUNK", "multi_rows"]

CHUNK = 1000  # rows per INSERT: one statement step and one bind pass for many rows


@functools.cache
def _values(columns: int, rows: int) -> str:
    one = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([one] * rows)


def multi_rows(
    head: str, rows: Sequence[tuple[Any, ...]], tail: str = ""
) -> list[tuple[str, list[Any]]]:
    """The ``(statement, parameters)`` of ``head VALUES... tail`` inserting ``rows``, ``CHUNK``
    rows a statement: a batch of 20,000 is 20 statements, not 20,000 steps each giving the GIL
    away and waiting to take it back while the event loop reads the log."""
    out: list[tuple[str, list[Any]]] = []
    columns = len(rows[0]) if rows else 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        out.append((head + _values(columns, len(chunk)) + tail, [v for r in chunk for v in r]))
    return out
