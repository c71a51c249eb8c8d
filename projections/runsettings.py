"""What a runner is told (``RunnerSettings``) and what it tells after each commit
(``CommitInfo``): ``projections.runner``'s settings and callback payload."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from projections.fold import AggregateState
from projections.snapshots import SnapshotPolicy

__all__ = ["CommitInfo", "RunnerSettings"]

Key = tuple[str, str]


class RunnerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the runner batches and snapshots; ``keep_events``: write each message of the
    projections' aggregates into the file too, for local time travel
    (``projections.eventcopy``)."""

    batch_size: int = 20000
    batch_delay: float = 0.0
    snapshots: SnapshotPolicy = SnapshotPolicy()
    cache_size: int = 200_000
    queue_batches: int = 64
    keep_events: bool = True


class CommitInfo(NamedTuple):
    """What one committed batch did (handed to ``on_commit`` callbacks).

    ``states``: per projection, each changed aggregate's state and the version it had before
    the batch. The states are the runner's cached objects: read them inside the callback (the
    next batch is folded only after every callback returned), never keep them."""

    first_seq: int
    last_seq: int
    messages: int
    changed: dict[str, list[Key]]
    seconds: float
    states: dict[str, list[tuple[AggregateState, int]]]
