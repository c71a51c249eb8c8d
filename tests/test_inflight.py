"""A catch-up folds the next batch while the one before commits (``projections.inflight``):
the result is exactly the serial fold's, and a projection whose read-model statements SQLite
refuses in a commit in flight loses that batch only, the others committing it whole; a
reading that goes idle short of its target is caught up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers_projections import brute_entities, log_events, scalar, stored_states

from eventstore import AppendRequest, EventStore, NewEvent
from projections import (
    EntitiesProjection,
    Projection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    Statement,
    batches,
)
from projections.batches import Intake
from projections.failures import stored_failures

SMALL = RunnerSettings(batch_size=50)
TINY_CACHE = RunnerSettings(batch_size=50, cache_size=10)  # evicting all the time


class Refusing(Projection[dict[str, Any]]):
    """Counts changes in a read model; a batch with version ``FAIL`` of any aggregate gets a
    statement SQLite refuses (write() itself succeeds: the failure is inside the commit)."""

    name = "refusing"
    version = "1"
    schema = ("CREATE TABLE IF NOT EXISTS refusing_rows (id TEXT PRIMARY KEY, v INTEGER)",)
    tables = ("refusing_rows",)
    FAIL = 30

    def initial(self, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
        return state

    def write(self, changes: Any) -> list[Statement]:
        rows = [(c.aggregate_id, c.version) for c in changes]
        out = [Statement("INSERT OR REPLACE INTO refusing_rows VALUES (?, ?)", rows)]
        if any(c.version >= self.FAIL for c in changes):
            out.append(Statement("INSERT INTO no_such_table VALUES (?)", [(1,)]))
        return out


async def _fill(store: EventStore, n: int, aggregates: int) -> None:
    for start in range(0, n, 500):
        await store.append_many(
            AppendRequest("agent", f"a{i % aggregates}", [NewEvent("Set", {"i": i})])
            for i in range(start, min(n, start + 500))
        )


async def test_a_catch_up_folds_while_committing_and_equals_the_serial_fold(
    store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 40 batches, folds start while the batch before is committing (its commit started,
    the runner not yet done with it), and the file
    ends exactly as the brute-force fold of the log says, with every message in its copy, even
    with a cache so small that states are read back from the file all the time (a read of the
    next batch never overtakes the commit in flight)."""
    n = 2000
    await _fill(store, n, 40)
    # The log is complete: a loaded machine's pause in delivery must not end the catch-up.
    monkeypatch.setattr(batches, "CATCH_UP_IDLE", 10.0)
    overlapped = 0
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()], settings=TINY_CACHE)
        fold = runner._fold

        def watched(batch: Any) -> None:
            nonlocal overlapped  # the previous batch's commit started, not yet finished
            flight = runner._flight
            overlapped += flight is not None and flight.task is not None
            fold(batch)

        runner._fold = watched  # type: ignore[method-assign]
        assert await runner.catch_up() == n
    assert overlapped > 0
    expected = brute_entities(await log_events(store))
    stored = stored_states(tmp_path / "p.db")
    assert {k: (v["version"], v["state"]) for k, v in stored.items()} == {
        k: (v["version"], v["state"]) for k, v in expected.items()
    }
    assert scalar(tmp_path / "p.db", "SELECT count(*) FROM events") == n
    assert scalar(tmp_path / "p.db", "SELECT min(checkpoint) FROM projections") == n


async def test_statements_refused_in_a_commit_in_flight_drop_only_that_projection(
    store: EventStore, tmp_path: Path
) -> None:
    """The refused batch of ``refusing`` is dropped whole (its checkpoint stays before it, its
    read model holds the batches before), the mark says so, and ``entities`` commits every
    batch, the refused one included."""
    n = 2000
    await _fill(store, n, 40)  # version 30 of each aggregate: seqs 1161..1200
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection(), Refusing()], settings=SMALL)
        assert await runner.catch_up() == n
        assert set(runner.failures) == {"refusing"}
        marks = await stored_failures(db)
    path = tmp_path / "p.db"
    checkpoint = scalar(path, "SELECT checkpoint FROM projections WHERE name = 'refusing'")
    assert 0 < checkpoint < 1161
    assert marks["refusing"].seq > checkpoint
    assert scalar(path, "SELECT max(v) FROM refusing_rows") == (checkpoint + 39) // 40
    assert scalar(path, "SELECT checkpoint FROM projections WHERE name = 'entities'") == n
    expected = brute_entities(await log_events(store))
    assert {k: v["version"] for k, v in stored_states(path).items()} == {
        k: v["version"] for k, v in expected.items()
    }


async def test_a_reading_idle_short_of_its_target_counts_as_caught_up(store: EventStore) -> None:
    """A target past what the log delivers (a head that names no message of the reading) does
    not keep the intake waiting batch after batch: once the reading is idle it is caught up,
    and the runner then commits each batch before taking the next."""
    await _fill(store, 5, 5)
    intake = Intake(
        store, 1, follow=True, until=None, batch_size=20000, batch_delay=0.0,
        queue_batches=64, stopping=lambda: False, target=1000,
    )  # fmt: skip
    try:
        assert intake.behind()
        seqs: list[int] = []
        while 5 not in seqs:  # (a loaded machine may deliver the five in more than one batch)
            batch = await intake.next()
            assert batch is not None
            seqs += [m.seq for m in batch]
        assert seqs == [1, 2, 3, 4, 5]
        assert not intake.behind()
    finally:
        await intake.close()
