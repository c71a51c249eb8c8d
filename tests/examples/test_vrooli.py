"""examples.vrooli (seed 004) against the real server, with its real worker process: read
models, the live-view cache, read-your-writes and the swarm's time travel, checked from its
last JSON line and read back from the log and the past states it reports."""

from __future__ import annotations

from helpers_examples import run_example

from eventstore import EventStore, StreamSettings
from projections import EntitiesProjection, Repository, TimeTravel


async def test_vrooli_read_models_cache_and_swarm_debugging(nats_url: str) -> None:
    """Exit 0 with every check held; the cache served reads from memory and every write
    reached it; the log holds the rename, every posted message, and a swarm whose budget
    first went negative at version 4."""
    proc, figures = run_example("vrooli", nats_url)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert figures["ok"] and figures["failed"] == []
    assert figures["read_models"]["bots"] == 3 and figures["read_models"]["chats"] == 2
    cache = figures["cache"]
    assert cache["reads"] == 200 and cache["writes"] == 100
    assert cache["misses"] <= 5  # only a creator's first read of its new chat may miss
    assert cache["hit_rate"] == round((200 - cache["misses"]) / 200, 4)
    assert cache["staleness_ms_max"] is not None and 0 <= cache["stale_reads"] <= cache["reads"]
    assert figures["read_your_writes"]["name"] == "deep research"
    assert figures["swarm"]["broken_at"] == 4
    assert figures["swarm"]["budgets"] == [100, 80, 55, -15, -30, -30]

    run = figures["run"]
    settings = StreamSettings(name="VROOLI", prefix="vrooli")
    async with await EventStore.connect(nats_url, producer="reader", stream=settings) as store:
        repo = Repository(store)
        team = await repo.load("team", f"team-{run}")
        assert team.state["name"] == "deep research" and len(team.state["members"]) == 3
        posted = 0
        for i in range(10):
            events = [ev async for ev in store.read("chat", f"chat{i}-{run}")]
            counts = [ev.data["messages"] for ev in events]
            assert counts == list(range(len(counts))), "each message counted once, in order"
            posted += len(counts) - 1
        assert posted == cache["writes"] + 1  # the workload's, and read-your-writes' one
        past = await TimeTravel(store, EntitiesProjection()).state_at(
            "swarm", f"swarm-{run}", version=4
        )
        assert (past.state["budget"], past.state["bot"]) == (-15, "researcher")
