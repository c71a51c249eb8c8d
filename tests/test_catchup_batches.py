"""A catch-up folds what the reader brings piece by piece and commits full batches
(``projections.inflight.holds``), exactly once, even with a cache that evicts all the time;
while it is behind, the garbage collector's youngest generation is collected less often, and
the process's thresholds come back when it ends (``eventstore.collector``)."""

from __future__ import annotations

import gc
import itertools
from pathlib import Path

import pytest
from helpers_projections import brute_entities, log_events, scalar, stored_states

from eventstore import AppendRequest, EventStore, NewEvent, StoredMessage, collector
from projections import (
    CommitInfo,
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    batches,
)
from projections.batches import Intake


async def _fill(store: EventStore, n: int, aggregates: int) -> None:
    for start in range(0, n, 100):  # many small appends: the reader delivers many pieces
        await store.append_many(
            AppendRequest("agent", f"a{i % aggregates}", [NewEvent("Set", {"i": i, "k": i % 7})])
            for i in range(start, min(n, start + 100))
        )


PIECE = 50


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The intake hands over pieces of at most ``PIECE`` messages, as a reading slower than
    the fold does (a local stream is read faster than any batch fills), and a loaded
    machine's pause in delivery does not end the catch-up."""
    monkeypatch.setattr(batches, "CATCH_UP_IDLE", 10.0)
    take = Intake.next

    async def pieces(self: Intake) -> list[StoredMessage] | None:
        self._collect()
        rest: list[StoredMessage] = self.__dict__.setdefault("rest", [])
        if not rest:
            batch = await take(self)
            if batch is None:
                return None
            rest.extend(batch)
        piece = rest[:PIECE]
        del rest[:PIECE]
        self._taken = piece[-1].seq
        return piece

    monkeypatch.setattr(Intake, "next", pieces)


@pytest.mark.parametrize("cache_size", [200_000, 7])
async def test_a_catch_up_commits_full_batches_exactly_once(
    store: EventStore, tmp_path: Path, no_wait: None, cache_size: int
) -> None:
    """Every commit but the last two holds at least ``batch_size`` messages; the last one at
    most an eighth of it (nothing overlaps the last commit: the one before leaves it that
    much); the commits cover the log once in order, and the file equals the brute-force fold
    with every message copied."""
    n, size = 3000, 700
    await _fill(store, n, 40)
    commits: list[CommitInfo] = []
    settings = RunnerSettings(batch_size=size, cache_size=cache_size)
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()], settings=settings)
        runner.on_commit.append(commits.append)
        assert await runner.catch_up() == n
    assert [c.messages >= size for c in commits[:-2]] == [True] * (len(commits) - 2)
    assert commits[-2].messages > commits[-1].messages
    assert 0 < commits[-1].messages <= size // 8
    assert n // size <= len(commits) <= n // size + 2
    seqs = [(c.first_seq, c.last_seq) for c in commits]
    assert seqs[0][0] == 1 and seqs[-1][1] == n
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(seqs))
    expected = brute_entities(await log_events(store))
    stored = stored_states(tmp_path / "p.db")
    assert {k: (v["version"], v["state"]) for k, v in stored.items()} == {
        k: (v["version"], v["state"]) for k, v in expected.items()
    }
    assert scalar(tmp_path / "p.db", "SELECT count(*) FROM events") == n


async def test_the_collector_runs_less_often_only_while_catching_up(
    store: EventStore, tmp_path: Path, no_wait: None
) -> None:
    """During the catch-up the youngest generation's threshold is ``BURST_THRESHOLD``, the
    older ones untouched; afterwards the thresholds are what they were."""
    await _fill(store, 1000, 10)
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()], settings=RunnerSettings(batch_size=300))
        runner.on_commit.append(lambda info: seen.append(gc.get_threshold()))
        assert await runner.catch_up() == 1000
    assert gc.get_threshold() == before
    assert seen[0] == (collector.BURST_THRESHOLD, *before[1:])


async def test_the_collector_runs_less_often_from_the_first_read_to_the_last_commit(
    store: EventStore, tmp_path: Path, no_wait: None
) -> None:
    """The thresholds rise as the reading starts (the first batch is read ahead collecting
    less: it was a third of a 100k catch-up's messages) and stay up until the batch reaching
    the target is committed; a reading with nothing to catch up leaves them alone."""
    await _fill(store, 600, 10)
    before = gc.get_threshold()
    raised = (collector.BURST_THRESHOLD, *before[1:])
    intake = Intake(
        store, 1, follow=False, until=600, batch_size=100, batch_delay=0.01,
        queue_batches=4, stopping=lambda: False, target=600,
    )  # fmt: skip
    assert gc.get_threshold() == raised  # before any batch is taken
    await intake.close()
    assert gc.get_threshold() == before
    seen: list[tuple[int, int, int]] = []
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()], settings=RunnerSettings(batch_size=200))
        runner.on_commit.append(lambda info: seen.append(gc.get_threshold()))
        assert await runner.catch_up() == 600
    assert len(seen) >= 2 and seen == [raised] * len(seen)  # the last commit's too
    assert gc.get_threshold() == before
    idle = Intake(
        store, 601, follow=False, until=600, batch_size=100, batch_delay=0.01,
        queue_batches=4, stopping=lambda: False, target=600,
    )  # fmt: skip
    assert gc.get_threshold() == before
    await idle.close()
