"""One projection inside a runner: its fold, its cache of states, and what a batch produced.

Every projection of a runner folds each batch into its cached states here (the runner's hot
loop); what the batch produced (changed states, snapshot, conflict and quarantine rows) is the
``SlotBatch`` that ``projections.recorder`` commits with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eventstore import Event, InvalidEvent, StoredMessage, get_logger
from projections.eventcopy import event_row
from projections.failures import Failed, ProjectionFailure
from projections.fold import AggregateState, Folder, MessageDecoder, Rejected, describe_error
from projections.rows import SlotBatch, conflict_row, quarantine_row, snapshot_row
from projections.times import to_us

__all__ = ["Slot"]

log = get_logger("projections.runner")

Key = tuple[str, str]


@dataclass(eq=False)
class Slot(SlotBatch):
    """One projection inside a runner: its fold, its cache and what the batch produced (the
    ``SlotBatch`` the recorder commits)."""

    folder: Folder | None = None
    checkpoint: int = 0
    checkpoint_us: int | None = None
    snapshot_us: int = 0
    cache: dict[Key, AggregateState] = field(default_factory=dict)
    complete: bool = False  # the cache holds every aggregate the file has
    changed: dict[Key, AggregateState] = field(default_factory=dict)
    failure: ProjectionFailure | None = None  # it failed in this run: it folds no more
    recorded: bool = False  # ``failure`` is written in the file
    marked: bool = False  # the file holds a failure mark of it (cleared by its next commit)
    # The version each changed aggregate had before the batch (the change feed's
    # ``previous_version``).
    previous: dict[Key, int] = field(default_factory=dict)

    def fail(self, failure: ProjectionFailure) -> None:
        """Stop folding: forget what the failed batch left in the cache (nothing of it is
        committed) and keep the checkpoint."""
        self.failure, self.recorded = failure, False
        self.cache = {}
        self.complete = False
        self.clear_batch()

    def committed(self, last: StoredMessage, now_us: int, *, periodic: bool, cache: int) -> None:
        """Take note of a batch committed up to ``last``: the checkpoint, the time of a
        periodic snapshot, and the cache kept under ``cache`` states."""
        self.marked = False  # the commit cleared the file's failure mark
        if periodic:
            self.snapshot_us = now_us
            for agg in self.cache.values():
                agg.snapshot_version = agg.version
        self.checkpoint = last.seq
        self.checkpoint_us = to_us(last.recorded_at)
        if len(self.cache) > cache:
            self.evict(cache // 2)

    def evict(self, keep: int) -> None:
        """Drop all but the newest ``keep`` cached states, never one the batch changed (it is
        not committed yet: the file has an older state, ``projections.inflight.holds``)."""
        changed = self.changed
        for key in list(self.cache)[: len(self.cache) - keep]:
            if key not in changed:
                del self.cache[key]
        self.complete = False

    def forget(self) -> None:
        """Drop the cache and what the batch produced (a run ended or failed)."""
        self.cache = {}
        self.complete = False
        self.clear_batch()

    def clear_batch(self) -> None:
        self.changed = {}
        self.previous = {}
        self.snapshots = []
        self.conflicts = []
        self.quarantine = []
        self.periodic = False

    def fold(
        self,
        batch: list[StoredMessage],
        decoder: MessageDecoder,
        memo: dict[int, Event | str] | None,
        taken_us: int,
        every: int,
        copy: list[tuple[Any, ...]] | None = None,
    ) -> None:
        """Fold the batch into the cached states (the runner's hot loop): the messages past
        the checkpoint, decoded once for all projections when ``memo`` is given; a snapshot
        row for every aggregate reaching a multiple of ``every`` versions. ``copy`` (the only
        projection of a runner keeping the events) gets the ``EVENT_SQL`` row of each message
        it folds, in order: what ``eventcopy.event_rows`` makes of the memo, without the
        memo and a second pass over the batch."""
        slot = self
        p = slot.projection
        name, code_version, types = p.name, p.version, p.aggregate_types
        checkpoint, cache, changed = slot.checkpoint, slot.cache, slot.changed
        previous = slot.previous
        folder = slot.folder
        assert folder is not None
        new, step, reject = folder.new, folder.step, folder.reject
        key_of, decode = decoder.key, decoder.event
        msg: StoredMessage | None = None
        key: Key | None = None
        try:
            for msg in batch:
                if msg.seq <= checkpoint:
                    continue
                key = key_of(msg.subject)
                if key is None:
                    if msg.subject == decoder.rules_subject:  # the rules change from here on
                        folder.book.learn(msg)
                        continue
                    why = Rejected("undecodable", f"subject {msg.subject!r} names no aggregate")
                    slot.quarantine.append(quarantine_row(name, msg, None, why))
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
                        if copy is not None:
                            copy.append(event_row(msg, key, None))
                        out = reject(agg, msg, exc.reason)
                    else:
                        if copy is not None:
                            copy.append(event_row(msg, key, event.version))
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
                        slot.quarantine.append(quarantine_row(name, msg, key, out))
                        log.warning(
                            "message quarantined",
                            projection=name,
                            seq=msg.seq,
                            aggregate=f"{key[0]}/{key[1]}",
                            kind=out.kind,
                            reason=out.reason,
                        )
                    else:
                        slot.conflicts.append(conflict_row(out))
                if agg.version != before:
                    if key not in changed:
                        previous[key] = before
                    changed[key] = agg
                    if agg.version % every == 0:
                        agg.snapshot_version = agg.version
                        slot.snapshots.append(snapshot_row(slot.codec, agg, code_version, taken_us))
        except Exception as exc:  # initial(), or a fold step failing outside quarantine
            seq = msg.seq if msg is not None else batch[0].seq
            where = f"{key[0]}/{key[1]}" if key is not None else None
            message = (
                f"projection {name}: folding failed at seq {seq}"
                f"{f' ({where})' if where else ''}: {describe_error(exc)}"
            )
            raise Failed(name, message, exc, seq, where) from exc
