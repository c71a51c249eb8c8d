"""Time travel: any aggregate's state now, at a version, at a stream sequence or at a time.

A past state is the nearest snapshot at or before the target (of the projection's current code
version) plus the aggregate's messages after it, folded exactly as the runner folds them. A
snapshot every N versions (and their retention, ``projections.snapshots``) keeps the replay
under N events however long the history is. The messages come from the database's copy of the
log (``projections.eventcopy``: the snapshot and the messages in one read, no thread hop), and
from the log only past the checkpoint, before the copy starts, or without a database; history,
diff and ranges of states (``states``) read the copy the same way. The result says which
snapshot was used and how many messages were replayed.

``at`` is the log's recorded time (the stream timestamp), not the producer's clock: it is the
one time that is monotonic along the log. History lists an aggregate's messages between two
points with what the fold made of each (applied, conflict, quarantined); diff compares two
points.

Each event is folded with the rules stored with the log in force at its sequence, the same in
every process; a result's ``rules_version`` is the version in force at its last event. A
database folded with other rules than the log's is refused (``RulesMismatch``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from datetime import datetime, timedelta
from typing import Any, cast

import msgspec

from eventstore import (
    AggregateNotFound,
    EventStore,
    InvalidEvent,
    InvalidPoint,
    ProjectionError,
    StoredMessage,
)
from projections.db import ProjectionDB
from projections.eventcopy import LocalRows, read_local
from projections.fold import AggregateState, Folder, MessageDecoder, Rejected
from projections.mergepatch import changes, diff
from projections.points import Diff, HistoryEntry, PastState, Point
from projections.projection import Projection
from projections.recorder import Recorder
from projections.records import ConflictRecord
from projections.rows import StateCodec
from projections.rulecheck import check_rules
from projections.schema import SCHEMA_VERSION
from projections.times import EPOCH, to_us

__all__ = ["TimeTravel", "current_state"]

Seen = Callable[[AggregateState], None]


async def current_state(
    db: ProjectionDB, projection: Projection[Any], aggregate_type: str, aggregate_id: str
) -> PastState:
    """The state ``projection`` holds now (what the worker committed last), from the database
    alone: no server needed."""
    recorder = Recorder(db)
    agg = await recorder.state(StateCodec(projection), aggregate_type, aggregate_id)
    if agg is None or agg.version == 0:
        info = await recorder.projection(projection.name)
        at = info.checkpoint if info else 0
        raise AggregateNotFound(
            aggregate_type,
            aggregate_id,
            f"projection {projection.name} has no state for it (it has folded the log up to "
            f"seq {at}); check the id, or whether the worker is running and caught up "
            "(`eventstore status`)",
        )
    return _past_state(agg, None, 0)


def _past_state(
    agg: AggregateState, snapshot: tuple[int, int] | None, replayed: int, rules: int | None = None
) -> PastState:
    return PastState(
        aggregate_type=agg.aggregate_type,
        aggregate_id=agg.aggregate_id,
        version=agg.version,
        seq=agg.seq,
        state=agg.state,
        vclock=agg.clock(),
        lamport=agg.lamport,
        recorded_at=agg.recorded_at,
        snapshot_version=snapshot[0] if snapshot else None,
        snapshot_seq=snapshot[1] if snapshot else None,
        replayed=replayed,
        rules_version=rules,
    )


class TimeTravel:
    """Queries of one projection's states, now (from SQLite) and in the past (snapshot + log).

    Without a database every past state is folded from version 1 (correct, only slower).
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection[Any],
        db: ProjectionDB | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.db = db
        self.recorder = Recorder(db) if db is not None else None
        self.codec = StateCodec(projection)
        self.folder = Folder(projection, store.rules)
        self.decoder = MessageDecoder(store.settings.prefix)
        self._rules_checked = db is None
        self._copy = False  # the file has the events copy (schema 3), known once checked

    async def current(self, aggregate_type: str, aggregate_id: str) -> PastState:
        """The state the projection holds now (what the worker committed last)."""
        if self.db is None:
            raise ProjectionError("the current state needs the projection database (--db)")
        return await current_state(self.db, self.projection, aggregate_type, aggregate_id)

    async def state_at(
        self,
        aggregate_type: str,
        aggregate_id: str,
        *,
        version: int | None = None,
        seq: int | None = None,
        at: datetime | None = None,
    ) -> PastState:
        """The state at a version, a stream sequence or a recorded time (or the latest)."""
        point = Point(version=version, seq=seq, at=at)
        agg, snapshot, replayed, _ = await self._fold_to(aggregate_type, aggregate_id, point)
        return self._result(agg, snapshot, replayed)

    async def history(
        self,
        aggregate_type: str,
        aggregate_id: str,
        start: Point | None = None,
        end: Point | None = None,
    ) -> list[HistoryEntry]:
        """The messages after ``start`` up to ``end`` (default: the whole history)."""
        _, entries = await self._between(aggregate_type, aggregate_id, start, end)
        return entries

    async def states(
        self, aggregate_type: str, aggregate_id: str, first: int, last: int, limit: int
    ) -> list[PastState]:
        """The states at versions ``first`` to ``last``, at most ``limit`` of them (fewer when
        the history ends before ``last``), in ONE fold from the nearest snapshot at or before
        ``first``, read like ``state_at`` (the file's copy, then the log): what ``state_at``
        gives for each version, for the cost of one. States are kept by reference (a fold
        never mutates its input state)."""
        key = (aggregate_type, aggregate_id)
        agg, snap, replayed, position = await self._fold_to(*key, Point(version=first))
        out = [self._result(agg, snap, replayed)]

        def seen(state: AggregateState) -> None:  # after each message folded
            nonlocal replayed
            replayed += 1
            if state.version != out[-1].version:
                out.append(self._result(state, snap, replayed))

        end = min(last, first + limit - 1)
        if agg.version < end:
            await self._advance(agg, position, Point(version=end), None, seen=seen)
        return out

    async def diff(self, aggregate_type: str, aggregate_id: str, start: Point, end: Point) -> Diff:
        """What changed between two points of one aggregate, and through which messages."""
        (before, after), entries = await self._between(aggregate_type, aggregate_id, start, end)
        a = msgspec.to_builtins(before.state)
        b = msgspec.to_builtins(after.state)
        return Diff(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            before=before,
            after=after,
            changes=changes(a, b),
            patch=diff(a, b),
            events=entries,
        )

    # -- folding ---------------------------------------------------------------------------

    async def _between(
        self, aggregate_type: str, aggregate_id: str, start: Point | None, end: Point | None
    ) -> tuple[tuple[PastState, PastState], list[HistoryEntry]]:
        key = (aggregate_type, aggregate_id)
        if start is None:
            agg, snap, replayed, position = self.folder.new(key), None, 0, 0
        else:
            agg, snap, replayed, position = await self._fold_to(*key, start)
        before = self._result(agg, snap, replayed)
        if end is not None and (
            (end.version is not None and end.version < before.version)
            or (end.seq is not None and end.seq < before.seq)
            or (end.at is not None and before.recorded_at and end.at < before.recorded_at)
        ):
            raise InvalidPoint(
                f"{start.describe() if start else 'the start'} comes after {end.describe()} "
                f"in the history of {aggregate_type}/{aggregate_id}"
            )
        entries: list[HistoryEntry] = []
        n, _ = await self._advance(agg, position, end or Point(), entries)
        after = self._result(agg, snap, replayed + n)
        if start is None and not entries:
            await self._require_exists(aggregate_type, aggregate_id)
        return (before, after), entries

    async def _fold_to(
        self, aggregate_type: str, aggregate_id: str, point: Point
    ) -> tuple[AggregateState, tuple[int, int] | None, int, int]:
        """(state at the point, (version, seq) of the snapshot used, messages replayed, last
        seq read)."""
        key = (aggregate_type, aggregate_id)
        snapshot: AggregateState | None = None
        if not self._rules_checked and self.db is not None:
            await check_rules(self.db, self.store.rules)  # its snapshots are the log's meaning
            self._copy = await self.db.schema_version() >= SCHEMA_VERSION
            self._rules_checked = True
        local: LocalRows | None = None
        if self.db is not None and self._local(aggregate_type):
            local = await read_local(
                self.db, self.codec, key, version=point.version, seq=point.seq, at=point.at,
                snapshot=True,
            )  # fmt: skip
            snapshot = None if local.snapshot is None else self.codec.load(local.snapshot)
        elif self.recorder is not None:
            snapshot = await self.recorder.nearest_snapshot(
                self.codec,
                aggregate_type,
                aggregate_id,
                version=point.version,
                seq=point.seq,
                at=point.at,
            )
        used: tuple[int, int] | None = None
        if snapshot is not None:
            agg, used, start = snapshot, (snapshot.version, snapshot.seq), snapshot.seq + 1
        else:
            agg = self.folder.new(key)
            start = 1
        if local is not None and local.covered is not None:
            replayed, position = await self._advance(agg, start - 1, point, None, local)
        else:
            bound = None
            if self.recorder is not None and point.version is None:
                bound = await self.recorder.known_version_after(
                    self.projection.name, *key, seq=point.seq, at=point.at
                )
            replayed, position = await self._replay(agg, start, point, None, bound)
        position = max(position, start - 1)
        if point.version is not None and agg.version < point.version:
            await self._require_exists(aggregate_type, aggregate_id)
            raise InvalidPoint(
                f"{aggregate_type}/{aggregate_id} has no version {point.version}: "
                f"it is at version {agg.version}"
            )
        if agg.version == 0 and snapshot is None:
            await self._require_exists(aggregate_type, aggregate_id)
        return agg, used, replayed, position

    def _local(self, aggregate_type: str) -> bool:
        """Whether the file's copy of the events may hold this aggregate's messages."""
        return self._copy and self.projection.follows(aggregate_type)

    async def _advance(
        self,
        agg: AggregateState,
        after: int,
        until: Point,
        entries: list[HistoryEntry] | None,
        local: LocalRows | None = None,
        seen: Seen | None = None,
    ) -> tuple[int, int]:
        """Feed ``agg`` its messages after seq ``after`` up to ``until``: from the file's copy
        while it holds them (``local``: the first read, done), then from the log. ``seen(agg)``
        after each message."""
        count, position = 0, after
        if self.db is not None and self._local(agg.aggregate_type):
            while True:
                if local is None:
                    local = await read_local(
                        self.db, self.codec, agg.key, version=until.version, seq=until.seq,
                        at=until.at, snapshot=False, after=position, after_version=agg.version,
                    )  # fmt: skip
                if local.covered is None:
                    break
                n, position, stopped = self._feed(agg, local.rows, until, entries, position, seen)
                count += n
                if stopped or (until.seq is not None and until.seq <= local.covered):
                    return count, position
                if not local.full:  # the copy ends at the checkpoint: the log goes on
                    position = max(position, local.covered)
                    break
                local = None
        n, position = await self._replay(agg, position + 1, until, entries, seen=seen)
        return count + n, position

    def _feed(
        self,
        agg: AggregateState,
        rows: list[tuple[int, int, bytes]],
        until: Point,
        entries: list[HistoryEntry] | None,
        position: int,
        seen: Seen | None = None,
    ) -> tuple[int, int, bool]:
        """Fold rows of the copy as ``_replay`` folds the log: (count, last seq, target met)."""
        key = agg.key
        subject = self.store.subject(*key)
        at_us = to_us(until.at)
        stop = until.version if until.version is not None else 1 << 63  # past any version
        feed, decoder = self.folder.feed, self.decoder  # the loop is the hot path
        count = 0
        for seq, us, data in rows:
            if agg.version >= stop or (at_us is not None and us > at_us):
                return count, position, True
            msg = StoredMessage(seq, subject, data, EPOCH + timedelta(microseconds=us), None)
            out = feed(agg, msg, key, decoder)
            count += 1
            position = seq
            if entries is not None:
                entries.append(self._entry(msg, key, out))
            if seen is not None:
                seen(agg)
        return count, position, until.version is not None and agg.version >= until.version

    async def _replay(
        self,
        agg: AggregateState,
        start_seq: int,
        until: Point,
        entries: list[HistoryEntry] | None,
        bound: int | None = None,
        seen: Seen | None = None,
    ) -> tuple[int, int]:
        """Feed ``agg`` its messages from ``start_seq`` up to ``until``: (count, last seq).

        ``bound``: a version known to lie past ``until``, to size the first request."""
        if until.version is not None and agg.version >= until.version:
            return 0, start_seq - 1
        if until.seq is not None and start_seq > until.seq:
            return 0, start_seq - 1
        key = agg.key
        count = 0
        position = start_seq - 1
        # Ask for about as many messages as the target needs: a replay from a snapshot is a
        # round trip or two whatever the length of the history. Past a time or a sequence,
        # one message more than the versions to the bound shows where the replay stops.
        if until.version is not None:
            want = min(512, until.version - agg.version + 8)
        elif bound is not None and bound > agg.version:
            want = min(512, bound - agg.version + 1)
        else:
            want = 256
        if until.seq is not None:  # each of its messages has a sequence of its own
            want = min(want, until.seq - start_seq + 2)
        batches = cast(
            AsyncGenerator[list[StoredMessage], None],
            self.store.raw_aggregate(
                agg.aggregate_type, agg.aggregate_id, start_seq, until.seq, batch=want
            ),
        )
        async with contextlib.aclosing(batches) as stream:
            async for batch in stream:
                for msg in batch:
                    if until.at is not None and msg.recorded_at > until.at:
                        return count, position
                    if until.version is not None and agg.version >= until.version:
                        return count, position
                    out = self.folder.feed(agg, msg, key, self.decoder)
                    count += 1
                    position = msg.seq
                    if entries is not None:
                        entries.append(self._entry(msg, key, out))
                    if seen is not None:
                        seen(agg)
        return count, position

    def _entry(
        self, msg: StoredMessage, key: tuple[str, str], out: Rejected | ConflictRecord | None
    ) -> HistoryEntry:
        try:
            ev = self.decoder.event(msg, key)
        except InvalidEvent:
            ev = None
        with contextlib.suppress(InvalidEvent):  # data at its current schema, else as stored
            ev = ev.current() if ev is not None else None
        outcome, detail = "applied", None
        if isinstance(out, Rejected):
            outcome, detail = "quarantined", f"{out.kind}: {out.reason}"
        elif isinstance(out, ConflictRecord):
            outcome = "conflict"
            detail = (
                f"concurrent with {out.previous_id} (seq {out.previous_seq}); "
                f"{out.resolver}: {out.winner} wins"
            )
        return HistoryEntry(
            seq=msg.seq,
            version=ev.version if ev else None,
            type=ev.type if ev else None,
            producer=ev.producer if ev else None,
            recorded_at=msg.recorded_at,
            transition=[ev.transition.from_, ev.transition.to] if ev and ev.transition else None,
            data=ev.data if ev else None,
            outcome=outcome,
            detail=detail,
        )

    async def _require_exists(self, aggregate_type: str, aggregate_id: str) -> None:
        if not await self.store.exists(aggregate_type, aggregate_id):
            raise AggregateNotFound(
                aggregate_type, aggregate_id, f"no events in stream {self.store.settings.name}"
            )

    def _result(
        self, agg: AggregateState, snapshot: tuple[int, int] | None, replayed: int
    ) -> PastState:
        version = self.store.rules.at(agg.seq)
        return _past_state(agg, snapshot, replayed, version.version if version else 0)
