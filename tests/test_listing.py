"""Local listing of a projection's states (``projections.query_states`` / ``read_state``):
by name, without internal tables or codec types, over a real fold in a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from eventstore import AggregateNotFound, EventStore, InvalidRequest, NewEvent, UnknownProjection
from projections import (
    EntitiesProjection,
    Projection,
    ProjectionDB,
    Runner,
    current_state,
    query_states,
    read_state,
)


class Counter(msgspec.Struct):
    n: int = 0
    last: str = ""


class Counting(Projection[Counter]):
    """A custom projection whose states are Structs: listed as JSON builtins by name."""

    name = "counting"
    state_type = Counter

    def initial(self, aggregate_type: str, aggregate_id: str) -> Counter:
        return Counter()

    def apply(self, state: Counter, event: object) -> Counter:
        return Counter(state.n + 1, getattr(event, "type", ""))


async def fold(store: EventStore, db: Path) -> None:
    for i in range(12):
        await store.append("job", f"j{i:02}", NewEvent("Made", {"k": i % 3, "s": str(i % 3)}))
    await store.append("job", "j00", NewEvent("Again", {"k": "0"}))
    async with await ProjectionDB.open(db) as pdb:
        await Runner(store, pdb, [EntitiesProjection(), Counting()]).catch_up()


async def test_query_states_pages_filters_and_reads_by_name(
    store: EventStore, tmp_path: Path
) -> None:
    """Pages of 5 cover the 12 aggregates once in (type, id) order; where keeps JSON types
    apart; a custom projection's Struct states list as builtins; read_state equals the typed
    current_state."""
    db = tmp_path / "p.db"
    await fold(store, db)
    async with await ProjectionDB.open(db, readonly=True) as pdb:
        seen, cursor = [], None
        while True:
            page = await query_states(pdb, "entities", limit=5, cursor=cursor)
            assert page.checkpoint == 13
            seen += [r.aggregate_id for r in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [f"j{i:02}" for i in range(12)]
        ks = await query_states(pdb, "entities", where={"k": 0})
        assert [r.aggregate_id for r in ks.items] == ["j03", "j06", "j09"]
        strings = await query_states(pdb, "entities", where={"k": "0"})
        assert [r.aggregate_id for r in strings.items] == ["j00"]
        both = await query_states(pdb, "entities", where={"k": 1, "s": "1"})
        assert [r.aggregate_id for r in both.items] == ["j01", "j04", "j07", "j10"]
        since = await query_states(pdb, "entities", since=11)
        assert [(r.aggregate_id, r.seq) for r in since.items] == [("j11", 12), ("j00", 13)]
        counting = await query_states(pdb, "counting", where={"n": 2})
        assert [(r.aggregate_id, r.state) for r in counting.items] == [
            ("j00", {"n": 2, "last": "Again"})
        ]
        by_name = await read_state(pdb, "counting", "job", "j00")
        typed = await current_state(pdb, Counting(), "job", "j00")
        assert by_name.state == msgspec.to_builtins(typed.state)
        assert (by_name.version, by_name.seq, by_name.vclock) == (
            typed.version, typed.seq, typed.vclock,
        )  # fmt: skip
        with pytest.raises(AggregateNotFound):
            await read_state(pdb, "entities", "job", "nope")
        with pytest.raises(UnknownProjection, match="holds: counting, entities"):
            await query_states(pdb, "orders")
        for bad in (
            {"limit": 0},
            {"limit": 1001},
            {"cursor": "garbage!"},
            {"where": {"k": [1]}},
            {"where": {"k": float("nan")}},
            {"where": {"k": 2**70}},
            {"since": -1},
        ):
            with pytest.raises(InvalidRequest):
                await query_states(pdb, "entities", **bad)  # type: ignore[arg-type]


async def test_an_existing_file_gets_the_seq_index_at_its_next_writer_open(
    store: EventStore, tmp_path: Path
) -> None:
    """A file made before the index existed gets it when a writer opens it; readers work
    without it."""
    db = tmp_path / "old.db"
    await fold(store, db)
    con = sqlite3.connect(db)
    con.execute("DROP INDEX states_by_seq")
    con.close()
    async with await ProjectionDB.open(db, readonly=True) as pdb:
        assert len((await query_states(pdb, "entities", since=0)).items) == 12
    async with await ProjectionDB.open(db):
        pass
    con = sqlite3.connect(db)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    con.close()
    assert "states_by_seq" in names
