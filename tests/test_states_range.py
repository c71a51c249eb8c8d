"""One aggregate's states at a range of versions (``TimeTravel.states``, the query service's
``range`` through ``projections.states_between``): read from the file's copy of the events up
to the checkpoint, like ``state_at``, and from the log only past it."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventstore import AggregateNotFound, EventStore, InvalidPoint, NewEvent
from projections import EntitiesProjection, ProjectionDB, Runner, TimeTravel, states_between


async def test_a_range_inside_the_copy_receives_no_message_from_the_server(
    store: EventStore, tmp_path: Path
) -> None:
    """Versions 95..230 (three snapshots inside, a garbage message among them) come from the
    file alone, each what state_at from the log says; a range past the checkpoint goes on
    from the log, still right."""
    await store.append("agent", "q", [NewEvent("Changed", {"i": i}) for i in range(1, 151)])
    await store.js.publish(store.subject("agent", "q"), b"\xffnot json")  # takes no version
    await store.append("agent", "q", [NewEvent("Changed", {"i": i}) for i in range(151, 301)])
    async with await ProjectionDB.open(tmp_path / "q.db") as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        tt = TimeTravel(store, EntitiesProjection(), db)
        log = TimeTravel(store, EntitiesProjection())
        await tt.state_at("agent", "q", version=1)  # the rules check, once
        before = store.nc.stats["in_msgs"]
        got = await states_between(tt, "agent", "q", 95, 230, 1000)
        assert store.nc.stats["in_msgs"] == before
        assert [(s.version, s.state) for s in got] == [(v, {"i": v}) for v in range(95, 231)]
        assert [s.replayed for s in got] == [v + (v > 150) for v in range(95, 231)]
        for s in got[::15]:
            past = await log.state_at("agent", "q", version=s.version)
            assert (s.seq, s.state, s.vclock, s.lamport, s.recorded_at) == (
                past.seq,
                past.state,
                past.vclock,
                past.lamport,
                past.recorded_at,
            )
        page = await states_between(tt, "agent", "q", 250, 400, 20)
        assert [s.version for s in page] == list(range(250, 270))

        await store.append("agent", "q", [NewEvent("Changed", {"i": i}) for i in range(301, 321)])
        before = store.nc.stats["in_msgs"]
        tail = await states_between(tt, "agent", "q", 290, 400, 1000)
        assert store.nc.stats["in_msgs"] > before  # 301.. are past the checkpoint: the log
        assert [(s.version, s.state) for s in tail] == [(v, {"i": v}) for v in range(290, 321)]

        with pytest.raises(InvalidPoint, match="no version 321"):
            await states_between(tt, "agent", "q", 321, 400, 10)
        with pytest.raises(AggregateNotFound):
            await states_between(tt, "agent", "nobody", 1, 5, 10)
        with pytest.raises(InvalidPoint):
            await states_between(tt, "agent", "q", 5, 3, 10)
