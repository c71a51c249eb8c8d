"""The bounds of the integers a caller hands the library: versions, stream sequences, counts.

Versions and sequences end up in SQLite ``INTEGER`` columns and in JetStream requests (uint64),
so the largest one that every layer holds is ``2**63 - 1`` (``MAX_INT``). A value outside its
range, a ``bool`` or anything that is not an ``int`` is refused here, at the entry point, with
an error naming the argument, instead of overflowing deep inside SQLite or being refused by the
server with an error of the driver's.

Times follow one rule too (``check_time``): a naive ``datetime`` (no ``tzinfo``) is refused,
with the same ``InvalidPoint`` everywhere (``read_by_time``, time travel, the CLI's ``--at``):
guessing UTC or the local zone would silently answer for another moment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventstore.errors import EventStoreError, InvalidEvent, InvalidPoint

__all__ = ["MAX_INT", "check_int", "check_optional_int", "check_time"]

MAX_INT = 2**63 - 1


def _shown(value: int) -> str:
    # Python refuses str() of integers past 4300 digits: name the size instead.
    return str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit number"


def check_int(
    value: object,
    what: str,
    *,
    minimum: int = 0,
    maximum: int = MAX_INT,
    error: Callable[[str], EventStoreError] = InvalidEvent,
) -> int:
    """``value`` if it is an integer in ``[minimum, maximum]``; else ``error`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if not minimum <= value <= maximum:
        raise error(f"{what} must be between {minimum} and {maximum}, got {_shown(value)}")
    return value


def check_optional_int(
    value: object,
    what: str,
    *,
    minimum: int = 0,
    maximum: int = MAX_INT,
    error: Callable[[str], EventStoreError] = InvalidEvent,
) -> int | None:
    """Like ``check_int``, with ``None`` (not given) let through."""
    if value is None:
        return None
    return check_int(value, what, minimum=minimum, maximum=maximum, error=error)


def check_time(value: object, what: str = "a time") -> datetime:
    """``value`` if it is a ``datetime`` with a time zone; else ``InvalidPoint`` naming ``what``
    (a naive time could mean UTC or the local zone: it is never guessed)."""
    if not isinstance(value, datetime):
        raise InvalidPoint(f"{what} must be a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidPoint(
            f"{what} {value.isoformat()} has no time zone, and none is guessed: give it an "
            "offset (2025-01-13T10:30:00Z, ...+02:00) or, from Python, a tzinfo"
        )
    return value
