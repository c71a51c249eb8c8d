"""The console's one connection to NATS, and what it samples in the background.

The console never opens a projection's SQLite file: everything comes from the log
(``EventStore``'s reader: the tail, one aggregate's events and their clocks, the stream's
info) and from the workers (``ProjectionClient``: states, lists, history, status; ``$SRV.PING``:
who serves). ``Backend.store()`` connects lazily and keeps the connection, which nats-py
re-establishes by itself after a server restart; until it is up every page says so (503)
instead of failing, and the sampler just tries again at its next tick.

The sampler keeps the last minutes of the head, of every projection's checkpoint and lag, for
the overview's plots; the census follows the whole log once to count the conflicts (an event
whose vector clock is concurrent with the previous event of its aggregate, the rule the folds
use) and the messages no fold can take (quarantined everywhere), as the log alone says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import msgspec
import structlog

from consumers.client import ProjectionClient
from consumers.console.settings import ConsoleSettings
from eventstore import (
    EventStore,
    EventStoreError,
    Malformed,
    NotConnected,
    StreamSettings,
    VectorClock,
    cancel_and_wait,
)

__all__ = ["Backend", "Sample"]

log = structlog.get_logger("consumers.console")

_CONNECT_TIMEOUT = 5.0
_PING_WAIT = 0.3  # seconds to collect $SRV.PING answers
_json = msgspec.json.Decoder()


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One tick of the overview's plots."""

    t: float  # unix time
    head: int
    checkpoints: dict[str, int]
    lags: dict[str, int]
    # The worker's own figures (the query service's status), per projection.
    conflicts: dict[str, int | None] = {}
    quarantined: dict[str, int | None] = {}


class Census:
    """Conflicts and undecodable messages of the whole log, counted as it grows."""

    def __init__(self) -> None:
        self.seq = 0
        self.conflicts = 0
        self.quarantined = 0
        self._clocks: dict[tuple[str, str], dict[str, int]] = {}

    def malformed(self, skipped: Malformed) -> None:
        self.quarantined += 1
        self.seq = max(self.seq, skipped.seq)

    def add(self, aggregate: tuple[str, str], vclock: dict[str, int], seq: int) -> None:
        previous = self._clocks.get(aggregate)
        if previous is not None and VectorClock(vclock).concurrent_with(previous):
            self.conflicts += 1
        self._clocks[aggregate] = vclock
        self.seq = seq


class Backend:
    """The console's connection, client and background samples (see the module doc)."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.samples: deque[Sample] = deque(maxlen=settings.samples)
        self.census = Census()
        self.services: list[dict[str, Any]] = []
        self._store: EventStore | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start sampling (connecting is tried at once, and again at every tick)."""
        self._tasks = [
            asyncio.create_task(self._sampler(), name="console-sampler"),
            asyncio.create_task(self._censor(), name="console-census"),
        ]

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()
            self._store = None

    # -- the connection --------------------------------------------------------------------

    async def store(self) -> EventStore:
        """The connected store; ``NotConnected`` while no server answers."""
        if self._store is not None:
            if not self._store.nc.is_connected:
                raise NotConnected(self.settings.url, "the connection is re-establishing")
            return self._store
        async with self._lock:
            if self._store is None:
                s = self.settings
                try:
                    self._store = await asyncio.wait_for(
                        EventStore.connect(
                            s.url,
                            producer="console",
                            stream=StreamSettings(name=s.stream, prefix=s.prefix),
                            ensure=False,  # read-only: never creates or changes the stream
                            presence=False,
                            creds=s.creds,
                            tls_ca=s.tls_ca,
                        ),
                        _CONNECT_TIMEOUT,
                    )
                except TimeoutError as exc:
                    raise NotConnected(s.url, "nothing answered") from exc
                log.info("console connected", url=s.url, stream=s.stream)
        assert self._store is not None
        return self._store

    async def client(self) -> ProjectionClient:
        return ProjectionClient(await self.store(), projection=self.settings.projection)

    # -- what the overview shows -----------------------------------------------------------

    async def stream_info(self) -> dict[str, Any]:
        """The stream's messages, bytes, first and last sequence and time (the server's own
        ``STREAM.INFO``: nats-py's struct drops the times)."""
        store = await self.store()
        msg = await store.nc.request(f"$JS.API.STREAM.INFO.{self.settings.stream}", b"", 5)
        info = _json.decode(msg.data)
        if "error" in info:
            raise EventStoreError(
                f"stream {self.settings.stream}: {info['error'].get('description', 'unknown')}"
            )
        state = info.get("state", {})
        return {
            "name": self.settings.stream,
            "messages": state.get("messages", 0),
            "bytes": state.get("bytes", 0),
            "first_seq": state.get("first_seq", 0),
            "last_seq": state.get("last_seq", 0),
            "first_time": state.get("first_ts"),
            "last_time": state.get("last_ts"),
            "created": info.get("created"),
        }

    async def ping(self) -> list[dict[str, Any]]:
        """Every service that answers ``$SRV.PING`` within a moment."""
        nc = (await self.store()).nc
        inbox = nc.new_inbox()
        found: list[dict[str, Any]] = []

        async def got(msg: Any) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                found.append(_json.decode(msg.data))

        sub = await nc.subscribe(inbox, cb=got)
        try:
            await nc.publish("$SRV.PING", b"", reply=inbox)
            await nc.flush()
            await asyncio.sleep(_PING_WAIT)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        found.sort(key=lambda s: (str(s.get("name")), str(s.get("id"))))
        return found

    def projections(self) -> list[str]:
        """The projections the stream's services announce (the console's own first)."""
        names = {self.settings.projection}
        for svc in self.services:
            meta = svc.get("metadata") or {}
            if meta.get("stream") == self.settings.stream:
                names.update(p for p in str(meta.get("projections", "")).split(",") if p)
        return sorted(names)

    async def sample(self) -> Sample:
        """One tick: the head and every projection's checkpoint and lag."""
        store = await self.store()
        self.services = await self.ping()
        client = await self.client()
        checkpoints: dict[str, int] = {}
        lags: dict[str, int] = {}
        conflicts: dict[str, int | None] = {}
        quarantined: dict[str, int | None] = {}
        for name in self.projections():
            with contextlib.suppress(EventStoreError):
                st = await client.status(name)
                checkpoints[name], lags[name] = st.checkpoint, st.lag
                conflicts[name], quarantined[name] = st.conflicts, st.quarantined
        sample = Sample(t=time.time(), head=await store.head(), checkpoints=checkpoints,
                        lags=lags, conflicts=conflicts, quarantined=quarantined)  # fmt: skip
        self.samples.append(sample)
        return sample

    async def _sampler(self) -> None:
        while True:
            try:
                await self.sample()
            except (EventStoreError, OSError, TimeoutError) as exc:
                log.info("console sample failed", error=str(exc) or type(exc).__name__)
            except Exception as exc:  # a nats-py error mid-restart: try at the next tick
                log.info("console sample failed", error=repr(exc))
            await asyncio.sleep(self.settings.sample_every)

    async def _censor(self) -> None:
        """Follow the whole log once and for all, counting (reads resume after a restart)."""
        while True:
            try:
                store = await self.store()
                async for ev in store.follow(
                    self.census.seq + 1, on_malformed=self.census.malformed
                ):
                    self.census.add((ev.aggregate_type, ev.aggregate_id), ev.vclock, ev.seq)
            except Exception as exc:  # not connected yet, or the follow broke: again later
                log.info("console census paused", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(self.settings.sample_every)
