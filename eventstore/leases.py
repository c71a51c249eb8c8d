"""Leases and locks: "exactly one actor at a time" across hosts, on JetStream, not on files.

A lease is one key of a JetStream key-value bucket (``LEASES_<stream>``: stream
``KV_LEASES_<stream>``, one message per key). Every write is compare-and-set on the key's last
revision (``Nats-Expected-Last-Subject-Sequence``) and carries a per-message TTL (``Nats-TTL``,
nats-server 2.11+): a holder that dies loses the lease when the server expires its message,
without anyone cleaning up. Renewal rewrites the message (new TTL) before it expires.

The **fencing token** of a grant is the stream sequence of the message that granted it: it
strictly increases with every grant of the same name (stream sequences never repeat), and a
renewal keeps it. An append made under a lease records ``{"name", "token"}`` in the events'
metadata (``fenced_events``); projections refuse an event whose token is older than one
already applied for that lease (``projections.fencing``).

A holder also keeps its own deadline (monotonic clock, from the moment it *sent* its last
successful write): past it the lease counts as lost on this side even if no renewal failed
(a paused process that wakes up), so ``Lease.check`` refuses before the server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from eventstore.cancelling import cancel_and_wait
from eventstore.errors import InvalidEvent, LeaseLost, LeaseUnavailable
from eventstore.events import NewEvent
from eventstore.jetstream import (
    WRONG_LAST_SEQUENCE,
    Refusal,
    add_stream,
    last_msg,
    parse_ack,
    request,
    stream_info,
    translating,
)
from eventstore.logging import get_logger
from eventstore.subjects import decode_id, encode_id

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_MAX_HOLD",
    "Lease",
    "LeaseInfo",
    "Leases",
    "fenced_events",
    "lease_bucket",
]

DEFAULT_LEASE_TTL = 30.0
DEFAULT_MAX_HOLD = 300.0  # seed 000: a realm lock is held five minutes at most
MIN_TTL = 1.0  # Nats-TTL has a granularity of a second
_POLL = 0.2  # how often a waiting acquirer looks again
_LOCK = "lock."
_SKEW = timedelta(seconds=2)  # clock skew tolerated when judging an expiry by the body

log = get_logger("eventstore.leases")


def lease_bucket(stream: str) -> str:
    """The key-value bucket holding the leases of the log ``stream``."""
    return f"LEASES_{stream}"


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as stored (the key's value): who holds it, its token, until when."""

    name: str
    owner: str
    token: int = 0  # the granting message's sequence (0 in the body of the grant itself)
    acquired_at: datetime
    expires_at: datetime
    max_until: datetime  # renewals never extend it past this (``max_hold`` after the grant)
    revision: int = 0  # the key's current revision (the last write; not stored in the body)

    def public(self) -> dict[str, object]:
        """What ``eventstore lock`` prints."""
        return {"name": self.name, "owner": self.owner, "token": self.token,
                "expires_at": self.expires_at.isoformat()}  # fmt: skip


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LeaseInfo).decode


@dataclass(eq=False)
class Lease:
    """A lease this process holds. ``token`` is its fencing token; ``lost`` turns True when a
    renewal failed or its deadline passed, and stays True."""

    name: str
    owner: str
    token: int
    ttl: float
    info: LeaseInfo
    deadline: float  # monotonic: the lease is surely ours until then
    _lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    @property
    def expires_at(self) -> datetime:
        return self.info.expires_at

    @property
    def lost(self) -> bool:
        if not self._lost.is_set() and time.monotonic() >= self.deadline:
            self.mark_lost("its TTL passed without a renewal")
        return self._lost.is_set()

    def mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.reason = reason
            self._lost.set()
            log.warning("lease lost", lease=self.name, token=self.token, reason=reason)

    async def wait_lost(self) -> None:
        """Return once the lease is lost (for a block that must stop at once)."""
        while not self.lost:
            with contextlib.suppress(TimeoutError):
                left = max(0.01, self.deadline - time.monotonic())
                await asyncio.wait_for(self._lost.wait(), left)

    def check(self) -> None:
        """``LeaseLost`` unless the lease is still held: call before acting under it."""
        if self.lost:
            raise LeaseLost(self.name, self.token, self.reason)


def fenced_events(events: Sequence[NewEvent] | NewEvent, lease: Lease) -> list[NewEvent]:
    """The events with the lease's name and token in their metadata (``LeaseLost`` if it is
    lost): what ``EventStore.append(..., lease=)`` stores, and what projections fence on."""
    lease.check()
    batch = [events] if isinstance(events, NewEvent) else list(events)
    stamp = {"name": lease.name, "token": lease.token}
    return [msgspec.structs.replace(e, metadata={**e.metadata, "lease": stamp}) for e in batch]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
        raise InvalidEvent(f"lease name {name!r} must be 1-128 printable characters")
    return name


def _check_seconds(value: float, what: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise InvalidEvent(f"{what} must be a number of seconds >= {low:g}, got {value!r}")
    return float(value)


class Leases:
    """The leases of one log: acquire, renew, release, show, and ``lock`` (all of it)."""

    def __init__(
        self, nc: Client, js: JetStreamContext, stream: str, *, url: str = "", replicas: int = 1
    ) -> None:
        self._nc, self._js, self.url = nc, js, url
        self.replicas = replicas  # the bucket's copies when it is created: the log's
        self.bucket = lease_bucket(stream)
        self.stream = f"KV_{self.bucket}"
        self._prefix = f"$KV.{self.bucket}."
        self._ready = False

    def subject(self, key: str) -> str:
        return self._prefix + key

    async def ensure(self) -> None:
        """Create the bucket (history 1, per-message TTL allowed) if it does not exist."""
        if self._ready:
            return
        with translating(what=f"opening lease bucket {self.bucket}", url=self.url, timeout=5.0):
            if await stream_info(self._js, self.stream) is None:
                config = StreamConfig(
                    name=self.stream, subjects=[self._prefix + ">"], max_msgs_per_subject=1,
                    storage=StorageType.FILE, allow_msg_ttl=True, allow_direct=True,
                    allow_rollup_hdrs=True, deny_delete=True, num_replicas=self.replicas,
                )  # fmt: skip
                with contextlib.suppress(Exception):  # created concurrently: look again
                    await add_stream(self._js, config)
                if await stream_info(self._js, self.stream) is None:
                    await add_stream(self._js, config)
        self._ready = True

    # -- the raw key: read, compare-and-set ------------------------------------------------

    async def read(self, key: str) -> tuple[int, bytes | None]:
        """(revision, value) of a key: revision 0 when it has no message, value None when its
        message is a release (or a value this code cannot read)."""
        await self.ensure()
        with translating(what=f"reading {key} of {self.bucket}", url=self.url, timeout=5.0):
            msg = await last_msg(self._js, self.stream, self.subject(key))
        if msg is None:
            return 0, None
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            return int(msg.seq or 0), None
        return int(msg.seq or 0), msg.data

    async def write(
        self, key: str, value: bytes, revision: int, *, ttl: float | None = None,
        delete: bool = False,
    ) -> int | None:  # fmt: skip
        """Write the key if its revision is still ``revision``: the new revision, or None when
        another writer came first (or the message expired in between)."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
        if ttl is not None:
            # Whole seconds, rounded up: the server holds it at least as long as the holder
            # counts on (its deadline runs from before the write, the server's from after).
            headers["Nats-TTL"] = f"{math.ceil(max(MIN_TTL, ttl))}s"
        if delete:
            headers["KV-Operation"] = "DEL"
        subject = self.subject(key)
        with translating(what=f"writing {key} of {self.bucket}", url=self.url, timeout=5.0):
            got = parse_ack(await request(self._nc, subject, value, headers, 5.0))
        if isinstance(got, Refusal):
            if got.code == WRONG_LAST_SEQUENCE:
                return None
            raise LeaseUnavailable(key, "", None, f"the server refused: {got.description}")
        return got.seq

    # -- leases ----------------------------------------------------------------------------

    async def current(self, name: str) -> LeaseInfo | None:
        """The lease ``name`` as the server holds it now, or None when nobody holds it."""
        revision, value = await self.read(_LOCK + encode_id(_check_name(name)))
        if value is None:
            return None
        try:
            info = _decode(value)
        except msgspec.DecodeError:
            return None
        return msgspec.structs.replace(info, token=info.token or revision, revision=revision)

    async def show(self, name: str | None = None) -> list[LeaseInfo]:
        """The lease ``name`` (none or one), or every lease held now, by name."""
        if name is not None:
            info = await self.current(name)
            return [] if info is None else [info]
        await self.ensure()
        with translating(what=f"listing {self.bucket}", url=self.url, timeout=5.0):
            si = await self._js.stream_info(self.stream, subjects_filter=self._prefix + _LOCK + ">")
        names = [decode_id(s[len(self._prefix + _LOCK) :]) for s in (si.state.subjects or {})]
        found = [await self.current(n) for n in sorted(names)]
        return [i for i in found if i is not None]

    async def acquire(
        self, name: str, *, owner: str, ttl: float = DEFAULT_LEASE_TTL, wait: float = 0.0,
        max_hold: float = DEFAULT_MAX_HOLD,
    ) -> Lease:  # fmt: skip
        """Take the lease ``name`` for ``ttl`` seconds, waiting up to ``wait`` seconds for its
        holder to release it or die; ``LeaseUnavailable`` (naming the holder) if it cannot."""
        key = _LOCK + encode_id(_check_name(name))
        max_hold = _check_seconds(max_hold, "max_hold", MIN_TTL)
        ttl = min(_check_seconds(ttl, "ttl", MIN_TTL), max_hold)
        give_up = time.monotonic() + _check_seconds(wait, "wait")
        if not isinstance(owner, str) or not owner or not owner.isprintable():
            raise InvalidEvent(f"lease owner {owner!r} must be a non-empty printable string")
        while True:
            revision, value = await self.read(key)
            holder = None if value is None else _safe(value)
            if holder is not None and holder.expires_at < datetime.now(UTC) - _SKEW:
                holder = None  # the server has not expired it yet: its time is over
            if holder is None:
                sent = time.monotonic()
                now = datetime.now(UTC)
                info = LeaseInfo(name=name, owner=owner, acquired_at=now,
                                 expires_at=now + timedelta(seconds=ttl),
                                 max_until=now + timedelta(seconds=max_hold))  # fmt: skip
                new = await self.write(key, _encode(info), revision, ttl=ttl)
                if new is not None:
                    info = msgspec.structs.replace(info, token=new, revision=new)
                    log.info("lease acquired", lease=name, owner=owner, token=new)
                    return Lease(name, owner, new, ttl, info, sent + ttl)
                continue  # someone else wrote it first: look again
            if time.monotonic() >= give_up:
                raise LeaseUnavailable(name, holder.owner, holder.expires_at,
                                       f"held by {holder.owner!r}")  # fmt: skip
            await asyncio.sleep(min(_POLL, max(0.0, give_up - time.monotonic())))

    async def renew(self, lease: Lease) -> Lease:
        """Extend the lease by its TTL (never past its ``max_hold``); ``LeaseLost`` (and the
        lease marked lost) when it is no longer this holder's."""
        lease.check()
        key = _LOCK + encode_id(lease.name)
        now = datetime.now(UTC)
        remaining = (lease.info.max_until - now).total_seconds()
        if remaining < MIN_TTL:
            lease.mark_lost("its maximum hold time is over")
            lease.check()
        ttl = min(lease.ttl, remaining)
        info = msgspec.structs.replace(lease.info, token=lease.token,
                                       expires_at=now + timedelta(seconds=ttl))  # fmt: skip
        sent = time.monotonic()
        new = await self.write(key, _encode(info), lease.info.revision, ttl=ttl)
        if new is None:
            lease.mark_lost("another holder took it (it expired)")
            lease.check()
        lease.info = msgspec.structs.replace(info, revision=new or 0)
        lease.deadline = sent + ttl
        return lease

    async def release(self, name: str, token: int) -> None:
        """Give the lease back, if ``token`` is still the current grant's; ``LeaseLost`` when
        it is not (a holder that lost its lease cannot release the next holder's)."""
        key = _LOCK + encode_id(_check_name(name))
        while True:
            info = await self.current(name)
            if info is None or info.token != token:
                held = "nobody holds it" if info is None else f"its token is now {info.token}"
                raise LeaseLost(name, token, f"not released: {held}")
            if await self.write(key, b"", info.revision, delete=True) is not None:
                log.info("lease released", lease=name, token=token)
                return

    @contextlib.asynccontextmanager
    async def lock(
        self, name: str, *, owner: str, ttl: float = DEFAULT_LEASE_TTL, wait: float = 0.0,
        max_hold: float = DEFAULT_MAX_HOLD,
    ) -> AsyncIterator[Lease]:  # fmt: skip
        """Hold ``name`` for the block, renewed in the background every third of its TTL. A
        lease lost meanwhile shows as ``lease.lost``, fails appends made with it, and raises
        ``LeaseLost`` when the block ends (no silent split brain); released on exit."""
        lease = await self.acquire(name, owner=owner, ttl=ttl, wait=wait, max_hold=max_hold)
        renewer = asyncio.create_task(self.keep(lease))
        try:
            yield lease
        finally:
            await cancel_and_wait(renewer)
            if not lease.lost:
                with contextlib.suppress(LeaseLost):
                    await self.release(name, lease.token)
        lease.check()

    async def keep(self, lease: Lease) -> None:
        """Renew until lost (run it as a task; ``lock`` does): a failing renewal is tried again
        until the deadline passes."""
        while not lease.lost:
            await asyncio.sleep(max(0.05, lease.ttl / 3))
            try:
                await self.renew(lease)
            except LeaseLost:
                return
            except Exception as exc:  # the server unreachable: the deadline decides
                log.warning("lease renewal failed", lease=lease.name, error=str(exc))


def _safe(value: bytes) -> LeaseInfo | None:
    try:
        return _decode(value)
    except msgspec.DecodeError:
        return None
