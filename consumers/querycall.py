"""One request to the query service, and what its failures mean: the wire side of
``ProjectionClient`` (``consumers.client``), which decides what to ask.

``call`` sends one request to ``_ES.Q.<stream>.<projection>.<op>`` and decodes the reply into
the protocol's typed struct; every way it can fail (no responder, no reply in time, a closed
connection, an error reply, an unreadable reply) becomes one of our exceptions here, in one
table (``error_reply`` for the replies, the ``except`` clauses for the transport), so that a
nats-py upgrade or a new error code touches one place. The mapping is listed in the doc of
``consumers.client``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from consumers import protocol as wire
from eventstore import (
    AggregateNotFound,
    InvalidPoint,
    InvalidRequest,
    NotConnected,
    ProjectionError,
    RequestTimeout,
    UnknownProjection,
    client_options,
    guarded_connect,
)

__all__ = ["MARGIN", "call", "connect_plain", "error_reply"]

# Beyond a request's own wait (min_seq), how long the reply may take to arrive.
MARGIN = 2.0

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode
_error_decoder = msgspec.json.Decoder(wire.ErrorReply)
log = structlog.get_logger("consumers.client")


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback prints a traceback; ours logs (errors that matter
    reach the caller as exceptions)."""
    log.debug("nats connection error", error=str(exc) or type(exc).__name__)


async def _nothing() -> None:
    return None


async def connect_plain(
    url: str, *, connect_timeout: float, creds: str | None, tls_ca: str | None
) -> Client:
    """A plain NATS connection (no JetStream needed) that reconnects for ever once made;
    ``NotConnected`` if nothing answers within ``connect_timeout``."""
    nc = Client()
    options = {
        "disconnected_cb": _nothing,
        "reconnected_cb": _nothing,
        "connect_timeout": max(1, int(connect_timeout)),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        **client_options(creds, tls_ca),
    }
    try:
        await asyncio.wait_for(guarded_connect(nc, url, options, _quiet), connect_timeout)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise NotConnected(url, str(exc) or type(exc).__name__) from exc
    return nc


async def call(
    nc: Client,
    stream: str,
    name: str,
    op: str,
    body: Any,
    reply_type: type[R],
    *,
    timeout: float,
    aggregate: tuple[str, str] | None = None,
) -> R:
    """Ask projection ``name`` of ``stream`` to do ``op`` with ``body`` (a protocol request
    struct); the reply as ``reply_type``. A request that waits for ``min_seq`` gets its own
    wait plus ``MARGIN``, any other ``timeout``."""
    subject = wire.endpoint_subject(stream, name, op)
    wait = timeout
    if body.min_seq is not None:
        wait = (body.timeout or wire.DEFAULT_TIMEOUT) + MARGIN
    try:
        msg = await nc.request(subject, _encode(body), timeout=wait)
    except nats.errors.NoRespondersError:
        raise UnknownProjection(
            name,
            f"no worker serves projection {name} on stream {stream}: start "
            "`eventstore worker` (running that projection) for this stream",
        ) from None
    except nats.errors.TimeoutError:
        raise RequestTimeout(f"{op} of projection {name} on stream {stream}", wait) from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
        raise NotConnected(_url(nc), type(exc).__name__) from exc
    except nats.errors.Error as exc:
        raise ProjectionError(f"{op} of projection {name}: {exc}") from exc
    headers = msg.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise error_reply(stream, name, op, headers, msg.data, aggregate, wait)
    try:
        return msgspec.json.decode(msg.data, type=reply_type)
    except msgspec.DecodeError as exc:
        raise ProjectionError(
            f"{op} of projection {name}: the worker's reply cannot be read ({exc}); is it "
            "the same eventstore version?"
        ) from exc


def _url(nc: Client) -> str:
    url = nc.connected_url
    return url.geturl() if url is not None else "the NATS server"


def error_reply(
    stream: str,
    name: str,
    op: str,
    headers: Mapping[str, str],
    data: bytes,
    aggregate: tuple[str, str] | None,
    wait: float,
) -> Exception:
    """The exception an error reply of the service means (its JSON body, else its headers)."""
    try:
        body = _error_decoder.decode(data).error
    except msgspec.DecodeError:
        body = wire.ErrorBody(
            code=headers.get(ERROR_CODE_HEADER, "internal"),
            message=headers.get(ERROR_HEADER, "error without a message"),
        )
    code, message = body.code, body.message
    if code == "not_found" and aggregate is not None:
        prefix = f"{aggregate[0]}/{aggregate[1]}: "
        return AggregateNotFound(*aggregate, message.removeprefix(prefix))
    if code == "timeout":
        return RequestTimeout(
            f"{op} of projection {name} on stream {stream}",
            wait,
            message,
            projection=name,
            checkpoint=body.checkpoint,
        )
    if code == "unknown_projection":
        return UnknownProjection(name, message)
    if code == "bad_request" and body.reason == "invalid_point":
        return InvalidPoint(message)
    if code in ("bad_request", "too_large"):
        return InvalidRequest(message, code=code)
    return ProjectionError(f"the query service of stream {stream} failed: {message}")
