"""Reading one subject without a consumer: batched direct gets (``allow_direct``).

``{"next_by_subj": subject, "batch": N, "seq": S}`` on ``$JS.API.DIRECT.GET.<stream>`` returns
up to N messages of the subject from S, then a ``204 EOB`` status (``404`` when there is
none); ``Nats-Num-Pending`` > 0 means the batch was truncated. nats-py has no helper for it:
the replies are collected on an inbox of our own until the status. The cheap path for one
aggregate's history (a few hundred microseconds per batch), where an ordered consumer would
cost a consumer create and delete per read. Direct get may lag on replicated streams, so
nothing that decides a write relies on it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from eventstore.errors import NotConnected, PermissionDenied, ServerError
from eventstore.jetstream import StoredMessage, parse_time, translating

__all__ = ["MULTI_LAST_MAX", "direct_batches", "last_messages"]

_TRIES = 6  # unanswered direct gets in a row (5 s each) before giving up
MULTI_LAST_MAX = 500  # subjects per ``multi_last`` request


class _Replies:
    """The replies to one batched direct get at a time, on an inbox of their own.

    Collected by a subscription callback until the server's end-of-batch status, so a batch
    of replies costs one wait, not one timed wait per message.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.msgs: list[Msg] = []
        self.done = asyncio.Event()
        self.inbox = nc.new_inbox()
        self.sub: Any = None

    @classmethod
    async def open(cls, nc: Client, batch: int) -> _Replies:
        self = cls(nc)
        self.sub = await nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=4 * batch)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)
        if msg.headers and msg.headers.get("Status"):
            self.done.set()

    async def ask(self, subject: str, payload: bytes, timeout: float) -> list[Msg] | None:
        """Send one request; the replies up to and including its end-of-batch status, None
        when the status did not come in time."""
        self.msgs = []
        self.done.clear()
        await self._nc.publish(subject, payload, reply=self.inbox)
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            return None
        return self.msgs

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None


async def direct_batches(
    nc: Client,
    stream: str,
    subject: str,
    *,
    url: str,
    refused: Callable[[str], PermissionDenied | None],
    start_seq: int = 1,
    start_time: datetime | None = None,
    stop_seq: int | None = None,
    batch: int = 512,
    timeout: float = 5.0,
) -> AsyncIterator[list[StoredMessage]]:
    """The subject's messages from ``start_seq`` (or ``start_time``) up to ``stop_seq``, in
    batches. ``refused`` says whether the server refused this client the API subject."""
    api = f"$JS.API.DIRECT.GET.{stream}"
    what = f"direct get on {stream}"
    with translating(what=what, url=url, timeout=timeout, nc=nc):
        replies = await _Replies.open(nc, batch)
    cursor = max(1, start_seq)
    by_time = start_time
    unanswered = 0
    try:
        while stop_seq is None or cursor <= stop_seq:
            req: dict[str, Any] = {"next_by_subj": subject, "batch": batch}
            if by_time is not None:
                req["start_time"] = by_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
            else:
                req["seq"] = cursor
            with translating(what=what, url=url, timeout=timeout, nc=nc):
                got = await replies.ask(api, msgspec.json.encode(req), timeout)
            if got is None:
                if nc.is_closed:
                    raise NotConnected(url, "connection closed")
                if denied := refused(api):
                    raise denied
                unanswered += 1
                if unanswered >= _TRIES:
                    raise NotConnected(url, f"{what} went unanswered {unanswered} times in a row")
                # Lost replies (a reconnect): ask again from where we are, on a fresh inbox
                # so that late replies to this request cannot mix in.
                await replies.close()
                with translating(what=what, url=url, timeout=timeout, nc=nc):
                    replies = await _Replies.open(nc, batch)
                await asyncio.sleep(0.2)
                continue
            unanswered = 0
            out: list[StoredMessage] = []
            done = False
            for msg in got:
                hdr = msg.headers or {}
                status = hdr.get("Status")
                if status == "204":  # end of this batch
                    done = hdr.get("Nats-Num-Pending", "1") == "0"
                    break
                if status == "404":
                    done = True
                    break
                if status:
                    raise ServerError(f"{what} failed: {status} {hdr.get('Description', '')}")
                seq = int(hdr["Nats-Sequence"])
                if stop_seq is not None and seq > stop_seq:
                    done = True
                    continue
                at = parse_time(hdr["Nats-Time-Stamp"])
                out.append(StoredMessage(seq, hdr.get("Nats-Subject", subject), msg.data, at, hdr))
            if out:
                by_time = None
                cursor = out[-1].seq + 1
                yield out
            if done or not out:
                return
    finally:
        await replies.close()


async def last_messages(
    nc: Client,
    stream: str,
    subjects: list[str],
    *,
    url: str,
    refused: Callable[[str], PermissionDenied | None],
    timeout: float = 5.0,
    batch: int | None = None,
) -> dict[str, StoredMessage]:
    """The last message of each subject that has one (absent: it has none), by ``multi_last``
    direct gets of at most ``MULTI_LAST_MAX`` subjects each: a few requests for thousands of
    subjects where one get per subject would cost a round trip each.

    The server answers in sequence order, then ``204 EOB`` (``404 No Results`` when no subject
    has a message); ``Nats-Num-Pending`` > 0 says ``batch`` truncated the answer, and the
    subjects not answered yet are asked again. A direct get may lag on a replicated stream:
    a caller that decides a write on this must keep the server-checked expectation on it.
    ``batch`` (default: the chunk's size) is the most replies asked for per request.
    """
    api = f"$JS.API.DIRECT.GET.{stream}"
    what = f"heads on {stream}"
    found: dict[str, StoredMessage] = {}
    todo = list(dict.fromkeys(subjects))
    with translating(what=what, url=url, timeout=timeout, nc=nc):
        replies = await _Replies.open(nc, MULTI_LAST_MAX)
    try:
        while todo:
            chunk, todo = todo[:MULTI_LAST_MAX], todo[MULTI_LAST_MAX:]
            req = msgspec.json.encode({"multi_last": chunk, "batch": batch or len(chunk)})
            with translating(what=what, url=url, timeout=timeout, nc=nc):
                got = await replies.ask(api, req, timeout)
            if got is None:
                if nc.is_closed:
                    raise NotConnected(url, "connection closed")
                if denied := refused(api):
                    raise denied
                raise NotConnected(url, f"{what}: a direct get went unanswered for {timeout}s")
            truncated = False
            before = len(found)
            for msg in got:
                hdr = msg.headers or {}
                status = hdr.get("Status")
                if status == "204":
                    truncated = hdr.get("Nats-Num-Pending", "0") != "0"
                    break
                if status == "404":
                    break
                if status:
                    raise ServerError(f"{what} failed: {status} {hdr.get('Description', '')}")
                subject, seq = hdr["Nats-Subject"], int(hdr["Nats-Sequence"])
                at = parse_time(hdr["Nats-Time-Stamp"])
                found[subject] = StoredMessage(seq, subject, msg.data, at, hdr)
            if truncated:  # ask again for the rest of this chunk
                if len(found) == before:
                    raise ServerError(f"{what}: the server truncated an answer to nothing")
                todo = [s for s in chunk if s not in found] + todo
    finally:
        await replies.close()
    return found
