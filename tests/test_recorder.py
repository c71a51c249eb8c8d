"""The recorder: a batch is committed whole with its checkpoint, or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from projections import AggregateState, EntitiesProjection, ProjectionDB
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
