"""A batch whose commit is in flight, taken out of the slots so the next batch can fold.

The runner's commit runs on the database's thread (``projections.commit``); its rows are all
encoded before it starts, so the event loop is free meanwhile. When nothing listens to the
commits (no ``on_commit`` callback: a catch-up, a rebuild) and no periodic snapshot is due,
the runner folds the next batch while this one commits, and finishes it (checkpoints,
failures) before it commits the next: a catch-up takes about the longer of fold and commit
per batch instead of their sum. A callback reads the runner's cached states, which the next
fold changes, so with callbacks every batch is finished before the next one folds, as before.

What the batch produced is taken out of each slot (``take``): the next fold fills fresh
containers, and a retry of the commit (a projection's read models failed) still has the
batch's rows. The cache may hold states of the batch being folded that are not committed yet;
nothing reads them from the file before its commit (one connection: every read queues behind
the commit), and a failed commit makes the runner drop the cache (``FileChanged``) or the
failed projection's (``Failed``).

While catching up, what the reader brings is folded piece by piece and ``Held`` until a
batch is full (``holds``); eviction never drops a held state (``Slot.evict``), so a held
aggregate is never read back from the file, which has it older.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from eventstore import StoredMessage, get_logger
from projections.batches import Intake
from projections.commit import CommitPlan
from projections.fold import AggregateState
from projections.rows import SlotBatch
from projections.runsettings import CommitInfo
from projections.slot import Slot

__all__ = ["Held", "InFlight", "Taken", "announce", "holds", "index_of", "take"]

log = get_logger("projections.runner")

Key = tuple[str, str]
Rows = list[tuple[Any, ...]]


@dataclass(eq=False)
class Taken:
    """One projection's part of a batch: its slot, its rows and the versions before it."""

    slot: Slot
    rows: SlotBatch
    previous: dict[Key, int]


def take(slot: Slot) -> Taken:
    """What ``slot`` produced in the batch, leaving it empty for the next one."""
    rows = SlotBatch(
        slot.projection, slot.codec, slot.changed, slot.snapshots, slot.conflicts,
        slot.quarantine, slot.writes, slot.periodic,
    )  # fmt: skip
    taken = Taken(slot, rows, slot.previous)
    slot.clear_batch()
    return taken


def _retrieve(task: asyncio.Future[None]) -> None:
    """Consume the outcome of a commit nobody waits for any more (the runner stopped)."""
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class InFlight:
    """A batch to commit and what finishing it needs; ``task`` is its commit in flight (None:
    ``Runner._finish`` commits it, no task in between)."""

    batch: list[StoredMessage]
    started: float
    now_us: int
    taken: list[Taken]
    meta: dict[str, str]  # the rules at its checkpoint
    marks: list[Slot]  # failed projections whose marks this commit records
    plan: CommitPlan  # every row, encoded before the next batch folds
    task: asyncio.Future[None] | None = field(default=None)

    def start(self, commit: asyncio.Future[None]) -> None:
        self.task = commit
        commit.add_done_callback(_retrieve)

    def info(self) -> CommitInfo:
        """What the committed batch did, for the ``on_commit`` callbacks."""
        batch = self.batch
        changed: dict[str, list[Key]] = {}
        states: dict[str, list[tuple[AggregateState, int]]] = {}
        for t in self.taken:
            name = t.slot.projection.name
            changed[name] = list(t.rows.changed)
            states[name] = [(a, t.previous[k]) for k, a in t.rows.changed.items()]
        seconds = time.perf_counter() - self.started
        return CommitInfo(batch[0].seq, batch[-1].seq, len(batch), changed, seconds, states)


@dataclass(eq=False)
class Held:
    """What was folded since the last commit was planned: its messages, when its first was
    taken, and its rows of the local copy (``projections.eventcopy``; None: no copy kept)."""

    messages: list[StoredMessage] = field(default_factory=list)
    started: float = 0.0
    events: Rows | None = None

    def add(self, batch: list[StoredMessage], started: float, rows: Rows | None) -> None:
        if not self.messages:
            self.started = started
        self.messages.extend(batch)
        if self.events is None:
            self.events = rows
        elif rows is not None:
            self.events.extend(rows)


def holds(held: Held, limit: int, intake: Intake | None) -> bool:
    """Whether to fold what the reader brings next before committing what is ``held``: while
    catching up (the ``intake`` behind the head), until ``limit`` messages are held. The event
    loop both reads the log and folds it, and it is what limits a catch-up: a batch of
    ``limit`` encodes each changed state once for all its events (committing what a few
    milliseconds of reading brought encoded a state row for about every event) and writes
    each of its index pages once. The commit before runs meanwhile; a reading that stops
    short of the head commits what it holds (``projections.batches``: no longer behind).

    Near the target, what is held is committed once only the intake's ``last_part()`` is
    left: the last commit of a catch-up overlaps no fold, and a full one (20,000 rows with
    their copy) took 0.3 s of a 100k catch-up's 3.5 s; now it holds at most that part."""
    if intake is None or not intake.behind():
        return False
    n, part = len(held.messages), intake.last_part()
    return n < limit and not (n >= part and intake.left() <= part)


def index_of(slots: list[Slot], name: str) -> int:
    """Where projection ``name``'s slot is in ``slots``."""
    return next(i for i, s in enumerate(slots) if s.projection.name == name)


async def announce(
    callbacks: list[Callable[[CommitInfo], Awaitable[None] | None]], info: CommitInfo
) -> None:
    """Tell the ``on_commit`` callbacks, one after the other; one failing is only logged."""
    log.debug(
        "batch committed",
        first=info.first_seq,
        last=info.last_seq,
        messages=info.messages,
        seconds=round(info.seconds, 4),
    )
    for callback in callbacks:
        try:
            result = callback(info)
            if result is not None:
                await result
        except Exception:
            log.exception("on_commit callback failed")
