"""The runner: folds the log into SQLite, one batch and one transaction at a time.

It reads the whole log from its checkpoint + 1 with ``EventStore.raw`` (an ordered consumer,
no durable consumer and no acks: the checkpoint lives in SQLite), folds a batch of messages in
memory, and commits states, snapshots, conflicts, quarantined messages, read models and the new
checkpoint in ONE transaction. Whatever crashes where, a batch is either committed with its
checkpoint or not at all and read again: every event takes effect exactly once.

A batch takes what the reader has queued (``projections.batches``); each projection folds it
into its cached states (``projections.slot``), and ``projections.recorder`` commits it.

Several projections share one reading of the log and one transaction per batch; each keeps its
own checkpoint, so one added later catches up while the others skip what they already have.
Every commit first checks that the file is still the one the runner knows (its generation and
checkpoints): if ``rebuild`` swapped it or another worker wrote to it, the runner drops its
caches and resumes from what the file says. The file belongs to one stream
(``projections.identity``): opening refuses another stream's file, and after a reconnect the
stream is confirmed again before the next batch is folded.

Every event is folded with the rules stored with the log in force at its sequence
(``store.rules``); a rules event is no aggregate's: the fold switches rules there, and the
checkpoint moves past it. The file records the rules in force at its checkpoint, and opening
refuses a file folded with other rules (``projections.rulecheck``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from eventstore import (
    CodeVersionChanged,
    Event,
    EventStore,
    ProjectionError,
    StoredMessage,
    check_int,
    get_logger,
)
from projections import identity, rulecheck
from projections.batches import Intake
from projections.db import ProjectionDB
from projections.eventcopy import event_rows
from projections.failures import Failed, ProjectionFailure, failure_marks, stored_failures
from projections.fold import Folder, MessageDecoder
from projections.inflight import Held, InFlight, announce, holds, index_of, take
from projections.origins import record_origin
from projections.projection import Projection
from projections.recorder import FileChanged, Recorder
from projections.rows import StateCodec
from projections.runsettings import CommitInfo, RunnerSettings
from projections.slot import Slot
from projections.times import to_us

__all__ = ["CommitInfo", "Runner", "RunnerSettings"]

log = get_logger("projections.runner")

Key = tuple[str, str]


class _Resync(Exception):
    """The file changed under the runner: reload it and resume from its checkpoints."""


class Runner:
    """Runs projections over the log into one ``ProjectionDB``.

    ``await runner.run()`` follows the log until ``stop()``; ``await runner.catch_up()`` folds
    up to the head as it was when called and returns.
    """

    def __init__(
        self,
        store: EventStore,
        db: ProjectionDB,
        projections: Sequence[Projection[Any]],
        *,
        settings: RunnerSettings | None = None,
    ) -> None:
        if not projections:
            raise ProjectionError("a runner needs at least one projection")
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise ProjectionError(f"projection names must be unique, got {names}")
        self.store = store
        self.db = db
        self.recorder = Recorder(db)
        self.settings = settings or RunnerSettings()
        self.decoder = MessageDecoder(store.settings.prefix)
        self._slots = [
            Slot(
                p,
                StateCodec(p),
                folder=Folder(p, store.rules),
                writes=getattr(type(p), "write", None) is not Projection.write,
            )
            for p in projections
        ]
        self._generation = ""
        self._opened = False
        self._stopping = False
        self._intake: Intake | None = None
        self._committed = asyncio.Condition()
        self.on_commit: list[Callable[[CommitInfo], Awaitable[None] | None]] = []
        self.events_applied = 0
        self.resyncs = 0  # times the runner reloaded (file swapped, another writer, bad read)
        self._expect = 1  # the stream sequence the next batch must start with
        self._rules_meta: dict[str, str] = {}  # the rules record the file has
        self._events: list[tuple[Any, ...]] | None = None  # the batch's copy (eventcopy)
        self._held = Held()  # folded, not yet planned for a commit (projections.inflight)
        self._flight: InFlight | None = None  # the batch committing (projections.inflight)
        self._watch = identity.StreamWatch(store, db)  # the stream the file folds (open)

    @property
    def projections(self) -> list[Projection[Any]]:
        return [s.projection for s in self._slots]

    @property
    def checkpoint(self) -> int:
        """The stream sequence every projection of this runner has folded up to (but those
        that failed: they stay at theirs, see ``failures``)."""
        return min(s.checkpoint for s in self._active() or self._slots)

    @property
    def failures(self) -> dict[str, ProjectionFailure]:
        """The projections that failed in this run, and why (``projections.failures``)."""
        return {s.projection.name: s.failure for s in self._slots if s.failure is not None}

    def _active(self) -> list[Slot]:
        return [s for s in self._slots if s.failure is None]

    def checkpoints(self) -> dict[str, int]:
        return {s.projection.name: s.checkpoint for s in self._slots}

    # -- opening ---------------------------------------------------------------------------

    async def open(self, *, reset: bool = False) -> None:
        """Bind the file to this stream and register the projections; one whose code version
        changed is folded again.

        Another stream's file (``projections.identity``) raises ``ForeignDatabase``; ``reset``
        first drops everything the file holds, in the same transaction, and folds from seq 1.
        """
        reconnects = self._watch.reconnects()  # before asking: a later reconnect asks again
        stream = await self.store.stream_identity()
        async with self.db.transaction():
            if reset:
                await self.db.wipe()
                log.warning(
                    "projection database reset: its projection data is dropped, the stream is "
                    "folded again from seq 1",
                    db=str(self.db.path),
                    stream=stream.name,
                )
            await identity.bind(self.store, self.db, stream)
            now = to_us(datetime.now(UTC))
            for slot in self._slots:
                p = slot.projection
                await self.recorder.create_read_models(p)
                info = await self.recorder.projection(p.name)
                if info is None:
                    await self.recorder.register(p, now)
                elif info.code_version != p.version:
                    log.warning(
                        "projection code version changed: folding it again from the start",
                        projection=p.name,
                        stored=info.code_version,
                        code=p.version,
                    )
                    await self.recorder.reset(p, now)
                await record_origin(self.db, p)  # readers then load it by name
            await rulecheck.check_rules(self.db, self.store.rules)
            top = await self.recorder.max_checkpoint()
            self._rules_meta = rulecheck.rules_meta(self.store.rules, top)
            for key, value in self._rules_meta.items():
                await self.db.set_meta(key, value)
        self._watch.confirmed(stream, time.monotonic(), reconnects)
        await self._load()
        self._opened = True

    async def _load(self) -> None:
        """Read generation and checkpoints from the file; forget every cached state."""
        await self._watch.check_file()  # after a swap (rebuild): still this stream's fold?
        self._generation = await self.db.meta("generation") or ""
        self._held = Held()
        positions = await self.recorder.positions()
        marks = await stored_failures(self.db)
        for slot in self._slots:
            p = slot.projection
            at = positions.get(p.name)
            if at is None:
                raise ProjectionError(
                    f"projection {p.name} is not registered in {self.db.path} any more"
                )
            if at.code_version != p.version:
                raise CodeVersionChanged(str(self.db.path), p.name, at.code_version, p.version)
            slot.checkpoint, slot.checkpoint_us = at.checkpoint, at.checkpoint_us
            slot.snapshot_us = int(at.snapshot_us or to_us(datetime.now(UTC)) or 0)
            slot.cache = {}
            slot.complete = (
                slot.checkpoint == 0 and await self.recorder.count("states", p.name) == 0
            )
            slot.clear_batch()
            slot.marked = p.name in marks

    # -- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish and commit the batch in hand, then return from ``run``."""
        self._stopping = True
        if self._intake is not None:
            self._intake.stop()

    async def catch_up(self) -> int:
        """Fold up to the log's head as it is now; returns the checkpoint reached."""
        return await self.run(follow=False, until=await self.store.head())

    async def run(self, *, follow: bool = True, until: int | None = None) -> int:
        """Fold the log from the checkpoint: forever (``follow``) or up to ``until``."""
        if not self._opened:
            await self.open()
        while not self._stopping:
            start = self.checkpoint + 1
            if until is not None and start > until:
                break
            self._expect = start
            settings = self.settings
            intake = self._intake = Intake(
                self.store,
                start,
                follow=follow,
                until=until,
                batch_size=settings.batch_size,
                batch_delay=settings.batch_delay,
                queue_batches=settings.queue_batches,
                stopping=lambda: self._stopping,
                target=until,
            )
            try:
                while (batch := await intake.next()) is not None:
                    await self._apply(batch)
                    if self._stopping:
                        break
                if self._held.messages:
                    await self._commit()
                await self._finish()
            except _Resync:
                self.resyncs += 1
                await self._load()
                continue
            except BaseException:
                self._flight = None  # its outcome is consumed (inflight); the file knows it
                self._forget()
                raise
            finally:
                self._intake = None
                await intake.close()
            if not follow:
                break
            # Following, the log only ends if the reader gave up: read again from the checkpoint.
        return self.checkpoint

    # -- one batch -------------------------------------------------------------------------

    async def _apply(self, batch: list[StoredMessage]) -> None:
        started = time.perf_counter()
        first, last = batch[0].seq, batch[-1].seq
        if first != self._expect or last - first + 1 != len(batch):
            # The reader promises the log without gap or repeat; never fold on a broken promise.
            log.error(
                "messages out of sequence, reading again from the checkpoint",
                expected=self._expect,
                first=first,
                last=last,
                count=len(batch),
            )
            await self._finish()
            raise _Resync()
        self._expect = last + 1
        if not await self._watch.check(lambda: self._stopping):
            await self._finish()
            raise _Resync()
        await self._preload(batch)
        self._fold(batch)
        self._held.add(batch, started, self._events)
        if not holds(self._held, self.settings.batch_size, self._intake):
            await self._commit()

    async def _preload(self, batch: list[StoredMessage]) -> None:
        """Load from the file the states of aggregates this batch touches and the cache lacks."""
        key_of = self.decoder.key
        for slot in self._active():
            if slot.complete:
                continue
            cache = slot.cache
            keys = {
                k
                for m in batch
                if m.seq > slot.checkpoint
                and (k := key_of(m.subject)) is not None
                and k not in cache
                and slot.projection.follows(k[0])
            }
            if keys:
                try:
                    cache.update(await self.recorder.load_states(slot.codec, keys))
                except msgspec.DecodeError as exc:  # its state type changed, not its version
                    name, seq = slot.projection.name, batch[0].seq
                    why = f"projection {name}: its stored states do not decode as its state type "
                    why += f"({exc}); bump its version to refold it"
                    self._fail(slot, Failed(name, why, exc, max(seq, slot.checkpoint + 1)))

    def _fold(self, batch: list[StoredMessage]) -> None:
        # Projections share decoding (memo); the only one keeping the events writes their rows.
        keep, active = self.settings.keep_events, self._active()
        memo: dict[int, Event | str] | None = {} if len(active) > 1 else None
        copy: list[tuple[Any, ...]] | None = [] if keep and memo is None else None
        taken_us = to_us(datetime.now(UTC)) or 0
        for slot in active:
            try:
                slot.fold(batch, self.decoder, memo, taken_us, self.settings.snapshots.every, copy)
            except Failed as failed:
                self._fail(slot, failed)
        if memo is not None and keep:
            copy = event_rows(batch, memo, self.decoder.key)
        self._events = copy

    async def _commit(self) -> None:
        """Start committing what was folded (after finishing the batch before); with no
        ``on_commit`` callback and no periodic snapshot due, while catching up the next batch
        folds meanwhile (``projections.inflight``)."""
        held, self._held = self._held, Held()
        batch, started = held.messages, held.started
        await self._finish()
        last = batch[-1]
        now_us = to_us(datetime.now(UTC)) or 0
        interval_us = int(self.settings.snapshots.interval * 1_000_000)
        moving = [s for s in self._active() if last.seq > s.checkpoint]
        for slot in moving:
            slot.periodic = bool(interval_us) and now_us - slot.snapshot_us >= interval_us
        top = max(last.seq, *(s.checkpoint for s in self._slots))
        meta = rulecheck.rules_meta(self.store.rules, top)
        while True:  # again without a projection whose write() failed: its batch is dropped
            marks = [s for s in self._slots if s.failure is not None and not s.recorded]
            try:
                plan = self.recorder.plan_batch(
                    moving,
                    generation=self._generation,
                    checkpoints=self.checkpoints(),
                    seq=last.seq,
                    recorded_us=to_us(last.recorded_at),
                    now_us=now_us,
                    keep=self.settings.snapshots.keep,
                    spacing=self.settings.snapshots.thin,
                    events=held.events,
                    failed=[s.failure for s in marks if s.failure is not None],
                    cleared=[s.projection.name for s in moving if s.marked],
                    meta=meta if meta != self._rules_meta else None,
                )
            except Failed as failed:
                self._fail(moving.pop(index_of(moving, failed.projection)), failed)
                continue
            break
        flight = InFlight(batch, started, now_us, [take(s) for s in moving], meta, marks, plan)
        self._flight = flight
        serial = self.on_commit or any(s.periodic for s in plan.slots)
        if serial or self._intake is None or not self._intake.behind():
            await self._finish()  # commits it here and now
        else:  # one yield: the commit's first step queues it on the connection, so every
            # later read of the file (the next batch's preload) sees it committed
            flight.start(asyncio.ensure_future(self.recorder.commit_plan(plan)))
            await asyncio.sleep(0)

    async def _finish(self) -> None:
        """Wait for the batch in flight (if any) to commit, and take note of it."""
        flight, self._flight = self._flight, None
        if flight is None:
            return
        task: Awaitable[None] = flight.task or self.recorder.commit_plan(flight.plan)
        while True:  # again without a projection whose statements failed: its batch is dropped
            try:
                await task
            except FileChanged:
                raise _Resync() from None
            except Failed as failed:
                t = flight.taken.pop(index_of([t.slot for t in flight.taken], failed.projection))
                self._fail(t.slot, failed)
                flight.marks = [s for s in self._slots if s.failure and not s.recorded]
                marks = failure_marks(s.failure for s in flight.marks if s.failure is not None)
                flight.plan = flight.plan.without(failed.projection, marks)
                task = self.recorder.commit_plan(flight.plan)
                continue
            break
        batch, now_us, last = flight.batch, flight.now_us, flight.batch[-1]
        self._rules_meta = flight.meta
        for slot in flight.marks:
            slot.recorded = slot.marked = True
        if not self._active():
            raise ProjectionError("; ".join(f.error for f in self.failures.values()))
        self.events_applied += len(batch)
        for t in flight.taken:
            t.slot.committed(last, now_us, periodic=t.rows.periodic, cache=self.settings.cache_size)
        async with self._committed:
            self._committed.notify_all()
        await announce(self.on_commit, flight.info())

    def _fail(self, slot: Slot, failed: Failed) -> None:
        """Mark a projection failed (its code raised): the others go on folding."""
        slot.fail(failed.failure(datetime.now(UTC)))
        log.error(
            "projection failed: it folds no more until restarted, the others go on",
            projection=failed.projection,
            seq=failed.seq,
            aggregate=failed.aggregate,
            error=failed.message,
            checkpoint=slot.checkpoint,
            exc_info=failed.exc,
        )

    def _forget(self) -> None:
        self._held = Held()
        for slot in self._slots:
            slot.forget()

    # -- read your writes ------------------------------------------------------------------

    async def wait_for(self, seq: int) -> int:
        """Wait until every projection has applied stream sequence ``seq`` (read your writes;
        bound it with ``asyncio.timeout``)."""
        check_int(seq, "seq", error=ProjectionError)
        async with self._committed:
            await self._committed.wait_for(lambda: self.checkpoint >= seq)
        return self.checkpoint
