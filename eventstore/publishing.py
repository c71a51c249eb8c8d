"""Atomic batch publish: the open and the middle as one write, the commit by request.

nats-py (2.16) has no atomic batch helper, and its ``publish`` costs ~10 µs a message in
Python (subject checks, a header block built one ``bytearray.extend`` at a time, a flush kick):
for a batch of 500 that was the largest single piece of an append's client time. The middle
of a batch is therefore written as ONE buffer of ``HPUB`` frames, byte for byte what
``Client.publish`` would send for each message (the same header block, the same framing),
appended to the client's outgoing buffer in one call. The client's own checks keep their
meaning: a closed or draining connection raises as ``publish`` would, a reconnecting one
buffers up to its pending limit (``OutboundBufferLimitError`` past it), an oversized message is
``InvalidEvent``. Subjects are not checked again here: every caller builds them with
``eventstore.subjects`` (the commit still goes through ``Client.request``).

A nats-py without those internals (``jetstream.write_frames``) gets ``publish`` per message:
slower, the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.client import Client

from eventstore.errors import InvalidEvent
from eventstore.jetstream import Ack, Refusal, parse_ack, write_frames

__all__ = ["Request", "hpub_frames", "publish_batch"]

Request = Callable[[str, bytes, dict[str, str], float, frozenset[str]], Awaitable[bytes]]
Message = tuple[str, bytes, dict[str, str]]

_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's rule for header names
_KEYS_OK: set[str] = {"Nats-Msg-Id", "Nats-Expected-Last-Subject-Sequence"}


def _header_lines(headers: dict[str, str]) -> str:
    """The header lines of one message (after ``NATS/1.0``), as ``Client.publish`` encodes
    them: names checked (once per distinct name), values stripped, CR/LF made spaces."""
    lines = []
    for k, v in headers.items():
        if k not in _KEYS_OK:
            key = k.strip()
            if not key:
                continue  # nats-py skips empty names
            if not _KEY_RE.fullmatch(key):
                raise InvalidEvent(f"header name {key!r} is not valid in NATS")
            if key != k:
                k = key
            else:
                _KEYS_OK.add(k)
        # A printable value not starting or ending with a space is what ``strip`` and the
        # CR/LF translation of ``Client.publish`` leave as it is (one C call each).
        if not v.isprintable() or v[:1] == " " or v[-1:] == " ":
            v = v.strip().translate(_NEWLINES)
        lines.append(f"{k}: {v}\r\n")
    return "".join(lines)


def hpub_frames(msgs: Iterable[Message], batch_id: str, first: int, max_payload: int) -> bytes:
    """The ``HPUB`` frames of ``msgs`` as batch members ``first``, ``first + 1``, ... of
    ``batch_id`` (no reply subject), concatenated."""
    parts: list[bytes] = []
    append = parts.append
    seq = first
    tail = f"Nats-Batch-Id: {batch_id}\r\nNats-Batch-Sequence: "
    for subject, body, headers in msgs:
        if len(body) > max_payload:
            raise InvalidEvent(f"a message to {subject} is {len(body)} bytes; the server "
                               f"accepts at most {max_payload}")  # fmt: skip
        msg_id = headers.get("Nats-Msg-Id")
        if (
            len(headers) == 1
            and msg_id is not None
            and msg_id.isascii()
            and msg_id.isprintable()
            and " " not in msg_id
        ):
            # The common case (one dedup id, ASCII): one string, its length its byte count.
            block = f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n{tail}{seq}\r\n\r\n"
        else:
            block = f"NATS/1.0\r\n{_header_lines(headers)}{tail}{seq}\r\n\r\n"
        if block.isascii():
            n = len(block)
            append(f"HPUB {subject}  {n} {n + len(body)}\r\n{block}".encode())
        else:
            raw = block.encode()
            n = len(raw)
            append(f"HPUB {subject}  {n} {n + len(body)}\r\n".encode() + raw)
        append(body)
        append(b"\r\n")
        seq += 1
    return b"".join(parts)


async def _publish_middle(nc: Client, msgs: list[Message], batch_id: str, first: int) -> None:
    """Members ``first``.. of the batch by plain publish (no reply): one buffer (see the
    module)."""
    frames = hpub_frames(msgs, batch_id, first, nc.max_payload)
    if await write_frames(nc, frames, len(msgs), sum(len(m[1]) for m in msgs)):
        return
    for i, (subject, body, headers) in enumerate(msgs, first):
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(i)
        await nc.publish(subject, body, headers=headers)


async def publish_batch(
    nc: Client,
    msgs: list[Message],
    batch_id: str,
    timeout: float,
    request: Request,
) -> Ack | Refusal:
    """Publish ``msgs`` as one atomic batch (one message: a plain publish) and return the
    server's answer. ``request`` sends one message and returns its reply's bytes (the caller's
    fail-fast wrapper); the rest of a batch goes by plain publish, in one write."""
    if len(msgs) == 1:
        subject, body, headers = msgs[0]
        return parse_ack(await request(subject, body, headers, timeout, frozenset()), 1)
    subjects = frozenset(m[0] for m in msgs)
    last = len(msgs)
    # The open and the middle go in one write, without waiting for the server to confirm the
    # open: it takes a connection's messages in order, and the commit's answer says what went
    # wrong with any member (a stale expectation, a batch it never saw open: nothing stored).
    # Waiting cost a round trip per batch, 4-20 ms while the batch before was being synced.
    await _publish_middle(nc, msgs[:-1], batch_id, 1)
    subject, body, headers = msgs[-1]
    headers["Nats-Batch-Id"] = batch_id
    headers["Nats-Batch-Sequence"] = str(last)
    headers["Nats-Batch-Commit"] = "1"
    return parse_ack(await request(subject, body, headers, timeout, subjects), last)
