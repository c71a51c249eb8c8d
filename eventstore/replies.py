"""What JetStream answers, read into our types: a publish's acknowledgement or refusal
(``Ack``, ``Refusal``), a stored message before decoding (``StoredMessage``) and the
recorded time, as a direct get (RFC 3339 with nanoseconds) and as an ack subject of a push
consumer (integer nanoseconds) carry it, read the same way so that one event has one
recorded time whichever way it was read.

Pure parsing, no I/O and no nats-py: ``eventstore.jetstream`` (which speaks the wire and
re-exports these names) and the readers use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from eventstore.errors import ServerError

__all__ = [
    "Ack",
    "Refusal",
    "StoredMessage",
    "parse_ack",
    "parse_reply",
    "parse_time",
    "recorded_at",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoredMessage(NamedTuple):
    """One raw message of the log, before decoding: what a quarantine records."""

    seq: int
    subject: str
    data: bytes
    recorded_at: datetime
    headers: Mapping[str, str] | None


class Ack(msgspec.Struct, frozen=True):
    """The server stored a publish (or an atomic batch: ``batch_size`` messages, ``seq`` the
    last one's sequence); ``duplicate`` when it had stored it before (single publishes)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    batch_size: int = 1

    @property
    def first_seq(self) -> int:
        return self.seq - self.batch_size + 1


class Refusal(msgspec.Struct, frozen=True):
    """The server refused a publish or a whole batch; nothing of it was stored."""

    code: int
    description: str


class _AckReply(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int | None = None
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_AckReply)


def parse_ack(data: bytes, count: int = 1) -> Ack | Refusal:
    """A publish's reply as an ``Ack`` or ``Refusal``; an empty reply (the open of a batch)
    is an ``Ack`` at seq 0. An unreadable reply is ``ServerError``."""
    if not data:
        return Ack(batch_size=count)
    try:
        r = _ack_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ServerError(f"unreadable acknowledgement from the server: {data!r}") from exc
    if r.error:
        return Refusal(int(r.error.get("err_code") or 0), str(r.error.get("description", "")))
    return Ack(r.stream, r.seq, r.duplicate, r.count if r.count is not None else count)


def parse_time(text: str) -> datetime:
    """RFC 3339 with nanoseconds (as JetStream writes it) to an aware datetime."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def parse_reply(reply: str) -> tuple[int, int]:
    """(stream seq, timestamp in µs) from a JetStream ack subject (with or without domain)."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[7]) // 1000
    return int(t[7]), int(t[9]) // 1000


def recorded_at(us: int) -> datetime:
    """Integer microseconds (truncated) as a datetime, exactly as ``parse_time`` reads a direct
    get: the same event carries the same recorded time whichever way it was read."""
    return _EPOCH + timedelta(microseconds=us)
