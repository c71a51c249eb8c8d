"""Reactors (process managers): user code that reacts to events by appending new events, run
exactly once across all workers.

A reactor subclasses ``Reactor``: a ``name``, the event ``handles`` (type names) and
``react(event) -> list[AppendRequest]`` (sync or async). ``eventstore worker --reactor
module:object`` runs it beside the projections; every worker that names it competes for the
lease ``reactor:<name>`` (``eventstore.leases``): one is active, the others stand by and take
over within the lease's TTL when it dies.

Exactly-once effect without a distributed transaction:

- the ids of a reaction's events are derived from the triggering event's id (UUIDv5 of reactor,
  trigger, request and position), so a reaction retried after a crash or a takeover is the same
  append again, which the store recognises (inside the dedup window by the server, after it by
  looking at what is stored);
- its ``causation_id`` is the trigger (``correlation_id``: the trigger's, else the trigger), and
  its causal context merges the trigger's vector clock;
- the checkpoint (the last stream sequence handled, written every ``CHECKPOINT_EVERY`` seconds
  and on stop) lives in the lease bucket, not in a local file, so the worker that takes over on
  another host resumes where the last one got to; a trigger after the checkpoint is reacted to
  again, and its reaction is stored once.

Appends are made under the lease (``append(..., lease=)``): a reactor that lost its lease stops
at its next append with ``LeaseLost`` and goes back to standing by.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import ClassVar

import msgspec

from eventstore import (
    AppendRequest,
    ConfigError,
    Event,
    EventStore,
    EventStoreError,
    Lease,
    LeaseLost,
    LeaseUnavailable,
    NewEvent,
    VectorClock,
    VersionConflict,
    cancel_and_wait,
    encode_id,
    get_logger,
)
from projections import import_object, make_without_arguments

__all__ = ["Reactor", "ReactorRunner", "load_reactor", "load_reactors", "reaction_id"]

log = get_logger("consumers.reactors")

CHECKPOINT_EVERY = 1.0  # seconds between checkpoint writes while reacting
_NAMESPACE = uuid.UUID("6f1b1c52-1f5e-4a8e-9a59-7d0e6f5b2c13")  # of reaction ids; never change it


class Reactor:
    """Subclass it: set ``name`` and ``handles``, override ``react``.

    ``react`` gets each event of a handled type once per attempt, in log order, and returns the
    appends to make (``AppendRequest``); it may be ``async``. It must be a function of the event
    (and of state it reads): after a crash it is called again for the same trigger, and only
    the events it returns then, with the same derived ids, are stored once.
    """

    name: ClassVar[str] = ""
    handles: ClassVar[frozenset[str] | set[str]] = frozenset()
    lease_ttl: ClassVar[float] = 10.0  # seconds: how fast a standby takes over a dead worker
    period: ClassVar[float] = 0.0  # seconds between calls of ``on_period`` (0: never)
    store: EventStore | None = None  # the store it runs on, set by ``ReactorRunner``

    def wants(self, event: Event) -> bool:
        """Whether ``event`` triggers a reaction (default: its type is in ``handles``)."""
        return event.type in self.handles

    def react(self, event: Event) -> list[AppendRequest] | Awaitable[list[AppendRequest]]:
        raise NotImplementedError

    async def on_period(self) -> list[tuple[str, list[AppendRequest]]]:
        """Every ``period`` seconds while active: ``(key, appends)`` pairs; the key stands in
        for a trigger id in the derived ids (make it name the state acted on)."""
        return []


def reaction_id(reactor: str, trigger: str, request: int, position: int) -> str:
    """The id of event ``position`` of append ``request`` of ``reactor``'s reaction to
    ``trigger``: the same on every retry, on every host."""
    return str(uuid.uuid5(_NAMESPACE, f"{reactor}\x00{trigger}\x00{request}\x00{position}"))


def load_reactor(spec: str) -> Reactor:
    """The ``Reactor`` a ``module:object`` names (an instance, or a subclass made with no
    arguments); ``ConfigError`` for anything else, or one without a name or handled types."""
    obj = import_object(spec, "reactor")
    if isinstance(obj, type) and issubclass(obj, Reactor):
        obj = make_without_arguments(obj, spec, "reactor")
    if not isinstance(obj, Reactor):
        raise ConfigError(f"reactor {spec!r} is not a Reactor (a subclass or an instance)")
    if not obj.name or (not obj.handles and type(obj).wants is Reactor.wants):
        raise ConfigError(f"reactor {spec!r} needs a non-empty `name` and `handles`")
    return obj


class _Checkpoint(msgspec.Struct):
    seq: int = 0
    token: int = 0


_ckpt_decode = msgspec.json.Decoder(_Checkpoint).decode
_ckpt_encode = msgspec.json.Encoder().encode


class ReactorRunner:
    """Runs one reactor on a store: stands by for its lease, reacts while it holds it."""

    def __init__(self, store: EventStore, reactor: Reactor, *, owner: str | None = None) -> None:
        self.store = store
        self.reactor = reactor
        reactor.store = store
        self.lease_name = f"reactor:{reactor.name}"
        self.owner = owner or f"{store.producer}@{socket.gethostname()}:{os.getpid()}"
        self.key = f"reactor.{encode_id(reactor.name)}"
        self.active = False
        self.reactions = 0  # triggers reacted to by this runner
        self._unsaved: int | None = None  # the last trigger reacted to, not checkpointed yet
        self._revision = 0  # the checkpoint key's revision
        self.log = log.bind(reactor=reactor.name, owner=self.owner)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Stand by and react, taking the lease whenever it is free, until ``stop`` is set."""
        leases = self.store.leases
        while not stop.is_set():
            try:
                lease = await leases.acquire(self.lease_name, owner=self.owner,
                                             ttl=self.reactor.lease_ttl, wait=1.0)  # fmt: skip
            except LeaseUnavailable:
                continue
            except EventStoreError as exc:  # the server away: stand by and try again
                self.log.warning("reactor cannot take its lease", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            self.active = True
            self.log.info("reactor active", token=lease.token)
            keeper = asyncio.create_task(leases.keep(lease))
            try:
                await self._while_held(lease, stop)
                await self.save(lease)
            except LeaseLost as exc:
                self.log.warning("reactor lost its lease", error=str(exc))
            except EventStoreError as exc:
                self.log.warning("reactor stopped reacting", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                self.active = False
                await cancel_and_wait(keeper)
                if not lease.lost:
                    with contextlib.suppress(EventStoreError):
                        await leases.release(self.lease_name, lease.token)

    async def _while_held(self, lease: Lease, stop: asyncio.Event) -> None:
        """React from the checkpoint on until ``stop`` or the lease is lost."""
        workers = {asyncio.create_task(self._react_from_checkpoint(lease))}
        if self.reactor.period > 0:
            workers.add(asyncio.create_task(self._periodically(lease)))
        waits = workers | {asyncio.create_task(stop.wait()), asyncio.create_task(lease.wait_lost())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*waits)
            for work in workers:
                if not work.cancelled() and (failure := work.exception()) is not None:
                    raise failure

    async def checkpoint(self) -> tuple[int, int]:
        """(last stream sequence handled, the key's revision)."""
        revision, value = await self.store.leases.read(self.key)
        seq = 0
        if value:
            with contextlib.suppress(msgspec.DecodeError):
                seq = _ckpt_decode(value).seq
        return seq, revision

    async def _save(self, seq: int, lease: Lease, revision: int) -> int:
        """Store the checkpoint (never moving it back); the key's new revision."""
        while True:
            lease.check()
            new = await self.store.leases.write(
                self.key, _ckpt_encode(_Checkpoint(seq, lease.token)), revision
            )
            if new is not None:
                return new
            stored, revision = await self.checkpoint()  # written meanwhile: keep the larger
            seq = max(seq, stored)

    async def _react_from_checkpoint(self, lease: Lease) -> None:
        seq, self._revision = await self.checkpoint()
        self.log.info("reactor resumes", checkpoint=seq)
        saved = time.monotonic()
        async for event in self.store.follow(from_seq=seq + 1):
            if self.reactor.wants(event):
                await self.react(event, lease)
                self._unsaved = event.seq
                self.reactions += 1
                if time.monotonic() - saved >= CHECKPOINT_EVERY:
                    await self.save(lease)
                    saved = time.monotonic()

    async def save(self, lease: Lease) -> None:
        """Store the checkpoint of what was reacted to (if anything new), while the lease is
        held: a stop saves it, a crash leaves at most ``CHECKPOINT_EVERY`` seconds of triggers
        to react to again (stored once: the ids are the same)."""
        if self._unsaved is not None and not lease.lost:
            self._revision = await self._save(self._unsaved, lease, self._revision)
            self._unsaved = None

    async def react(self, trigger: Event, lease: Lease) -> None:
        """Call the reactor on ``trigger`` and append what it returns, with derived ids."""
        got = self.reactor.react(trigger)
        requests = await got if inspect.isawaitable(got) else got
        await self._append(trigger.id, trigger, requests or [], lease)

    async def _periodically(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.reactor.period)
            for key, requests in await self.reactor.on_period():
                await self._append(key, None, requests, lease)

    async def _append(
        self, key: str, trigger: Event | None, requests: list[AppendRequest], lease: Lease
    ) -> None:
        """Append a reaction's requests, ids derived from ``key``. One refused with
        ``VersionConflict`` is dropped (logged): the event that moved the aggregate on
        triggers the reactor again, from the new state."""
        for j, request in enumerate(requests):
            events = [self._derived(e, key, trigger, j, i) for i, e in enumerate(request.events)]
            context = VectorClock(request.context or {})
            if trigger is not None:
                context = context.merge(trigger.vclock)
            try:
                await self.store.append(request.aggregate_type, request.aggregate_id, events,
                                        expected_version=request.expected_version,
                                        context=context, lease=lease)  # fmt: skip
            except VersionConflict as exc:
                self.log.info("reaction dropped", trigger=key, error=str(exc))

    def _derived(
        self, event: NewEvent, key: str, trigger: Event | None, j: int, i: int
    ) -> NewEvent:
        correlation = trigger.correlation_id or trigger.id if trigger is not None else None
        return msgspec.structs.replace(
            event,
            id=event.id or reaction_id(self.reactor.name, key, j, i),
            causation_id=event.causation_id or (trigger.id if trigger is not None else None),
            correlation_id=event.correlation_id or correlation,
        )


def load_reactors(specs: Sequence[str]) -> list[Reactor]:
    """The reactors ``--reactor`` options name; two with one name are a ``ConfigError``."""
    reactors = [load_reactor(s) for s in specs]
    names = [r.name for r in reactors]
    if len(set(names)) != len(names):
        raise ConfigError(f"two reactors share a name: {sorted(names)}")
    return reactors
