"""Producer presence: warn when two live connections write under one producer name.

A producer name is the identity of a writer's clocks: its Lamport time, its vector-clock
entry, the ``producer`` of its events that resolvers (priority, last-writer-wins) and conflict
records name. Two processes sharing one name share one vector entry, so their events look
causally ordered even when neither saw the other's: a real conflict is hidden. Nothing in the
log can tell afterwards, so the check is made while both are alive.

Each ``EventStore`` (unless connected with ``presence=False``) answers requests on
``_ES.PRODUCER.<stream>.<producer>`` (core NATS, outside every stream: a log's subjects are
``<prefix>.>`` and no prefix may start with ``_ES``). At connect it first sends one request
there (who asks in a header): when nobody else holds the name the server answers "no
responders" at once, so the common case costs one round trip; an answer means another live
connection uses the name, and both sides log a warning. The request is sent before this
connection subscribes (it must not answer itself), so two connections that start within the
same round trip may miss each other.
Presence never fails a connect: any error of its own is logged at debug level and ignored.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from eventstore.ids import uuid7
from eventstore.jetstream import probe
from eventstore.subjects import RESERVED_TOKEN, encode_id

__all__ = ["PRESENCE_TIMEOUT", "Presence", "presence_subject"]

log = structlog.get_logger("eventstore.presence")

# How long an answer may take: a holder of the name answers from its event loop at once; one
# that does not within this time is too busy to count, and the connect goes on.
PRESENCE_TIMEOUT = 0.5


class Holder(msgspec.Struct, frozen=True):
    """Who holds a producer name: what a presence request is answered with."""

    host: str = ""
    pid: int = 0
    since: str = ""
    token: str = ""  # random per connection: a holder never answers itself


_encode = msgspec.json.Encoder().encode
HOLDER_HEADER = "Eventstore-Holder"  # the asker's Holder, as JSON


def presence_subject(stream: str, producer: str) -> str:
    """``_ES.PRODUCER.<stream>.<producer>``: the producer is escaped into one token."""
    return f"{RESERVED_TOKEN}.PRODUCER.{stream}.{encode_id(producer)}"


def _describe(holder: Holder) -> str:
    return f"pid {holder.pid} on {holder.host or '?'}, connected since {holder.since or '?'}"


class Presence:
    """This connection's claim on its producer name (see the module doc)."""

    def __init__(self, nc: Client, stream: str, producer: str) -> None:
        self._nc = nc
        self.stream = stream
        self.producer = producer
        self.subject = presence_subject(stream, producer)
        self.me = Holder(socket.gethostname(), os.getpid(), datetime.now(UTC).isoformat(), uuid7())
        self.shared_with: list[str] = []  # other live holders found at connect, described
        self._sub: Any = None

    async def announce(self, *, timeout: float = PRESENCE_TIMEOUT) -> None:
        """Ask whether another live connection holds the name (warn if so), then hold it."""
        try:
            reply = await probe(
                self._nc, self.subject, timeout, headers={HOLDER_HEADER: _encode(self.me).decode()}
            )
        except Exception as exc:  # presence must never fail a connect
            log.debug("presence request failed", subject=self.subject, error=repr(exc))
            reply = {}
        if reply is None:  # someone subscribed but did not answer in time, or not as we do
            log.debug("presence request not answered", subject=self.subject, timeout=timeout)
        elif reply:
            self._shared(_holder(reply), at_connect=True)
        try:
            self._sub = await self._nc.subscribe(self.subject, cb=self._answer)
        except Exception as exc:
            log.debug("presence subscription failed", subject=self.subject, error=repr(exc))

    async def _answer(self, msg: Msg) -> None:
        other = _holder((msg.headers or {}).get(HOLDER_HEADER, ""))
        if not msg.reply or other.token == self.me.token:
            return
        self._shared(other, at_connect=False)
        try:
            await msg.respond(_encode(self.me))
        except Exception as exc:  # the connection is closing
            log.debug("presence answer failed", subject=self.subject, error=repr(exc))

    def _shared(self, other: Holder, *, at_connect: bool) -> None:
        described = _describe(other)
        self.shared_with.append(described)
        log.warning(
            "producer name already used by another live connection: their events and ours "
            "will look causally ordered and hide real conflicts; give each process its own name"
            if at_connect
            else "another live connection now uses this producer name: their events and ours "
            "will look causally ordered and hide real conflicts; give each process its own name",
            producer=self.producer,
            stream=self.stream,
            other=described,
        )


def _holder(value: str | dict[str, Any]) -> Holder:
    """Who answered or asked; an empty ``Holder`` for a foreign client (still someone)."""
    try:
        if isinstance(value, str):
            return msgspec.json.decode(value or "{}", type=Holder)
        return msgspec.convert(value, Holder)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return Holder()
