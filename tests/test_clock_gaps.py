"""How dense a producer's clock values stay in the log, and that a restart (a SIGKILL
included) never reuses one: real processes against a real nats-server."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eventstore import EventStore, NewEvent, StreamSettings

SCRIPT = Path(sys.executable).parent / "eventstore"
BASE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "consumers.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return env | {"EVENTSTORE_LOG_LEVEL": "warning"}


async def _own(url: str, settings: StreamSettings, producer: str) -> list[tuple[int, int]]:
    """(Lamport, own counter) of every event of ``producer``, in log order."""
    async with await EventStore.connect(url, producer="reader", stream=settings) as s:
        return [
            (e.lamport, e.vclock[producer]) async for e in s.read_all() if e.producer == producer
        ]


def _steps(values: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(values)]


async def test_consecutive_publish_processes_leave_no_gaps(
    nats_url: str, settings: StreamSettings
) -> None:
    """Five `eventstore publish` processes of one producer: Lamport times and counters 1..5
    (a one-shot process reserves exactly the values of its one append)."""
    glob = ["--url", nats_url, "--stream", settings.name, "--prefix", settings.prefix]
    for i in range(5):
        done = await asyncio.to_thread(
            subprocess.run,
            [*BASE, *glob, "--producer", "cli-dense", "publish", "agent", f"a{i % 2}", "Tick"],
            capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    seen = await _own(nats_url, settings, "cli-dense")
    assert [c for _, c in seen] == [1, 2, 3, 4, 5]
    assert [lamport for lamport, _ in seen] == [1, 2, 3, 4, 5]


async def test_a_restart_skips_at_most_what_the_last_connection_appended(
    nats_url: str, settings: StreamSettings
) -> None:
    """Connections of 1, 3 and 10 appends: values dense within each, and the skip at each
    restart is smaller than what the connection before appended (blocks grow from 1)."""
    for appends in (1, 3, 10, 1):
        async with await EventStore.connect(nats_url, producer="lib-x", stream=settings) as s:
            for i in range(appends):
                await s.append("agent", f"n{i}", NewEvent("Tick"))
    counters = [c for _, c in await _own(nats_url, settings, "lib-x")]
    steps = _steps(counters)
    assert all(step >= 1 for step in steps)
    # Within a connection: +1. At the restarts after 1, 3 and 10 appends: unused spare < n.
    restarts = [steps[0], steps[3], steps[13]]
    inside = [s for i, s in enumerate(steps) if i not in (0, 3, 13)]
    assert inside == [1] * len(inside)
    assert restarts[0] == 1 and all(1 <= r <= n for r, n in zip(restarts, (1, 3, 10), strict=True))


PRODUCER_LOOP = """
import asyncio, sys
from eventstore import EventStore, NewEvent, StreamSettings
async def main():
    s = await EventStore.connect(sys.argv[1], producer="killed",
                                 stream=StreamSettings(name=sys.argv[2], prefix=sys.argv[3]))
    i = 0
    while True:
        await s.append("agent", f"k{i % 7}", NewEvent("Tick"))
        i += 1
        if i == 50:
            print("ready", flush=True)
asyncio.run(main())
"""


def _run_and_kill(url: str, settings: StreamSettings) -> None:
    """Start the producer loop, wait until it appended 50 events, SIGKILL it mid-stream."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER_LOOP, url, settings.name, settings.prefix],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while proc.stdout.readline().strip() != "ready":  # library log lines may come first
            assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)  # killed mid-stream, appends in flight
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_sigkilled_producer_never_has_its_values_reused(
    nats_url: str, settings: StreamSettings
) -> None:
    """A producer SIGKILLed in the middle of appending; the next process of that name starts
    above every Lamport time and counter the killed one stored (or could have stored)."""
    await asyncio.to_thread(_run_and_kill, nats_url, settings)
    before = await _own(nats_url, settings, "killed")
    assert len(before) >= 50
    async with await EventStore.connect(nats_url, producer="killed", stream=settings) as s:
        after = await s.append("agent", "k0", NewEvent("Tick"))
    assert after.vclock["killed"] > max(c for _, c in before)
    assert after.lamport > max(lamport for lamport, _ in before)
