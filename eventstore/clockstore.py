"""Reserving a producer's clock values so that a restart never reuses one.

The CLI's ``publish`` is a new process every time, and an agent may crash at any moment, so a
producer cannot keep its Lamport time and its own vector-clock counter in memory only. Before
it uses a value it reserves a block of them in a JetStream key-value bucket (compare-and-set
on the revision); after a restart it starts above everything it had reserved. Unused values in
a block are skipped, which keeps the counters strictly increasing, only not dense. The bucket
is first touched by the first append, so a client that only reads (a projection worker, the
query commands) needs no access to it.

Blocks start small and grow: a connection's first reservation covers exactly the events of
its first append, each later one reserves twice the spare of the one before, up to ``block``.
So a restart skips at most what the previous connection reserved and did not use: nothing for
a process that appended once (``eventstore publish``), fewer values than it appended for any
other, and never more than ``block`` (1000 by default). Deriving the start from the log
instead (the producer's last event) would cost every append a round trip to find it; the
gaps do not affect causality, only the numbers: Lamport times and counters compare, they do
not count events.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.js import JetStreamContext

from eventstore.cancelling import cancel_and_wait
from eventstore.clocks import OBSERVE_MAX
from eventstore.errors import ServerError
from eventstore.jetstream import kv_get, kv_write, open_bucket, translating
from eventstore.logging import get_logger

__all__ = ["ProducerClock"]

log = get_logger("eventstore.clockstore")


class _Reserved(msgspec.Struct):
    lamport: int = 0
    counter: int = 0


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(_Reserved)


def bucket_name(stream: str) -> str:
    return f"eventstore_clocks_{stream}"


class ProducerClock:
    """The Lamport time and own vector entry of one producer, backed by reservations."""

    def __init__(
        self, js: JetStreamContext, stream: str, producer: str, block: int = 1000,
        replicas: int = 1,
    ) -> None:  # fmt: skip
        self._js = js
        self.replicas = replicas  # the bucket's copies when it is created: the stream's
        self.bucket = bucket_name(stream)
        self._kv: Any = None  # opened at the first reservation: readers never touch the bucket
        self.producer = producer
        self.block = block
        self.lamport = 0  # last Lamport time used or observed
        self.counter = 0  # last own vector entry used
        self._reserved = _Reserved()
        self._revision: int | None = None
        self._spare = 0  # values reserved beyond the append at hand: 0, 1, 2, 4 ... block
        self._ahead: asyncio.Task[None] | None = None  # a reservation made before it is due

    async def _open(self) -> None:
        """Find (or create) the bucket and start above everything reserved before."""
        with translating(what=f"opening clock bucket {self.bucket}", url="", timeout=5.0):
            self._kv = await open_bucket(self._js, self.bucket, self.replicas)
        await self._load()
        self.lamport = max(self.lamport, self._reserved.lamport)
        self.counter = max(self.counter, self._reserved.counter)

    async def _load(self) -> None:
        with translating(what=f"reading clock bucket {self.bucket}", url="", timeout=5.0):
            entry = await kv_get(self._kv, self.producer)
        if entry is None:
            self._reserved, self._revision = _Reserved(), None
            return
        value, self._revision = entry
        self._reserved = _dec.decode(value) if value else _Reserved()

    def observe(self, lamport: int) -> None:
        """Lamport receive rule: never fall behind a time seen on an event read (a time above
        ``OBSERVE_MAX``, which only a raw client can have written, is not taken in)."""
        if lamport > OBSERVE_MAX:
            log.warning(
                "Lamport time above the observable ceiling ignored",
                producer=self.producer, lamport=lamport, ceiling=OBSERVE_MAX,
            )  # fmt: skip
            return
        if lamport > self.lamport:
            self.lamport = lamport

    def needs_reservation(self, events: int, observed: int = 0) -> bool:
        observed = observed if observed <= OBSERVE_MAX else 0
        if self._kv is None:
            return True
        top_l = max(self.lamport, observed) + events
        return top_l > self._reserved.lamport or self.counter + events > self._reserved.counter

    def reserve_ahead(self) -> None:
        """Start the next block's reservation in the background once less than half of the
        current one is left (full-size blocks only), so a steady writer never waits for the
        fsynced bucket write: it used to stop the write path for a round trip every ``block``
        events. The bound holds: at most ``block`` values are ever reserved beyond those used
        (the new high mark is taken from the values used when it starts)."""
        if self._kv is None or self._ahead is not None or self._spare < self.block:
            return
        left = min(self._reserved.lamport - self.lamport, self._reserved.counter - self.counter)
        if 2 * left >= self.block:
            return
        self._ahead = asyncio.get_running_loop().create_task(self._reserve_ahead())

    async def _reserve_ahead(self) -> None:
        try:
            await self._reserve(0, 0)
        except Exception as exc:  # the reservation when due says what is wrong, if anything
            log.debug("reserving clock values ahead failed", error=str(exc) or repr(exc))
        finally:
            self._ahead = None

    async def close(self) -> None:
        """Stop a reservation made ahead (its values are simply never used)."""
        if (ahead := self._ahead) is not None:
            await cancel_and_wait(ahead)
            self._ahead = None  # a task cancelled before it ran never reached its ``finally``

    async def reserve(self, events: int, observed: int = 0) -> None:
        """Make sure the next ``events`` ticks are covered by a persisted reservation."""
        if (ahead := self._ahead) is not None:  # one bucket write at a time
            await asyncio.shield(ahead)
            if not self.needs_reservation(events, observed):
                return
        await self._reserve(events, observed)

    async def _reserve(self, events: int, observed: int) -> None:
        observed = observed if observed <= OBSERVE_MAX else 0
        if self._kv is None:
            await self._open()
        for _ in range(20):
            want_l = max(self.lamport, observed) + events + self._spare
            want_c = self.counter + events + self._spare
            new = _Reserved(
                max(want_l, self._reserved.lamport), max(want_c, self._reserved.counter)
            )
            with translating(what=f"reserving clock values in {self.bucket}", url="", timeout=5.0):
                revision = await kv_write(self._kv, self.producer, _enc.encode(new), self._revision)
            if revision is None:
                # Another process of the same producer reserved meanwhile: start above it.
                await self._load()
                self.lamport = max(self.lamport, self._reserved.lamport)
                self.counter = max(self.counter, self._reserved.counter)
                continue
            self._reserved, self._revision = new, revision
            self._spare = min(self.block, max(1, 2 * self._spare))
            # While the write was on its way, an event read may have moved the Lamport time
            # past what it covers (``observe``, from a head lookup of another batch): then
            # reserve again from there, or the next tick would use an unreserved value.
            if not self.needs_reservation(events, observed):
                return
        raise ServerError(f"could not reserve clock values for producer {self.producer!r}")

    def tick(self, observed: int = 0) -> tuple[int, int]:
        """Next (Lamport time, own counter); the caller reserved them beforehand."""
        observed = observed if observed <= OBSERVE_MAX else 0
        self.lamport = max(self.lamport, observed) + 1
        self.counter += 1
        assert self.lamport <= self._reserved.lamport and self.counter <= self._reserved.counter
        return self.lamport, self.counter
