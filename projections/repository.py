"""Decide and append: load an aggregate's state, decide what follows, append it, never lose
a race silently.

``Repository.update(type, id, decide)`` loads the aggregate's state with its version and
vector clock, calls ``decide(state) -> list[NewEvent]`` and appends the events with
``expected_version`` (the server refuses them if anyone else appended first) and the state's
clock as causal context. On ``VersionConflict`` it loads again and decides anew, after an
exponential backoff with jitter, up to ``retries`` times; then the last conflict is raised.
Errors raised by ``decide`` pass through untouched: only conflicts are retried.

The state is exactly what a worker shows: the projection's fold (``projections.fold.Folder``)
with the rules stored with the log in force at each event. The load is consistent for
deciding a write: the aggregate's last sequence comes from the stream's leader, and the fold
reads on until it has reached it (a replica that lags is waited for, never believed). It
starts from the nearest snapshot of a local projection database when one is given, or from
the repository's own last fold of the aggregate, so a hot aggregate is not refolded from
version 1 on every update.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from eventstore import (
    AppendResult,
    EventStore,
    InvalidEvent,
    NewEvent,
    RequestTimeout,
    VersionConflict,
    check_int,
)
from projections.db import ProjectionDB
from projections.entities import EntitiesProjection
from projections.fold import AggregateState, Folder, MessageDecoder
from projections.projection import Projection
from projections.recorder import Recorder
from projections.rows import StateCodec
from projections.rulecheck import check_rules

__all__ = ["Loaded", "Repository", "Updated"]

Key = tuple[str, str]
Events = Sequence[NewEvent] | NewEvent
Decide = Callable[[Any], Events | Awaitable[Events]]
DecideMany = Callable[[dict[Key, "Loaded"]], Mapping[Key, Events] | Awaitable[Mapping[Key, Events]]]

_LAG_TRIES = 50  # loads that find the direct read behind the leader before giving up


class Loaded(msgspec.Struct, kw_only=True):
    """An aggregate's state as ``decide`` sees it: the fold up to its last event."""

    aggregate_type: str
    aggregate_id: str
    state: Any
    version: int  # 0: no events yet
    seq: int  # stream sequence of its last event (0: none)
    vclock: dict[str, int]  # merge of the clocks of every applied event: the causal context
    lamport: int


class Updated(msgspec.Struct, kw_only=True):
    """The outcome of an ``update``: the state after the appended events, and where they
    landed (``result`` is None when ``decide`` returned no events)."""

    aggregate_type: str
    aggregate_id: str
    state: Any
    version: int
    seq: int
    vclock: dict[str, int]
    result: AppendResult | None
    attempts: int  # decisions made: 1 + the conflicts retried


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    out = fn(*args)
    return await out if inspect.isawaitable(out) else out


def _events(value: Any, what: str) -> list[NewEvent]:
    if isinstance(value, NewEvent):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | Iterable):
        raise InvalidEvent(f"{what} must return a list of NewEvent, got {type(value).__name__}")
    return list(value)


class Repository:
    """Loads aggregates as a projection folds them, and appends what ``decide`` makes of
    them, retrying conflicts (see the module docstring). ``projection`` defaults to the
    built-in entities; ``db`` (optional) is a local projection database whose snapshots the
    loads start from."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection[Any] | None = None,
        db: ProjectionDB | None = None,
        *,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.projection = projection if projection is not None else EntitiesProjection()
        self.db = db
        self.folder = Folder(self.projection, store.rules)
        self.decoder = MessageDecoder(store.settings.prefix)
        self._recorder = Recorder(db) if db is not None else None
        self._codec = StateCodec(self.projection)
        self._rules_checked = db is None
        self._cache: OrderedDict[Key, tuple[AggregateState, int]] = OrderedDict()
        self.cache_size = cache_size

    # -- loading ---------------------------------------------------------------------------

    async def load(self, aggregate_type: str, aggregate_id: str) -> Loaded:
        """The aggregate's current state, version and vector clock (version 0 and the
        projection's initial state when it has no events yet)."""
        agg, _ = await self._load((aggregate_type, aggregate_id))
        return _loaded(agg)

    async def _load(self, key: Key) -> tuple[AggregateState, int]:
        """(fold, last seq read) of ``key`` up to its last message on the leader."""
        subject = self.store.subject(*key)  # InvalidEvent for a malformed type or id
        delay = 0.005
        for _ in range(_LAG_TRIES):
            last = await self.store.reader.last_seq(subject)
            agg, position = await self._start(key, last)
            agg, position = await self._fold(agg, position, last)
            if position >= last:
                return agg, position
            await asyncio.sleep(delay)  # the direct read is behind the leader: wait for it
            delay = min(delay * 2, 0.2)
        raise RequestTimeout(
            f"a consistent read of {key[0]}/{key[1]} (the stream's replicas stay behind its "
            "leader)",
            _LAG_TRIES * 0.2,
        )

    async def _start(self, key: Key, last: int) -> tuple[AggregateState, int]:
        cached = self._cache.get(key)
        if cached is not None and cached[1] <= last:
            return dataclasses.replace(cached[0]), cached[1]
        if self._recorder is not None and self.db is not None:
            if not self._rules_checked:
                await check_rules(self.db, self.store.rules)  # its snapshots mean the log's
                self._rules_checked = True
            snap = await self._recorder.nearest_snapshot(self._codec, *key, seq=last)
            if snap is not None:
                return snap, snap.seq
        return self.folder.new(key), 0

    async def _fold(
        self, agg: AggregateState, position: int, last: int
    ) -> tuple[AggregateState, int]:
        """``agg`` fed its messages after ``position`` up to ``last``; remembered."""
        key = agg.key
        if position < last:
            async for batch in self.store.raw_aggregate(*key, position + 1, last):
                for msg in batch:
                    if msg.seq > last:
                        break
                    self.folder.feed(agg, msg, key, self.decoder)
                    position = msg.seq
        self._cache[key] = (dataclasses.replace(agg), position)
        self._cache.move_to_end(key)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return agg, position

    # -- deciding and appending ------------------------------------------------------------

    async def update(
        self,
        aggregate_type: str,
        aggregate_id: str,
        decide: Decide,
        *,
        retries: int = 10,
        backoff: float = 0.005,
        max_backoff: float = 0.5,
    ) -> Updated:
        """Load, ``decide(state)`` (sync or async; it must not mutate the state), append the
        events at the loaded version; on ``VersionConflict`` back off (exponential, with
        jitter, from ``backoff`` up to ``max_backoff`` seconds) and do it all again, at most
        ``retries`` times, then raise the last conflict. An empty list appends nothing."""
        check_int(retries, "retries")
        key = (aggregate_type, aggregate_id)
        delay = backoff
        attempt = 0
        while True:
            attempt += 1
            agg, position = await self._load(key)
            events = _events(await _call(decide, agg.state), "decide")
            if not events:
                return _updated(agg, None, attempt)
            try:
                result = await self.store.append(
                    *key, events, expected_version=agg.version, context=agg.clock()
                )
            except VersionConflict:
                if attempt > retries:
                    raise
                delay = await _sleep(delay, max_backoff)
                continue
            agg, _ = await self._fold(agg, position, result.last_seq)
            return _updated(agg, result, attempt)

    async def update_many(
        self,
        keys: Iterable[Key],
        decide: DecideMany,
        *,
        retries: int = 10,
        backoff: float = 0.005,
        max_backoff: float = 0.5,
    ) -> dict[Key, Updated]:
        """Decide over several aggregates at once: ``decide({key: Loaded})`` returns
        ``{key: events}`` and all of them are appended in one transaction (all or nothing),
        each at its loaded version; a conflict on any of them retries the whole decision,
        as ``update`` does. Aggregates read but given no events are not checked: to make the
        decision depend on them too, append to them or use ``store.transaction()`` with
        ``expect_nothing_new``."""
        check_int(retries, "retries")
        wanted = list(dict.fromkeys(keys))
        delay = backoff
        attempt = 0
        while True:
            attempt += 1
            got = await asyncio.gather(*(self._load(k) for k in wanted))
            aggs = dict(zip(wanted, got, strict=True))
            decided = await _call(decide, {k: _loaded(a) for k, (a, _) in aggs.items()})
            if not isinstance(decided, Mapping) or not set(decided) <= set(aggs):
                raise InvalidEvent(
                    "decide must return a mapping of the given (type, id) keys to events"
                )
            plan = {k: _events(v, "decide") for k, v in decided.items()}
            plan = {k: v for k, v in plan.items() if v}
            results: dict[Key, AppendResult] = {}
            if plan:
                try:
                    async with self.store.transaction() as tx:
                        for k, evs in plan.items():
                            agg = aggs[k][0]
                            tx.append(
                                k[0], k[1], evs, expected_version=agg.version, context=agg.clock()
                            )
                except VersionConflict:
                    if attempt > retries:
                        raise
                    delay = await _sleep(delay, max_backoff)
                    continue
                results = dict(zip(plan, tx.results, strict=True))
            out: dict[Key, Updated] = {}
            for k, (agg, position) in aggs.items():
                if k in results:
                    agg, _ = await self._fold(agg, position, results[k].last_seq)
                out[k] = _updated(agg, results.get(k), attempt)
            return out


async def _sleep(delay: float, ceiling: float) -> float:
    """Sleep about ``delay`` (jitter: 0.5x to 1.5x) and return the next delay."""
    await asyncio.sleep(delay * (0.5 + random.random()))
    return min(delay * 2, ceiling)


def _loaded(agg: AggregateState) -> Loaded:
    return Loaded(
        aggregate_type=agg.aggregate_type,
        aggregate_id=agg.aggregate_id,
        state=agg.state,
        version=agg.version,
        seq=agg.seq,
        vclock=agg.clock(),
        lamport=agg.lamport,
    )


def _updated(agg: AggregateState, result: AppendResult | None, attempts: int) -> Updated:
    return Updated(
        aggregate_type=agg.aggregate_type,
        aggregate_id=agg.aggregate_id,
        state=agg.state,
        version=agg.version,
        seq=agg.seq,
        vclock=agg.clock(),
        result=result,
        attempts=attempts,
    )
