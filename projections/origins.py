"""Where a custom projection came from, recorded in the database that folds it.

A worker runs a custom projection named ``module:object``; a reader (``eventstore state
--projection orders``, ``load_projection``) knows only its name. So that a projection the
database knows is readable by that name, the worker records the spec it was loaded from in the
``meta`` table (key ``origin:<name>``), in the transaction that registers the projection (no
schema change); a reader given a plain name that is not built in looks it up there.
"""

from __future__ import annotations

import weakref
from typing import Any

from projections.db import ProjectionDB
from projections.projection import Projection

__all__ = ["ORIGIN_KEY", "projection_origin", "record_origin", "recorded_origin", "remember_origin"]

ORIGIN_KEY = "origin:"

# The spec each projection object was loaded from (``projections.loading``); weak, so that a
# projection object is never kept alive by having been loaded.
_loaded: weakref.WeakKeyDictionary[Projection[Any], str] = weakref.WeakKeyDictionary()


def remember_origin(projection: Projection[Any], spec: str) -> None:
    """Note that ``projection`` was loaded from ``spec`` (``module:object``)."""
    _loaded[projection] = spec.strip()


def projection_origin(projection: Projection[Any]) -> str | None:
    """The ``module:object`` spec ``projection`` was loaded from, if it was loaded by one."""
    return _loaded.get(projection)


async def record_origin(db: ProjectionDB, projection: Projection[Any]) -> None:
    """Record where ``projection`` came from (inside the caller's transaction), if known."""
    spec = projection_origin(projection)
    if spec is not None:
        await db.set_meta(ORIGIN_KEY + projection.name, spec)


async def recorded_origin(db: ProjectionDB, name: str) -> str | None:
    """The spec the database recorded for the projection ``name``, or None."""
    return await db.meta(ORIGIN_KEY + name)
