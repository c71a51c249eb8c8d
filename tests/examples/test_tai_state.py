"""examples.tai_state (seed 002) against the real server, with its real worker process: the
domain outcome from its last JSON line, and read back from the log through the public API."""

from __future__ import annotations

from helpers_examples import run_example

from eventstore import EventStore, StreamSettings, VectorClock
from projections import Repository


async def test_tai_state_runs_every_scenario_of_the_seed(nats_url: str) -> None:
    """Exit 0, every check held, and the log holds what the example claims: exact counts
    under contention and under the lock, an all-or-nothing transfer, a concurrent pair of
    governor writes, a past state from a snapshot."""
    proc, figures = run_example("tai_state", nats_url)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert figures["ok"] and figures["failed"] == [] and figures["checks_passed"] >= 20
    assert figures["contention"]["count"] == 200
    assert figures["lock"] == {"conflicts": 0, "count": 60, "grants": 60}
    assert figures["transaction"]["balances"] == [70, 30]
    assert figures["temporal"] == {
        "replayed": 2, "snapshot_version": 10, "version_at": 12, "version_now": 25,
    }  # fmt: skip
    states = figures["conflicts"]["states"]
    assert states["entities"] == {"limit": 25, "owners": ["research"]}
    assert states["tai_priority"] == {"limit": 40, "owners": ["ops"]}
    assert states["tai_merge"] == {"limit": 25, "owners": ["ops", "research"]}
    assert figures["errors"]["permanent_attempts"] == 1
    assert figures["errors"]["transient_attempts"] > 1

    run = figures["run"]
    settings = StreamSettings(name="TAI", prefix="tai")
    async with await EventStore.connect(nats_url, producer="reader", stream=settings) as store:
        repo = Repository(store)
        assert (await repo.load("doc", f"counter-{run}")).state == {"count": 200}
        hot = await repo.load("doc", f"hot-{run}")
        assert (hot.state, hot.version) == ({"count": 60}, 60)
        assert [await store.version("account", f"{x}-{run}") for x in "ab"] == [2, 2]
        assert await store.version("ledger", f"ledger-{run}") == 1
        quota = [ev async for ev in store.read("quota", f"quota-{run}")]
        assert [ev.producer.split("-")[1] for ev in quota] == ["primary"] * 5 + ["replica"]
        assert VectorClock(quota[-1].vclock).concurrent_with(quota[-2].vclock)
        hot_events = [ev async for ev in store.read("doc", f"hot-{run}")]
        tokens = [ev.metadata["lease"]["token"] for ev in hot_events]
        assert tokens == sorted(tokens) and len(set(tokens)) == 60
