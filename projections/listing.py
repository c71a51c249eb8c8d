"""Listing a projection's current states: pages of aggregates, filtered, with an opaque cursor.

A local program (and the query service of ``consumers``, which calls the same functions) can
list every aggregate of a projection and read every current state without knowing the
database's tables or the projection's codec: ``query_states`` returns pages of
``StateRecord`` (states as JSON builtins), ``read_state`` one aggregate's state by projection
name.

Two orders, chosen by ``since``:

* without it, by ``(aggregate_type, aggregate_id)``: every aggregate once, whatever commits
  happen between pages (an aggregate changed meanwhile shows its newer state);
* with ``since=S``, the aggregates whose current state's seq is above ``S``, by that seq: what
  a subscriber that missed notifications reads to resynchronise. An aggregate changed between
  two pages moves to a later page, so nothing is missed; its state there is newer.

``where`` compares top-level fields of the state for equality with JSON scalars: ``3``
matches the number 3 (and 3.0), never the string ``"3"``; ``True`` matches ``true`` only.
Each page carries the projection's checkpoint, read in the same read transaction.

``states_between`` reads one aggregate's states at a range of versions in one replay (the
query service's ``range``: how a subscriber fills a gap of many versions in a few requests).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import msgspec

from eventstore import (
    MAX_INT,
    InvalidPoint,
    InvalidRequest,
    UnknownProjection,
    check_optional_int,
)
from projections.db import ProjectionDB
from projections.points import PastState
from projections.projection import Projection
from projections.timetravel import TimeTravel, current_state

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Scalar",
    "StatePage",
    "StateRecord",
    "projection_checkpoint",
    "query_states",
    "read_state",
    "states_between",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Scalar = str | int | float | bool | None

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class StateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One aggregate's current state in a projection (the fields ``eventstore query`` and the
    change feed print)."""

    projection: str
    aggregate_type: str
    aggregate_id: str
    version: int
    seq: int
    state: Any


class StatePage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of states; ``next_cursor`` asks for the next one (None: this was the last)."""

    items: list[StateRecord]
    next_cursor: str | None
    checkpoint: int


class _Cursor(msgspec.Struct, frozen=True, array_like=True):
    kind: str  # "key" (by aggregate) or "seq" (since)
    aggregate_type: str = ""
    aggregate_id: str = ""
    seq: int = 0


_cursor_decoder = msgspec.json.Decoder(_Cursor)


def _encode_cursor(c: _Cursor) -> str:
    return base64.urlsafe_b64encode(_encode(c)).decode().rstrip("=")


def _decode_cursor(text: str, kind: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        c = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidRequest(f"cursor {text[:40]!r} is not one this query returned") from None
    if c.kind != kind:
        which = "a changes (since)" if c.kind == "seq" else "a listing"
        raise InvalidRequest(f"that cursor belongs to {which} query, not to this one")
    return c


def check_limit(limit: int) -> int:
    """A page size: 1 to ``MAX_LIMIT``."""
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def _where_sql(where: Mapping[str, Scalar]) -> tuple[str, list[Any]]:
    """SQL conditions matching top-level fields of the state (JSON types kept apart)."""
    sql: list[str] = []
    params: list[Any] = []
    each = "EXISTS (SELECT 1 FROM json_each(states.state) AS j WHERE j.key = ? AND "
    for field, value in where.items():
        if not isinstance(field, str):
            raise InvalidRequest(f"a where field must be a string, got {field!r}")
        params.append(field)
        if value is None:
            sql.append(each + "j.type = 'null')")
        elif value is True or value is False:
            sql.append(each + ("j.type = 'true')" if value else "j.type = 'false')"))
        elif isinstance(value, int):
            if not -MAX_INT - 1 <= value <= MAX_INT:
                raise InvalidRequest(f"where {field}: {value} is outside 64-bit integers")
            sql.append(each + "j.type IN ('integer', 'real') AND j.atom = ?)")
            params.append(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidRequest(f"where {field}: {value} is not a JSON number")
            sql.append(each + "j.type IN ('integer', 'real') AND j.atom = ?)")
            params.append(value)
        elif isinstance(value, str):
            sql.append(each + "j.type = 'text' AND j.atom = ?)")
            params.append(value)
        else:
            raise InvalidRequest(
                f"where {field}: compare with a string, number, boolean or null, "
                f"not {type(value).__name__}"
            )
    return "".join(f" AND {s}" for s in sql), params


async def projection_checkpoint(db: ProjectionDB, projection: str) -> int:
    """The stream sequence ``projection`` has folded up to in ``db``; ``UnknownProjection`` if
    the database does not hold it."""
    row = await db.fetchone("SELECT checkpoint FROM projections WHERE name = ?", (projection,))
    if row is None:
        rows = await db.fetchall("SELECT name FROM projections ORDER BY name")
        known = ", ".join(str(r[0]) for r in rows) or "none yet"
        raise UnknownProjection(
            projection, f"projection {projection} is not in {db.path} (it holds: {known})"
        )
    return int(row[0])


async def query_states(
    db: ProjectionDB,
    projection: str,
    *,
    aggregate_type: str | None = None,
    where: Mapping[str, Scalar] | None = None,
    since: int | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> StatePage:
    """One page of ``projection``'s current states (see the module doc for the two orders).

    Malformed filters, limits and cursors raise ``InvalidRequest``; a projection the database
    does not hold ``UnknownProjection``.
    """
    check_limit(limit)
    if since is not None and (type(since) is not int or not 0 <= since <= MAX_INT):
        raise InvalidRequest(f"since must be a stream sequence 0 to {MAX_INT}, got {since!r}")
    filters, params = _where_sql(where or {})
    sql = "SELECT aggregate_type, aggregate_id, version, seq, state FROM states WHERE "
    sql += "projection = ? AND version > 0"
    args: list[Any] = [projection]
    if aggregate_type is not None:
        sql += " AND aggregate_type = ?"
        args.append(aggregate_type)
    if since is None:
        if cursor is not None:
            c = _decode_cursor(cursor, "key")
            sql += " AND (aggregate_type, aggregate_id) > (?, ?)"
            args += [c.aggregate_type, c.aggregate_id]
        order = " ORDER BY aggregate_type, aggregate_id"
    else:
        after = since if cursor is None else max(since, _decode_cursor(cursor, "seq").seq)
        sql += " AND seq > ?"
        args.append(after)
        order = " ORDER BY seq"
    sql += filters + order + " LIMIT ?"
    args += [*params, limit + 1]
    if db.conn.in_transaction:
        checkpoint = await projection_checkpoint(db, projection)
        rows = await db.fetchall(sql, args)
    else:
        async with db.snapshot():  # the checkpoint and the rows of one commit
            checkpoint = await projection_checkpoint(db, projection)
            rows = await db.fetchall(sql, args)
    items = [
        StateRecord(
            projection=projection,
            aggregate_type=str(t),
            aggregate_id=str(i),
            version=int(v),
            seq=int(s),
            state=_decode(state),
        )
        for t, i, v, s, state in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        mark = (
            _Cursor("key", last.aggregate_type, last.aggregate_id)
            if since is None
            else _Cursor("seq", seq=last.seq)
        )
        next_cursor = _encode_cursor(mark)
    return StatePage(items=items, next_cursor=next_cursor, checkpoint=checkpoint)


class _ByName(Projection[Any]):
    """A projection known by its name only: states decode as JSON builtins."""

    state_type = Any

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()


async def read_state(
    db: ProjectionDB, projection: str, aggregate_type: str, aggregate_id: str
) -> PastState:
    """One aggregate's current state in ``projection`` (by name; the state as JSON builtins),
    what ``current_state`` gives with the projection's code. ``AggregateNotFound`` if it has
    none, ``UnknownProjection`` if the database does not hold the projection."""
    await projection_checkpoint(db, projection)
    return await current_state(db, _ByName(projection), aggregate_type, aggregate_id)


async def states_between(
    travel: TimeTravel, aggregate_type: str, aggregate_id: str, first: int, last: int, limit: int
) -> list[PastState]:
    """The states of one aggregate at versions ``first`` to ``last``, at most ``limit`` of them
    (fewer when its history ends before ``last``), in ONE fold from the nearest snapshot at or
    before ``first`` (``TimeTravel.states``: from the file's copy of the events, the log only
    past the checkpoint or outside the copy): what ``state_at`` gives for each version, for
    the cost of one. A subscriber that missed many versions reads them this way in a request
    or two instead of one per version."""
    for value, what in ((first, "first version"), (last, "last version"), (limit, "limit")):
        check_optional_int(value, what, error=InvalidPoint)
    if first < 1 or last < first or limit < 1:
        raise InvalidPoint(f"versions {first} to {last} (limit {limit}): need 1 <= first <= last")
    return await travel.states(aggregate_type, aggregate_id, first, last, limit)
