"""The runner: folds the log into SQLite, one batch and one transaction at a time.

It reads the whole log from its checkpoint + 1 with ``EventStore.raw`` (an ordered consumer,
no durable consumer and no acks: the checkpoint lives in SQLite), folds a batch of messages in
memory, and commits states, snapshots, conflicts, quarantined messages, read models and the new
checkpoint in ONE transaction. Whatever crashes where, a batch is either committed with its
checkpoint or not at all and read again: every event takes effect exactly once.

A batch takes what the reader has queued, up to ``batch_size`` messages, waiting at most
``batch_delay`` (default 0: not at all) for more. Reading continues while a batch commits
(SQLite works in its own thread), so batches size themselves: a quiet stream commits each
event a couple of milliseconds after its append, a catch-up thousands per transaction.

Several projections share one reading of the log and one transaction per batch; each keeps its
own checkpoint, so one added later catches up while the others skip what they already have.
Every commit first checks that the file is still the one the runner knows (its generation and
checkpoints): if ``rebuild`` swapped it or another worker wrote to it, the runner drops its
caches and resumes from what the file says. The file belongs to one stream
(``projections.identity``): opening refuses another stream's file, and after a reconnect the
stream is confirmed again before the next batch is folded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import msgspec
import structlog

from eventstore.errors import InvalidEvent, NotConnected, ProjectionError
from eventstore.events import Event
from eventstore.machines import Machines
from eventstore.reader import StoredMessage
from eventstore.store import EventStore, StreamIdentity
from eventstore.validate import check_int
from projections import conflicts, identity, quarantine, snapshots
from projections.db import ProjectionDB, StateCodec
from projections.fold import AggregateState, Folder, MessageDecoder, Rejected, describe_error
from projections.identity import RecordedStream
from projections.projection import Change, Projection
from projections.snapshots import SnapshotPolicy
from projections.times import to_us

__all__ = ["CommitInfo", "Runner", "RunnerSettings"]

log = structlog.get_logger("projections.runner")

Key = tuple[str, str]

UPSERT_STATE_SQL = (
    "INSERT INTO states (projection, aggregate_type, aggregate_id, version, seq, state, vclock, "
    "lamport, recorded_us, resume, base, snapshot_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?) ON CONFLICT (projection, aggregate_type, aggregate_id) DO UPDATE SET "
    "version = excluded.version, seq = excluded.seq, state = excluded.state, "
    "vclock = excluded.vclock, lamport = excluded.lamport, recorded_us = excluded.recorded_us, "
    "resume = excluded.resume, base = excluded.base, snapshot_version = excluded.snapshot_version"
)
CHECKPOINT_SQL = (
    "UPDATE projections SET checkpoint = ?, checkpoint_us = ?, updated_us = ? WHERE name = ?"
)
STREAM_CHECK_INTERVAL = 5.0  # seconds between checks that the log is still the file's stream
GUARD_SQL = (
    "SELECT name, checkpoint, code_version, (SELECT value FROM meta WHERE key = 'generation') "
    "FROM projections"
)


class RunnerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the runner batches and snapshots."""

    batch_size: int = 20000
    batch_delay: float = 0.0
    snapshots: SnapshotPolicy = SnapshotPolicy()
    cache_size: int = 200_000
    queue_batches: int = 64


class CommitInfo(NamedTuple):
    """What one committed batch did (handed to ``on_commit`` callbacks)."""

    first_seq: int
    last_seq: int
    messages: int
    changed: dict[str, list[Key]]
    seconds: float


class _Resync(Exception):
    """The file changed under the runner: reload it and resume from its checkpoints."""


_END = object()
_STOP = object()


@dataclass(eq=False)
class _Slot:
    """One projection inside a runner: its fold, its cache and what the batch produced."""

    projection: Projection[Any]
    codec: StateCodec
    folder: Folder
    checkpoint: int = 0
    checkpoint_us: int | None = None
    snapshot_us: int = 0
    cache: dict[Key, AggregateState] = field(default_factory=dict)
    complete: bool = False  # the cache holds every aggregate the file has
    writes: bool = True  # the projection keeps read models (it overrides ``write``)
    changed: dict[Key, AggregateState] = field(default_factory=dict)
    snapshots: list[tuple[Any, ...]] = field(default_factory=list)
    conflicts: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)

    def clear_batch(self) -> None:
        self.changed = {}
        self.snapshots = []
        self.conflicts = []
        self.quarantine = []


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
        machines: Machines | None = None,
        settings: RunnerSettings | None = None,
    ) -> None:
        if not projections:
            raise ProjectionError("a runner needs at least one projection")
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise ProjectionError(f"projection names must be unique, got {names}")
        self.store = store
        self.db = db
        self.settings = settings or RunnerSettings()
        self.machines = machines if machines is not None else store.machines
        self.decoder = MessageDecoder(store.settings.prefix)
        self._slots = [
            _Slot(
                p,
                StateCodec(p),
                Folder(p, self.machines),
                writes=getattr(type(p), "write", None) is not Projection.write,
            )
            for p in projections
        ]
        self._generation = ""
        self._opened = False
        self._stopping = False
        self._queue: asyncio.Queue[Any] | None = None
        self._room = asyncio.Event()
        self._committed = asyncio.Condition()
        self.on_commit: list[Callable[[CommitInfo], Awaitable[None] | None]] = []
        self.events_applied = 0
        self.resyncs = 0  # times the runner reloaded (file swapped, another writer, bad read)
        self._expect = 1  # the stream sequence the next batch must start with
        self._identity: StreamIdentity | None = None  # the stream the file folds (open)
        self._checked_at = 0.0  # when the stream's identity was last confirmed (monotonic)
        self._reconnects = 0  # the connection's reconnect count at that moment

    @property
    def projections(self) -> list[Projection[Any]]:
        return [s.projection for s in self._slots]

    @property
    def checkpoint(self) -> int:
        """The stream sequence every projection of this runner has folded up to."""
        return min(s.checkpoint for s in self._slots)

    def checkpoints(self) -> dict[str, int]:
        return {s.projection.name: s.checkpoint for s in self._slots}

    # -- opening ---------------------------------------------------------------------------

    async def open(self, *, reset: bool = False) -> None:
        """Bind the file to this stream and register the projections; one whose code version
        changed is folded again.

        Another stream's file (``projections.identity``) raises ``ForeignDatabase``; ``reset``
        first drops everything the file holds, in the same transaction, and folds from seq 1.
        """
        reconnects = self._reconnect_count()  # before asking: a later reconnect asks again
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
            await self._bind(stream)
            now = to_us(datetime.now(UTC))
            for slot in self._slots:
                p = slot.projection
                for ddl in p.schema:
                    await self.db.execute(ddl)
                info = await self.db.projection(p.name)
                if info is None:
                    await self.db.execute(
                        "INSERT INTO projections (name, code_version, checkpoint, snapshot_us) "
                        "VALUES (?, ?, 0, ?)",
                        (p.name, p.version, now),
                    )
                elif info.code_version != p.version:
                    log.warning(
                        "projection code version changed: folding it again from the start",
                        projection=p.name,
                        stored=info.code_version,
                        code=p.version,
                    )
                    await self.db.reset(p)
                    await self.db.execute(
                        "UPDATE projections SET snapshot_us = ? WHERE name = ?", (now, p.name)
                    )
        self._identity = stream
        self._stream_checked(time.monotonic(), reconnects)
        await self._load()
        self._opened = True

    async def _bind(self, current: StreamIdentity) -> None:
        """Refuse another stream's file; record the stream in a new file, or adopt it in one
        written before identities were recorded (inside the open transaction)."""
        recorded = await identity.recorded_stream(self.db)
        checkpoint = await identity.max_checkpoint(self.db)
        if recorded.name is not None or checkpoint > 0:
            head = await self.store.head()  # after the checkpoints: no commit passes it
            problem = identity.identity_problem(recorded, current, checkpoint, head)
            if problem is not None:
                raise identity.refuse(self.db, problem)
        if recorded.name is None or (recorded.created is None and current.created):
            if recorded.name is not None:
                log.info(
                    "projection database adopted its stream's identity",
                    db=str(self.db.path),
                    stream=current.name,
                    created=current.created,
                    checkpoint=checkpoint,
                )
            await identity.record_stream(self.db, current)

    async def _load(self) -> None:
        """Read generation and checkpoints from the file; forget every cached state."""
        if self._identity is not None:  # after a swap (rebuild): still this stream's fold?
            recorded = await identity.recorded_stream(self.db)
            if problem := identity.identity_problem(recorded, self._identity, 0, 0):
                raise identity.refuse(self.db, problem)
        self._generation = await self.db.meta("generation") or ""
        rows = await self.db.fetchall(
            "SELECT name, checkpoint, checkpoint_us, snapshot_us, code_version FROM projections"
        )
        by_name = {r[0]: r for r in rows}
        for slot in self._slots:
            p = slot.projection
            row = by_name.get(p.name)
            if row is None:
                raise ProjectionError(
                    f"projection {p.name} is not registered in {self.db.path} any more"
                )
            if row[4] != p.version:
                raise ProjectionError(
                    f"projection database {self.db.path} now holds {p.name} at code version "
                    f"{row[4]}, this worker runs version {p.version}: restart it with that code"
                )
            slot.checkpoint, slot.checkpoint_us = int(row[1]), row[2]
            slot.snapshot_us = int(row[3] or to_us(datetime.now(UTC)) or 0)
            slot.cache = {}
            slot.complete = slot.checkpoint == 0 and await self.db.count("states", p.name) == 0
            slot.clear_batch()

    def _stream_checked(self, when: float, reconnects: int) -> None:
        self._checked_at, self._reconnects = when, reconnects

    def _reconnect_count(self) -> int:
        stats = getattr(self.store.nc, "stats", None)
        return int(stats.get("reconnects", 0)) if isinstance(stats, dict) else 0

    async def _check_stream(self) -> None:
        """Before a batch is folded: the log is still this file's stream. Asked again after
        every reconnect (a server restarted on a reset store serves another stream of the same
        name) and every ``STREAM_CHECK_INTERVAL`` seconds; while the server cannot answer, the
        batch waits (or, when stopping, is left for the next start to read again)."""
        if self._identity is None:
            return
        now, reconnects = time.monotonic(), self._reconnect_count()
        if reconnects == self._reconnects and now - self._checked_at < STREAM_CHECK_INTERVAL:
            return
        while True:
            try:
                current = await self.store.stream_identity()
                break
            except NotConnected:
                if self._stopping:
                    raise _Resync() from None
                await asyncio.sleep(0.5)
        problem = identity.identity_problem(
            RecordedStream(self._identity.name, self._identity.created or None), current, 0, 0
        )
        if problem is not None:
            raise identity.refuse(self.db, problem)
        self._stream_checked(now, reconnects)

    # -- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish and commit the batch in hand, then return from ``run``."""
        self._stopping = True
        if self._queue is not None:
            self._queue.put_nowait(_STOP)
        self._room.set()

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
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self._queue = queue
            self._expect = start
            feeder = asyncio.create_task(self._feed(queue, start, follow, until))
            try:
                while (batch := await self._collect(queue)) is not None:
                    await self._apply(batch)
                    if self._stopping:
                        break
            except _Resync:
                self.resyncs += 1
                await self._load()
                continue
            except BaseException:
                self._forget()
                raise
            finally:
                self._queue = None
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder
            if not follow:
                break
            # Following, the log only ends if the reader gave up: read again from the checkpoint.
        return self.checkpoint

    async def _feed(
        self, queue: asyncio.Queue[Any], start: int, follow: bool, until: int | None
    ) -> None:
        limit = self.settings.queue_batches
        reading = cast(
            AsyncGenerator[list[StoredMessage], None],
            self.store.raw(start, follow=follow, stop_seq=until),
        )
        try:
            async with contextlib.aclosing(reading) as batches:
                async for batch in batches:
                    queue.put_nowait(batch)
                    while queue.qsize() >= limit and not self._stopping:
                        self._room.clear()
                        await self._room.wait()
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)

    async def _collect(self, queue: asyncio.Queue[Any]) -> list[StoredMessage] | None:
        """The next batch: what is queued, up to ``batch_size``, waiting ``batch_delay`` at most."""
        if self._stopping:
            return None
        item = await queue.get()
        if item is _END or item is _STOP:
            return None
        if isinstance(item, BaseException):
            raise item
        batch: list[StoredMessage] = list(item)
        size = self.settings.batch_size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.batch_delay
        while len(batch) < size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _END or item is _STOP:
                queue.put_nowait(item)  # seen again by the next collect
                break
            if isinstance(item, BaseException):
                queue.put_nowait(item)
                break
            batch.extend(item)
        if queue.qsize() < self.settings.queue_batches // 2:
            self._room.set()
        return batch

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
            raise _Resync()
        self._expect = last + 1
        await self._check_stream()
        await self._preload(batch)
        self._fold(batch)
        await self._commit(batch, started)

    async def _preload(self, batch: list[StoredMessage]) -> None:
        """Load from the file the states of aggregates this batch touches and the cache lacks."""
        key_of = self.decoder.key
        for slot in self._slots:
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
                cache.update(await self.db.load_states(slot.codec, keys))

    def _fold(self, batch: list[StoredMessage]) -> None:
        # Several projections decode each message once (memo); one needs no memo.
        memo: dict[int, Event | str] | None = {} if len(self._slots) > 1 else None
        taken_us = to_us(datetime.now(UTC)) or 0
        for slot in self._slots:
            self._fold_slot(slot, batch, memo, taken_us)

    def _fold_slot(
        self,
        slot: _Slot,
        batch: list[StoredMessage],
        memo: dict[int, Event | str] | None,
        taken_us: int,
    ) -> None:
        """Fold the batch into one projection's cached states (the runner's hot loop)."""
        p = slot.projection
        name, code_version, types = p.name, p.version, p.aggregate_types
        checkpoint, cache, changed = slot.checkpoint, slot.cache, slot.changed
        new, step, reject = slot.folder.new, slot.folder.step, slot.folder.reject
        key_of, decode = self.decoder.key, self.decoder.event
        every = self.settings.snapshots.every
        for msg in batch:
            if msg.seq <= checkpoint:
                continue
            key = key_of(msg.subject)
            if key is None:
                why = Rejected("undecodable", f"subject {msg.subject!r} names no aggregate")
                slot.quarantine.append(quarantine.quarantine_row(name, msg, None, why))
                log.warning(
                    "message quarantined",
                    projection=name,
                    seq=msg.seq,
                    subject=msg.subject,
                    kind=why.kind,
                    reason=why.reason,
                )
                continue
            if types and key[0] not in types:
                continue
            agg = cache.get(key)
            if agg is None:
                agg = cache[key] = new(key)
            before = agg.version
            out: Any
            if memo is None:
                try:
                    event = decode(msg, key)
                except InvalidEvent as exc:
                    out = reject(agg, msg, exc.reason)
                else:
                    out = step(agg, event, len(msg.data))
            else:
                known = memo.get(msg.seq)
                if known is None:
                    try:
                        known = decode(msg, key)
                    except InvalidEvent as exc:
                        known = exc.reason
                    memo[msg.seq] = known
                if isinstance(known, str):
                    out = reject(agg, msg, known)
                else:
                    out = step(agg, known, len(msg.data))
            if out is not None:
                if type(out) is Rejected:
                    slot.quarantine.append(quarantine.quarantine_row(name, msg, key, out))
                    log.warning(
                        "message quarantined",
                        projection=name,
                        seq=msg.seq,
                        aggregate=f"{key[0]}/{key[1]}",
                        kind=out.kind,
                        reason=out.reason,
                    )
                else:
                    slot.conflicts.append(conflicts.conflict_row(out))
            if agg.version != before:
                changed[key] = agg
                if agg.version % every == 0:
                    agg.snapshot_version = agg.version
                    slot.snapshots.append(
                        snapshots.snapshot_row(slot.codec, agg, code_version, taken_us)
                    )

    async def _commit(self, batch: list[StoredMessage], started: float) -> None:
        db = self.db
        last = batch[-1]
        now_us = to_us(datetime.now(UTC)) or 0
        keep = self.settings.snapshots.keep
        interval_us = int(self.settings.snapshots.interval * 1_000_000)
        moving = [s for s in self._slots if last.seq > s.checkpoint]
        state_rows = [s.codec.row(a) for s in moving for a in s.changed.values()]
        async with db.transaction():
            await self._guard()
            if state_rows:
                await db.executemany(UPSERT_STATE_SQL, state_rows)
            for slot in moving:
                name = slot.projection.name
                if slot.snapshots:
                    await db.executemany(snapshots.INSERT_SQL, slot.snapshots)
                    pruned = {(r[1], r[2]) for r in slot.snapshots}
                    await db.executemany(
                        snapshots.PRUNE_SQL, [(name, t, i, keep) for t, i in pruned]
                    )
                if slot.conflicts:
                    await db.executemany(conflicts.INSERT_SQL, slot.conflicts)
                if slot.quarantine:
                    await db.executemany(quarantine.INSERT_SQL, slot.quarantine)
                if slot.changed and slot.writes:
                    await self._write_read_models(slot)
                if interval_us and now_us - slot.snapshot_us >= interval_us:
                    version = slot.projection.version
                    await db.execute(snapshots.PERIODIC_SQL, (name, version, now_us))
                    await db.execute(snapshots.PERIODIC_PRUNE_SQL, (name, keep))
                    await db.execute(snapshots.PERIODIC_MARK_SQL, (name,))
                    await db.execute(
                        "UPDATE projections SET snapshot_us = ? WHERE name = ?", (now_us, name)
                    )
            await db.executemany(
                CHECKPOINT_SQL,
                [(last.seq, to_us(last.recorded_at), now_us, s.projection.name) for s in moving],
            )
        self.events_applied += len(batch)
        changed: dict[str, list[Key]] = {}
        for slot in moving:
            if interval_us and now_us - slot.snapshot_us >= interval_us:
                slot.snapshot_us = now_us
                for agg in slot.cache.values():
                    agg.snapshot_version = agg.version
            slot.checkpoint = last.seq
            slot.checkpoint_us = to_us(last.recorded_at)
            changed[slot.projection.name] = list(slot.changed)
            slot.clear_batch()
            if len(slot.cache) > self.settings.cache_size:
                self._evict(slot)
        info = CommitInfo(
            batch[0].seq, last.seq, len(batch), changed, time.perf_counter() - started
        )
        log.debug(
            "batch committed",
            first=info.first_seq,
            last=info.last_seq,
            messages=info.messages,
            seconds=round(info.seconds, 4),
        )
        async with self._committed:
            self._committed.notify_all()
        for callback in self.on_commit:
            try:
                result = callback(info)
                if result is not None:
                    await result
            except Exception:
                log.exception("on_commit callback failed")

    async def _guard(self) -> None:
        """Refuse to commit onto a file that changed since the runner read it."""
        rows = await self.db.fetchall(GUARD_SQL)
        stored = {r[0]: int(r[1]) for r in rows}
        generation = rows[0][3] if rows else await self.db.meta("generation")
        if generation != self._generation:
            log.warning(
                "projection database was replaced (rebuild?): resuming from its checkpoints",
                db=str(self.db.path),
            )
            raise _Resync()
        for slot in self._slots:
            if stored.get(slot.projection.name) != slot.checkpoint:
                log.warning(
                    "projection checkpoint moved under this worker (another worker on the "
                    "same file?): resuming from the file's checkpoint",
                    projection=slot.projection.name,
                    ours=slot.checkpoint,
                    theirs=stored.get(slot.projection.name),
                )
                raise _Resync()

    async def _write_read_models(self, slot: _Slot) -> None:
        changes = [
            Change(a.aggregate_type, a.aggregate_id, a.version, a.seq, a.state)
            for a in slot.changed.values()
        ]
        name = slot.projection.name
        try:
            statements = list(slot.projection.write(changes))
        except Exception as exc:
            raise ProjectionError(
                f"projection {name}: write() failed for a batch: {describe_error(exc)}"
            ) from exc
        for statement in statements:
            try:
                await self.db.executemany(statement.sql, statement.rows)
            except (OverflowError, ValueError, TypeError) as exc:  # a value SQLite cannot bind
                raise ProjectionError(
                    f"projection {name}: write() returned read-model rows SQLite cannot store "
                    f"({describe_error(exc)}); make write() check the values it takes from "
                    "states"
                ) from exc

    def _evict(self, slot: _Slot) -> None:
        """Drop the older half of a cache that grew too big (they are all committed)."""
        drop = len(slot.cache) - self.settings.cache_size // 2
        for key in list(slot.cache)[:drop]:
            del slot.cache[key]
        slot.complete = False

    def _forget(self) -> None:
        for slot in self._slots:
            slot.cache = {}
            slot.complete = False
            slot.clear_batch()

    # -- read your writes ------------------------------------------------------------------

    async def wait_for(self, seq: int) -> int:
        """Wait until every projection has applied stream sequence ``seq`` (read your writes;
        bound it with ``asyncio.timeout``)."""
        check_int(seq, "seq", error=ProjectionError)
        async with self._committed:
            await self._committed.wait_for(lambda: self.checkpoint >= seq)
        return self.checkpoint
