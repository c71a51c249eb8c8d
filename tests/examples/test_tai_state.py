"""examples.tai_state (seed 002) against the real server, with its real worker process: the
domain outcome from its last JSON line, and read back from the log through the public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from eventstore import EventStore, StreamSettings, VectorClock
from projections import Repository

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, url: str, timeout: float = 240) -> tuple[int, str, dict[str, Any]]:
    """``python -m examples.NAME --url URL`` as a user runs it: exit code, output, last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    done = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", "--url", url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {done.stderr[-3000:]}"
    return done.returncode, done.stdout + done.stderr, json.loads(lines[-1])


async def test_tai_state_runs_every_scenario_of_the_seed(nats_url: str) -> None:
    """Exit 0, every check held, and the log holds what the example claims: exact counts
    under contention and under the lock, an all-or-nothing transfer, a concurrent pair of
    governor writes, a past state from a snapshot."""
    code, output, figures = run_example("tai_state", nats_url)
    assert code == 0, output[-4000:]
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
