"""The JetStream wire: the one module that speaks it, and the one that touches nats-py internals.

The committer and the reader decide; this module speaks (httpx's client/transport split):
atomic batch publish with typed answers (``Ack``, ``Refusal``, parsed by ``eventstore.replies``
and re-exported here) and named error codes; gets that say "none" instead of raising;
key-value and probe requests whose outcomes are decisions (ordered subscriptions are
``eventstore.ordered``, batched direct gets ``eventstore.directget``); ``install_parsers`` and
``write_frames``, the only uses of nats-py private attributes in the tree, each behind a
``getattr`` guard; and ``translate``, the one table from nats-py errors to ``eventstore.errors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RawStreamMsg, StorageType

from eventstore.errors import (
    AppendTimeout,
    ConfigError,
    EventStoreError,
    InvalidEvent,
    NotConnected,
    PermissionDenied,
    RequestTimeout,
    ServerError,
)
from eventstore.headers import parse_header_lines, printable_subject
from eventstore.logging import get_logger
from eventstore.replies import (
    Ack,
    Refusal,
    StoredMessage,
    parse_ack,
    parse_reply,
    parse_time,
    recorded_at,
)

__all__ = [
    "DUPLICATE_ID",
    "INSUFFICIENT_RESOURCES",
    "STORE_FAILED",
    "WRONG_LAST_SEQUENCE",
    "Ack",
    "Refusal",
    "StoredMessage",
    "install_parsers",
    "parse_ack",
    "parse_reply",
    "parse_time",
    "recorded_at",
    "translate",
    "translating",
]

log = get_logger("eventstore.jetstream")

# JetStream error codes (nats-server's errors.json) the code decides on.
INSUFFICIENT_RESOURCES = 10023
JETSTREAM_NOT_ENABLED_FOR_ACCOUNT = 10039
MAXIMUM_MESSAGE_SIZE = 10054
STREAM_NOT_FOUND = 10059
WRONG_LAST_SEQUENCE = 10071  # the expected-last-subject-sequence does not hold
JETSTREAM_NOT_ENABLED = 10076
STORE_FAILED = 10077
WRONG_LAST_SEQUENCE_CONSTANT = 10164
BATCH_INCOMPLETE = (10176, 10177)  # part of an atomic batch was lost on the way
DUPLICATE_ID = 10201  # an atomic batch re-sent: a message id is already stored

# -- the translation table --------------------------------------------------------------------

_E = nats.errors
_TLS = (_E.SecureConnRequiredError, _E.SecureConnWantedError, _E.SecureConnFailedError)
_CONNECTION = (
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    OSError,
)
_BAD_INPUT = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError, nats.errors.BadHeaderError)


def translate(
    exc: BaseException,
    *,
    subject: str = "",
    what: str = "",
    url: str = "",
    timeout: float = 0.0,
    closed: bool = False,
) -> EventStoreError:
    """The ``eventstore.errors`` class for an error of nats-py (or of the socket under it).

    ``what`` names the call for the message (``"head of the log"``); ``subject`` given with
    ``what="append"`` makes a timeout an ``AppendTimeout``; ``closed`` (the connection is
    closed for good) makes any failure ``NotConnected``.
    """
    if isinstance(exc, EventStoreError):
        return exc
    doing = what or (f"request to {subject}" if subject else "request")
    detail = _describe(exc)
    if isinstance(exc, (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError)):
        return PermissionDenied(url, "connect", "authorization violation")
    if isinstance(exc, _TLS):
        return ConfigError(f"cannot connect to {url}: {detail} (check the URL's scheme and TLS)")
    if isinstance(exc, nats.errors.NoServersError):
        return NotConnected(url, "connection refused")
    if closed or isinstance(exc, nats.errors.ConnectionClosedError):
        return NotConnected(url, "connection closed")
    if isinstance(exc, TimeoutError):  # nats-py's and asyncio's too (before OSError: a subclass)
        if what == "append":
            return AppendTimeout(subject, timeout)
        return RequestTimeout(doing, timeout)
    if isinstance(exc, _CONNECTION):
        return NotConnected(url, detail)
    if isinstance(exc, nats.errors.NoRespondersError):
        return NotConnected(url, f"{doing}: JetStream is not enabled or not answering")
    if isinstance(exc, nats.js.errors.NoStreamResponseError):  # a replicated stream's election
        return NotConnected(url, f"{doing}: the stream did not answer (no leader yet?)")
    if isinstance(exc, _BAD_INPUT):
        return InvalidEvent(f"{doing}: {detail}")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return NotConnected(url, f"{doing}: JetStream is unavailable ({detail})")
    if isinstance(exc, nats.js.errors.APIError):  # some subclasses set neither code nor text
        code = getattr(exc, "err_code", None) or 0
        why = getattr(exc, "description", None) or detail
        if code in (JETSTREAM_NOT_ENABLED, JETSTREAM_NOT_ENABLED_FOR_ACCOUNT):
            return NotConnected(url, f"{doing}: JetStream is not enabled ({why})")
        return ServerError(f"{doing}: the server refused: {why}{refusal_hint(code)}")
    if isinstance(exc, msgspec.DecodeError):
        return ServerError(f"{doing}: unreadable answer from the server ({detail})")
    return ServerError(f"{doing} failed: {exc!r}")


def _describe(exc: BaseException) -> str:
    """The error's text, or its class name (nats-py's ``__str__`` may itself fail)."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__


@contextlib.contextmanager
def translating(
    *, what: str, url: str, subject: str = "", timeout: float = 0.0, nc: Client | None = None
) -> Iterator[None]:
    """Run the block so that any nats-py error leaves it as its ``eventstore.errors`` class."""
    try:
        yield
    except EventStoreError:
        raise
    except (nats.errors.Error, OSError, msgspec.DecodeError) as exc:
        closed = nc is not None and nc.is_closed
        raise translate(exc, what=what, url=url, subject=subject, timeout=timeout,
                        closed=closed) from exc  # fmt: skip


def refusal_hint(err_code: int) -> str:
    """What to do about a refused append whose JetStream error is ``err_code`` ("" if nothing
    more to say)."""
    if err_code == INSUFFICIENT_RESOURCES:
        return (
            "; the server's JetStream storage is full (its max_file_store limit or the disk): "
            "free disk space or raise the limit in the server configuration, then restart it"
        )
    if err_code == STORE_FAILED:
        return "; the server's store failed (disk full?): free disk space, then restart it"
    return ""


# -- nats-py internals ------------------------------------------------------------------------


def _guard_subjects(client: Client) -> None:
    build = getattr(client, "_build_message", None)
    if build is None or not callable(build):
        log.debug("nats-py has no _build_message: subjects are decoded by nats-py alone")
        return

    def build_message(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> Any:
        try:
            return build(sid, subject, reply, data, headers)
        except UnicodeDecodeError:
            return build(sid, printable_subject(subject), printable_subject(reply), data, headers)

    client._build_message = build_message  # type: ignore[method-assign]


def install_parsers(client: Client) -> bool:
    """Use ``eventstore.headers.parse_header_lines`` on this nats-py client (never its class),
    and keep it alive through a subject that is not UTF-8 (see ``eventstore.headers``).

    False if its nats-py has no such hook (a newer release that parses differently keeps its
    own parser)."""
    original = getattr(type(client), "_parse_header_lines", None)
    if original is None or not callable(original):
        log.debug("nats-py has no _parse_header_lines: keeping its header parser")
        _guard_subjects(client)
        return False
    client._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
    _guard_subjects(client)
    return True


async def close_connection(nc: Client) -> None:
    """Close the connection; a server already gone (the flush of a close fails) is no error."""
    if nc.is_closed:
        return
    try:
        await nc.close()
    except (nats.errors.Error, OSError) as exc:
        log.debug("connection closed uncleanly", error=_describe(exc))


# -- requests whose outcome is a decision -----------------------------------------------------


async def last_msg(js: JetStreamContext, stream: str, subject: str) -> RawStreamMsg | None:
    """The subject's last message from the stream's leader; None when it has none."""
    try:
        return await js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return None


async def next_msg(
    js: JetStreamContext, stream: str, subject: str, seq: int
) -> RawStreamMsg | None:
    """The subject's first message at or after ``seq`` (leader's get); None when none."""
    try:
        return await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except nats.js.errors.NotFoundError:
        return None


async def msg_at(js: JetStreamContext, stream: str, seq: int) -> RawStreamMsg | None:
    """The message at ``seq``; None when there is none."""
    try:
        return await js.get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return None


async def stream_info(js: JetStreamContext, stream: str) -> Any | None:
    """The stream's info; None when the stream does not exist."""
    try:
        return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return None


async def add_stream(js: JetStreamContext, config: Any) -> Any:
    """Create a stream; a refusal is ``ServerError`` naming the server's reason."""
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        raise ServerError(
            f"cannot create stream {config.name!r}: {exc.description}; check the stream "
            "settings and the server's JetStream limits"
        ) from exc


async def open_bucket(js: JetStreamContext, bucket: str, replicas: int = 1) -> Any:
    """A key-value bucket (history 1, file storage, ``replicas`` copies), created if it does
    not exist."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            config = KeyValueConfig(
                bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas
            )
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:  # created concurrently
            return await js.key_value(bucket)


async def kv_get(kv: Any, key: str) -> tuple[bytes | None, int] | None:
    """(value, revision) of a key; None when it has none."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value, int(entry.revision)


async def kv_write(kv: Any, key: str, value: bytes, revision: int | None) -> int | None:
    """Create the key (``revision`` None) or update it from ``revision``; the new revision, or
    None when another writer changed it first."""
    try:
        if revision is None:
            return int(await kv.create(key, value))
        return int(await kv.update(key, value, last=revision))
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
        return None


async def probe(
    nc: Client, subject: str, timeout: float, headers: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """A JSON reply to an empty request, ``{}`` when nobody answers the subject, None when
    no answer came in time (or it was not JSON)."""
    try:
        msg = await nc.request(subject, b"", timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        return {}
    except (nats.errors.Error, TimeoutError, OSError):
        return None
    try:
        got = msgspec.json.decode(msg.data or b"{}")
    except msgspec.DecodeError:
        return None
    return got if isinstance(got, dict) else None


async def request_data(nc: Client, subject: str, timeout: float) -> bytes | None:
    """The reply's bytes to an empty request; None on any failure (no answer, no responder)."""
    try:
        msg = await nc.request(subject, b"", timeout=timeout)
    except (nats.errors.Error, TimeoutError, OSError):
        return None
    return msg.data


# -- publishing (atomic batches: ``eventstore.publishing``) -------------------------------


async def write_frames(nc: Client, frames: bytes, messages: int, payload: int) -> bool:
    """Queue ready ``PUB``/``HPUB`` frames on the client's outgoing buffer in one call, with
    ``Client.publish``'s checks (closed, draining, reconnect buffer full); False if this
    nats-py lacks the internals (then publish message by message)."""
    send = getattr(nc, "_send_command", None)
    flush = getattr(nc, "_flush_pending", None)
    if send is None or flush is None or not hasattr(nc, "_flush_queue"):
        return False
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if not nc.is_connected:
        limit = nc._max_pending_size
        if limit <= 0 or len(frames) + nc._pending_data_size > limit:
            raise nats.errors.OutboundBufferLimitError
    nc.stats["out_msgs"] += messages
    nc.stats["out_bytes"] += payload
    await send(frames)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await flush()
    return True


async def request(
    nc: Client, subject: str, body: bytes, headers: dict[str, str], t: float
) -> bytes:
    """One request's reply bytes (errors of nats-py propagate, for the caller to translate)."""
    msg = await nc.request(subject, body, timeout=t, headers=headers)
    data: bytes = msg.data
    return data
