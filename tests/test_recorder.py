"""The recorder: a batch is committed whole with its checkpoint, or not at all."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from eventstore import ProjectionError
from projections import AggregateState, EntitiesProjection, ProjectionDB, Statement
from projections.failures import Failed
from projections.recorder import FileChanged, Recorder
from projections.rows import SlotBatch, StateCodec


async def test_a_batch_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    """A stale generation or checkpoint writes nothing; the right ones write states and the
    checkpoint in one transaction, and the recorder reads them back."""
    p = EntitiesProjection()
    async with await ProjectionDB.open(tmp_path / "r.db") as db:
        recorder = Recorder(db)
        async with db.transaction():
            await recorder.register(p, 0)
        agg = AggregateState("agent", "a", {"x": 1}, version=1, seq=1, vclock={"p": 1})
        batch = SlotBatch(p, StateCodec(p), changed={agg.key: agg}, writes=False)
        common: dict[str, Any] = {"seq": 1, "recorded_us": None, "now_us": 1, "keep": 5}
        with pytest.raises(FileChanged):
            await recorder.commit_batch(
                [batch], generation="other", checkpoints={p.name: 0}, **common
            )
        with pytest.raises(FileChanged):
            await recorder.commit_batch(
                [batch], generation=db.generation, checkpoints={p.name: 7}, **common
            )
        assert await recorder.count("states", p.name) == 0
        assert (await recorder.positions())[p.name].checkpoint == 0
        await recorder.commit_batch(
            [batch], generation=db.generation, checkpoints={p.name: 0}, **common
        )
        assert (await recorder.positions())[p.name].checkpoint == 1
        stored = await recorder.state(StateCodec(p), "agent", "a")
        assert stored is not None and (stored.version, stored.state) == (1, {"x": 1})


class _Rows(EntitiesProjection):
    """Entities that also keep a read model; ``bad`` makes its statement one SQLite refuses."""

    name = "rows"
    schema = ("CREATE TABLE IF NOT EXISTS rm_rows (id TEXT PRIMARY KEY, v INTEGER)",)
    tables = ("rm_rows",)
    bad = False

    def write(self, changes: Any) -> list[Statement]:
        table = "no_such_table" if self.bad else "rm_rows"
        rows = [(c.aggregate_id, c.version) for c in changes]
        return [Statement(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", rows)]


async def test_a_refused_read_model_statement_in_the_one_hop_writes_nothing(
    tmp_path: Path,
) -> None:
    """The whole batch runs in one call on the database's thread: a read-model statement
    SQLite refuses raises ``Failed`` naming that projection and rolls back every other row of
    the batch (the other projection's states, the copy of the events, the checkpoints); the
    same batch without it then commits, and a thousand-plus states go in whole (the rows are
    inserted many to a statement)."""
    good, bad = EntitiesProjection(), _Rows()
    bad.bad = True
    async with await ProjectionDB.open(tmp_path / "r.db") as db:
        recorder = Recorder(db)
        async with db.transaction():
            for p in (good, bad):
                await recorder.register(p, 0)
                await recorder.create_read_models(p)

        def batch(p: Any, n: int) -> SlotBatch:
            aggs = [AggregateState("agent", f"a{i}", {"i": i}, version=1, seq=i + 1) for i in
                    range(n)]  # fmt: skip
            return SlotBatch(p, StateCodec(p), changed={a.key: a for a in aggs}, writes=p is bad)

        n = 2500
        events = [(i + 1, "agent", f"a{i}", 1, 5, b"{}") for i in range(n)]
        common: dict[str, Any] = {
            "generation": db.generation, "checkpoints": {good.name: 0, bad.name: 0}, "seq": n,
            "recorded_us": None, "now_us": 1, "keep": 5, "events": events,
        }  # fmt: skip
        with pytest.raises(Failed) as failed:
            await recorder.commit_batch([batch(good, n), batch(bad, 3)], **common)
        assert failed.value.projection == bad.name and "refused" in failed.value.message
        assert await recorder.count("states", good.name) == 0
        assert (await db.fetchone("SELECT count(*) FROM events"))[0] == 0
        assert (await recorder.positions())[good.name].checkpoint == 0
        assert not db.conn.in_transaction
        await recorder.commit_batch([batch(good, n)], **common)
        assert await recorder.count("states", good.name) == n
        assert (await db.fetchone("SELECT count(*) FROM events"))[0] == n
        positions = await recorder.positions()
        assert (positions[good.name].checkpoint, positions[bad.name].checkpoint) == (n, 0)
        stored = await recorder.state(StateCodec(good), "agent", f"a{n - 1}")
        assert stored is not None and stored.state == {"i": n - 1}


async def test_run_gives_the_raw_connection_and_translates_its_errors(tmp_path: Path) -> None:
    """``ProjectionDB.run`` runs a plain function on the connection's thread with the sqlite3
    connection; an sqlite3 error comes out as ``ProjectionError`` naming the file, any other
    exception as it is."""
    async with await ProjectionDB.open(tmp_path / "r.db") as db:
        assert await db.run(lambda conn: conn.execute("SELECT 41 + 1").fetchone()[0]) == 42
        with pytest.raises(ProjectionError, match="no such table"):
            await db.run(lambda conn: conn.execute("SELECT * FROM no_such_table"))

        def boom(conn: sqlite3.Connection) -> None:
            raise KeyError("mine")

        with pytest.raises(KeyError):
            await db.run(boom)
