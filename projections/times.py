"""Timestamps in SQLite: integer microseconds since the epoch, which compare and sort exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eventstore import check_time

__all__ = ["EPOCH", "from_us", "parse_time", "to_us"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    return (dt - EPOCH) // _US


def from_us(us: int | None) -> datetime | None:
    if us is None:
        return None
    return EPOCH + timedelta(microseconds=us)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with an offset (``Z`` allowed); ``ValueError`` if it is not one, and
    ``InvalidPoint`` (``eventstore.check_time``) if it has no offset: never guessed."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 time (like 2025-01-13T10:30:00Z)") from exc
    return check_time(dt, "the time")
