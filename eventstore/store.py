"""``EventStore``: the one object an agent holds to append to and read from the log.

It opens the connection (and is the only thing that does), makes sure the stream exists and is
immutable, reserves the producer's clock values, keeps the rules stored with the log current
(``eventstore.rulewatch``: its appends are checked against the machines in force), and hands
appends to the group committer and reads to the log reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore.clocks import VectorClock
from eventstore.clockstore import ProducerClock
from eventstore.collector import collecting_less
from eventstore.connecting import Callbacks, ConnectSettings, ensure_or_close, open_connection
from eventstore.counters import AppendCounters
from eventstore.duplicates import find_ids
from eventstore.errors import EventStoreError, InvalidEvent, NotConnected, VersionConflict
from eventstore.events import AppendResult, NewEvent, validate_producer
from eventstore.failfast import refused_publish
from eventstore.jetstream import close_connection
from eventstore.jsonvalues import show
from eventstore.leases import DEFAULT_LEASE_TTL, DEFAULT_MAX_HOLD, Lease, Leases, fenced_events
from eventstore.logging import get_logger
from eventstore.machines import Machines
from eventstore.pending import AppendRequest, Pending, checked_events, merge_context
from eventstore.presence import Presence
from eventstore.producer import Committer
from eventstore.reader import LogReader
from eventstore.reading import LogReading
from eventstore.rules import RuleBook, Rules, RuleVersion
from eventstore.rulewatch import RulesWatch
from eventstore.streams import StreamIdentity, StreamSettings, ensure_stream, stream_identity
from eventstore.transaction import Transaction

__all__ = ["DEFAULT_URL", "AppendRequest", "EventStore", "StreamIdentity"]

DEFAULT_URL = "nats://127.0.0.1:4222"

log = get_logger("eventstore.store")
_YIELD_EVERY = 64  # appends ``append_many`` builds between two turns of the event loop


class EventStore(LogReading):
    """Append to and read from the event log on one NATS connection.

    Use ``await EventStore.connect(url, producer="agent-1")`` or ``async with`` it.
    """

    def __init__(
        self,
        nc: Client,
        *,
        url: str,
        producer: str,
        settings: StreamSettings,
        append_timeout: float,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.url = url
        self.producer = producer
        self.settings = settings
        self.append_timeout = append_timeout
        self.reader = LogReader(nc, self._js, settings.name, settings.prefix, url)
        # ``machines``: in force now, what appends are checked against; ``rules``: every
        # version of the rules stored with the log. The watch keeps both current.
        self.machines = Machines()
        self._rules = RulesWatch(nc, self.reader, settings.prefix, self.machines)
        self.rules: RuleBook = self._rules.book
        self._committer: Committer | None = None
        self._one_copy = False  # the stream has one copy (known once ``ensure`` looked)
        self._closing = False
        self.presence: Presence | None = None  # this connection's claim on its producer name
        self.leases = Leases(nc, self._js, settings.name, url=url, replicas=settings.replicas)

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, url: str = DEFAULT_URL, *, settings: ConnectSettings | None = None, **options: Any
    ) -> EventStore:
        """Connect and ensure the stream (the producer's clock values are reserved by its first
        append). ``settings`` (see ``ConnectSettings``) or its fields as keyword arguments;
        keywords given override ``settings``. The rules stored with the log are read too."""
        opts = msgspec.structs.replace(settings or ConnectSettings(), **options)
        producer = opts.producer
        validate_producer(producer)
        stream = opts.stream
        settings_ = stream if isinstance(stream, StreamSettings) else StreamSettings(name=stream)
        callbacks = Callbacks(url)
        nc = await open_connection(url, opts, error_cb=callbacks.error,
                                   disconnected_cb=callbacks.disconnected,
                                   reconnected_cb=callbacks.reconnected)  # fmt: skip
        store = cls(nc, url=url, producer=producer, settings=settings_,
                    append_timeout=opts.append_timeout)  # fmt: skip
        callbacks.attach(store._permission_violation, lambda: store._closing)
        callbacks.on_reconnect = store._rules.poke
        if opts.presence:  # warns when another live connection uses this producer name
            store.presence = Presence(nc, settings_.name, producer)
            await store.presence.announce()
        if opts.ensure:
            await ensure_or_close(store.ensure, nc, url, callbacks)
        await ensure_or_close(store._rules.start, nc, url, callbacks)
        clock = ProducerClock(store._js, settings_.name, producer, opts.clock_block,
                              replicas=settings_.replicas)  # fmt: skip
        store._committer = Committer(nc, store._js, reader=store.reader, producer=producer,
                                     clock=clock, machines=store.machines, url=url,
                                     max_batch=opts.max_batch,
                                     direct_refresh=store._one_copy,
                                     guess_new=opts.guess_new)  # fmt: skip
        store._committer.start()
        return store

    def _permission_violation(self, text: str) -> bool:
        """A violation the server reported: reads of a refused subject fail fast from now on,
        and the committer fails the request it refused (False: no committer yet)."""
        if refused := refused_publish(text):
            self.reader.denied.add(refused.lower())
        if self._committer is None:
            return False
        self._committer.permission_violation(text)
        return True

    async def ensure(self) -> Any:
        """Create the stream, or check that the existing one keeps the log immutable."""
        info = await ensure_stream(self._js, self.settings, url=self.url)
        self._one_copy = (getattr(info.config, "num_replicas", 0) or 1) == 1
        return info

    async def close(self) -> None:
        self._closing = True
        await self._rules.close()
        if self._committer is not None:
            await self._committer.close()
        await close_connection(self._nc)

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def nc(self) -> Client:
        """The underlying nats-py connection (for services built on the same connection)."""
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self._js

    def _open_committer(self) -> Committer:
        """The committer of an open store; ``NotConnected`` once closed (or never connected)."""
        if self._committer is None or self._closing:
            detail = "the store is closed" if self._closing else "the store is not connected"
            raise NotConnected(self.url, f"{detail}; use `await EventStore.connect(...)`")
        return self._committer

    @property
    def vclock(self) -> VectorClock:
        """This producer's causal context: everything it has written or acted upon."""
        return self._open_committer().vclock

    @property
    def lamport(self) -> int:
        return self._open_committer().clock.lamport

    @property
    def counters(self) -> AppendCounters:
        """This store's append retries and version conflicts so far (read by metrics)."""
        return self._open_committer().counters

    # -- the rules -------------------------------------------------------------------------

    async def set_rules(
        self, rules: Rules, *, comment: str | None = None, expected_version: int | None = None
    ) -> RuleVersion:
        """Store ``rules`` (the whole set) as the next rules version, in force from its stream
        sequence on. It expects ``expected_version`` (default: the version this store has seen):
        of two concurrent setters one gets ``VersionConflict``, none overwrites silently."""
        return await self._rules.store(
            self._open_committer(), rules, comment, expected_version, self.append_timeout
        )

    async def refresh_rules(self) -> RuleBook:
        """Read every rules version stored so far into ``rules`` now, without waiting for the
        subscription's re-read (what an import of a trail holding rules changes needs before
        it folds or verifies on the same connection)."""
        await self._rules.refresh()
        return self.rules

    # -- appending -------------------------------------------------------------------------

    async def append(
        self,
        aggregate_type: str,
        aggregate_id: str,
        events: Sequence[NewEvent] | NewEvent,
        *,
        expected_version: int | None = None,
        context: VectorClock | Mapping[str, int] | None = None,
        timeout: float | None = None,
        lease: Lease | None = None,
    ) -> AppendResult:
        """Append events to one aggregate, all or nothing.

        ``expected_version=N`` (``0``: a new aggregate) fails with ``VersionConflict`` unless
        the aggregate is at version N; without it the append takes the next version whatever
        it is. ``context`` is the vector clock of the state the caller acted on. ``lease``: the
        events carry its name and fencing token (``LeaseLost`` if it is lost already).
        """
        if lease is not None:
            events = fenced_events(events, lease)
        pending = await self._pending(
            aggregate_type, aggregate_id, events, expected_version, context, timeout
        )
        if isinstance(pending, AppendResult):
            return pending
        try:
            return await self._open_committer().append(pending)
        except VersionConflict as exc:
            return await self._own_attempt(pending, exc)

    async def _own_attempt(self, pending: Pending, conflict: VersionConflict) -> AppendResult:
        """The stored copy when a conflict is with this append's own earlier attempt, else
        the conflict. An attempt whose answer was lost (a failover: the leader died after its
        replicas stored the batch) is found on the leader only after the committer looked, or
        by a caller's retry of a ``Retryable`` error with the same ids; either then meets its
        own event at the version it expected."""
        found = await find_ids(self.reader, pending.subject, [e.id or "" for e in pending.events])
        if found is None:
            raise conflict
        return found

    async def append_many(
        self, requests: Iterable[AppendRequest], *, timeout: float | None = None
    ) -> list[AppendResult | EventStoreError]:
        """Submit many appends at once so the committer packs them into few atomic batches.

        Each request succeeds or fails on its own; failures come back as the error object in
        its place, in the order given. While it runs, the garbage collector runs less often
        (``eventstore.collector``: the call holds thousands of objects, none in a cycle).
        """
        batch = list(requests)
        for r in batch:  # all checked before any is submitted
            if not isinstance(r, AppendRequest):
                raise InvalidEvent(f"append_many takes AppendRequest items, got {show(r)}")
        with collecting_less():
            return await self._append_many(batch, timeout)

    async def _append_many(
        self, requests: list[AppendRequest], timeout: float | None
    ) -> list[AppendResult | EventStoreError]:
        committer = self._open_committer()
        slots: list[AppendResult | asyncio.Future[AppendResult]] = []
        pendings: list[Pending | None] = []
        for i, r in enumerate(requests, 1):
            pending = await self._pending(
                r.aggregate_type, r.aggregate_id, r.events, r.expected_version, r.context, timeout
            )
            if isinstance(pending, Pending):
                committer.submit(pending)
                await committer.room()  # a full batch queued: it goes out while we go on
            if not i % _YIELD_EVERY:
                await asyncio.sleep(0)  # a batch ready to go is sent before we build more
            slots.append(pending.future if isinstance(pending, Pending) else pending)
            pendings.append(pending if isinstance(pending, Pending) else None)
        out: list[AppendResult | EventStoreError] = []
        for slot, p in zip(slots, pendings, strict=True):
            try:
                try:
                    out.append(slot if isinstance(slot, AppendResult) else await slot)
                except VersionConflict as exc:
                    if p is None:
                        raise
                    out.append(await self._own_attempt(p, exc))
            except EventStoreError as exc:
                out.append(exc)
        return out

    def transaction(self, *, timeout: float | None = None) -> Transaction:
        """Appends to several aggregates stored together or not at all: ``async with
        store.transaction() as tx: tx.append(...)`` (see ``eventstore.transaction``)."""
        committer = self._open_committer()
        return Transaction(committer, self.reader, self._pending, self.settings.prefix, timeout)

    async def _pending(
        self,
        aggregate_type: str,
        aggregate_id: str,
        events: Sequence[NewEvent] | NewEvent,
        expected_version: int | None,
        context: VectorClock | Mapping[str, int] | None,
        timeout: float | None,
    ) -> Pending | AppendResult:
        """Validate one append and build its request; an AppendResult if it is a known retry."""
        self._open_committer()
        if self._nc.is_closed:
            raise NotConnected(self.url, "connection closed")
        if (refusal := self._rules.refusal(aggregate_type)) is not None:
            raise refusal  # the reserved type, or rules this store was refused to read
        subject = self.subject(aggregate_type, aggregate_id)
        batch, chosen_ids = checked_events(events, expected_version)
        wait = self.append_timeout if timeout is None else timeout
        if chosen_ids:  # a retry of an append stored after the dedup window? Look first.
            found = await find_ids(self.reader, subject, [e.id or "" for e in batch])
            if found is not None:
                return found
        return Pending.new(aggregate_type, aggregate_id, subject, batch, expected_version,
                           merge_context(context), wait)  # fmt: skip

    def lock(
        self, name: str, *, owner: str | None = None, ttl: float = DEFAULT_LEASE_TTL,
        wait: float = 0.0, max_hold: float = DEFAULT_MAX_HOLD,
    ) -> contextlib.AbstractAsyncContextManager[Lease]:  # fmt: skip
        """``async with store.lock("realm:te_po", owner="kitenga", ttl=30, wait=10) as lease``:
        held and renewed for the block (see ``eventstore.leases``); owner: this producer."""
        return self.leases.lock(name, owner=owner or self.producer, ttl=ttl, wait=wait,
                                max_hold=max_hold)  # fmt: skip

    async def head(self) -> int:
        """The log's last stream sequence (0 when empty)."""
        return await self.reader.last_seq()

    async def stream_identity(self) -> StreamIdentity:
        """The stream's name and creation time, from the server (see ``StreamIdentity``)."""
        return await stream_identity(self._js, self.settings.name, url=self.url)

    async def version(self, aggregate_type: str, aggregate_id: str) -> int:
        """The aggregate's current version (0 if it has no events), from the server."""
        head = await self._open_committer().fetch_head(
            self.subject(aggregate_type, aggregate_id), aggregate_type
        )
        return head.version

    async def exists(self, aggregate_type: str, aggregate_id: str) -> bool:
        """Whether the aggregate's subject holds any message (valid event or not)."""
        self._open_committer()
        return await self.reader.last_seq(self.subject(aggregate_type, aggregate_id)) > 0
