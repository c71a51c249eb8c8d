"""What state the server's JetStream and its store are in, for an operator and for errors.

nats-server (2.15) answers a full disk in a way a client cannot read: when a write of the
stream's store fails (``no space left on device``, an I/O error) it logs a *critical write
error*, keeps that error on the stream until the server restarts, and stores nothing more
without answering the publisher at all; every later append only times out, even after space
is back. A clustered server (or one that may not write its files) disables JetStream instead.
So:

* ``unanswered_detail`` explains an append that got no answer before its deadline: JetStream
  disabled, the stream missing, or (when the stream still answers a probe that it must refuse
  before storing anything) a store that cannot be written. It uses only what a producer may
  use (the stream's info and the append's own subject).
* ``server_health`` is what ``eventstore status`` shows: JetStream enabled or not, the stream's
  size, and what an embedded server (``eventstore server`` / ``up``) saw in its nats-server log.
  The embedded server answers ``SERVER_HEALTH_SUBJECT`` (outside every events stream) with a
  ``StoreHealth``.

Recovery from a full disk: free space on the store's filesystem, then restart the server;
the acknowledged events are on disk and the restarted server accepts appends again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventstore.jetstream import (
    JETSTREAM_NOT_ENABLED,
    JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
    STREAM_NOT_FOUND,
    probe,
    refusal_hint,
    request_data,
)

__all__ = [
    "SERVER_HEALTH_SUBJECT",
    "ServerHealth",
    "StoreHealth",
    "refusal_hint",
    "server_health",
    "unanswered_detail",
]

SERVER_HEALTH_SUBJECT = "$EVENTSTORE.SERVER.HEALTH"

# A stream name never has spaces: a publish expecting this stream is refused by the stream
# before it stores anything, so the answer proves that the stream processes what it gets.
_NO_SUCH_STREAM = "no stream has this name"
_JS_NOT_ENABLED = (JETSTREAM_NOT_ENABLED_FOR_ACCOUNT, JETSTREAM_NOT_ENABLED)
_STREAM_NOT_FOUND = STREAM_NOT_FOUND

STORE_CANNOT_BE_WRITTEN = (
    "JetStream received it but neither stored nor refused it, as nats-server does when its "
    "store cannot be written (a full or failing disk? see the nats-server log); free disk "
    "space, then restart the server; acknowledged events are kept"
)
JETSTREAM_DISABLED = (
    "JetStream is disabled on the server, as nats-server does after a storage or filesystem "
    "error (see the nats-server log); free disk space, then restart the server"
)


class StoreHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What an embedded server knows of its store (its answer on ``SERVER_HEALTH_SUBJECT``)."""

    store: str  # "ok" or "write error"
    detail: str = ""
    store_dir: str = ""
    free_bytes: int | None = None
    pid: int | None = None
    nats_server_pid: int | None = None


class ServerHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The server's JetStream state as ``eventstore status`` prints it (one JSON line)."""

    server: str
    jetstream: str  # "enabled", "disabled" or "no answer"
    store: str  # "ok", "write error" (seen by an embedded server) or "unknown"
    detail: str = ""
    stream: str
    messages: int | None = None
    bytes: int | None = None
    last_seq: int | None = None
    store_dir: str | None = None
    free_bytes: int | None = None
    first_seq: int | None = None
    first_time: str | None = None  # RFC 3339, as JetStream reports it
    last_time: str | None = None


_store_health = msgspec.json.Decoder(StoreHealth)


def _error_code(reply: dict[str, Any]) -> int | None:
    err = reply.get("error")
    if isinstance(err, dict):
        code = err.get("err_code")
        return code if isinstance(code, int) else -1
    return None


async def _stream_info(nc: Any, stream: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """(JetStream state, the stream's info or {})."""
    info = await probe(nc, f"$JS.API.STREAM.INFO.{stream}", timeout)
    if info is None:
        return "no answer", {}
    if not info or _error_code(info) in _JS_NOT_ENABLED:
        return "disabled", {}
    return "enabled", info


async def unanswered_detail(nc: Any, stream: str, subject: str, timeout: float = 1.0) -> str:
    """Why an append to ``subject`` got no answer: what to tell the caller, or "no answer"."""
    if getattr(nc, "is_connected", False) is not True:
        return "no answer"
    state, info = await _stream_info(nc, stream, timeout)
    if state == "disabled":
        return f"no answer: {JETSTREAM_DISABLED}"
    if _error_code(info) == _STREAM_NOT_FOUND:
        return f"no answer: stream {stream!r} does not exist on the server"
    if state != "enabled":
        return "no answer: the server's JetStream does not answer either (overloaded or stuck?)"
    answer = await probe(nc, subject, timeout, headers={"Nats-Expected-Stream": _NO_SUCH_STREAM})
    if answer is None:
        return "no answer: the stream does not answer either (overloaded or stuck?)"
    if not answer:
        return f"no answer: no stream captures {subject!r}"
    return f"no answer: {STORE_CANNOT_BE_WRITTEN}"


async def server_health(nc: Any, stream: str, url: str, timeout: float = 1.0) -> ServerHealth:
    """The server's JetStream state, its stream's size, and an embedded server's store state."""
    state, info = await _stream_info(nc, stream, timeout)
    size: dict[str, Any] = {}
    detail = ""
    if state == "disabled":
        detail = JETSTREAM_DISABLED
    elif state == "no answer":
        detail = f"JetStream did not answer within {timeout:g}s"
    elif _error_code(info) == _STREAM_NOT_FOUND:
        detail = f"stream {stream!r} does not exist on the server"
    else:
        st = info.get("state") or {}
        size = {k: st.get(k) for k in ("messages", "bytes", "last_seq", "first_seq")}
        if st.get("messages"):  # an empty stream reports year 1
            size |= {"first_time": st.get("first_ts"), "last_time": st.get("last_ts")}
    data = await request_data(nc, SERVER_HEALTH_SUBJECT, timeout)
    try:
        embedded = _store_health.decode(data) if data is not None else None
    except msgspec.DecodeError:
        embedded = None  # not an embedded server (or not allowed to ask): the store is unknown
    if embedded is None:
        return ServerHealth(
            server=url, jetstream=state, store="unknown", detail=detail, stream=stream, **size
        )
    return ServerHealth(
        server=url,
        jetstream=state,
        store=embedded.store,
        detail=embedded.detail or detail,
        stream=stream,
        store_dir=embedded.store_dir,
        free_bytes=embedded.free_bytes,
        **size,
    )
