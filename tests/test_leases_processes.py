"""Leases across real processes: mutual exclusion, takeover after SIGKILL, a stale holder fenced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers_projections import ROOT, stored_states

from eventstore import EventStore, NewEvent, StreamSettings
from projections import EntitiesProjection, ProjectionDB, Runner, list_quarantine, verify

AGENT = str(ROOT / "tests" / "lease_agent.py")


def agent(
    url: str, settings: StreamSettings, *args: str, pipes: bool = True
) -> subprocess.Popen[bytes]:
    """A ``lease_agent.py`` process (with stdin/stdout pipes unless ``pipes`` is False)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["PYTHONPATH"] = str(ROOT)
    io = subprocess.PIPE if pipes else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, AGENT, url, settings.name, settings.prefix, *args],
        cwd=ROOT, env=env, stdin=io, stdout=io,
    )  # fmt: skip


def finish(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process if it still runs, reap it and close its pipes."""
    proc.kill()
    proc.wait(timeout=10)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def first_line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode().strip()


async def test_ten_processes_contend_and_at_most_one_holds_at_any_moment(
    nats_url: str, settings: StreamSettings, store: EventStore
) -> None:
    """Ten processes take one lock three times each: in the log every Entered is followed by
    the Left of the same holder and token, and tokens strictly increase (never two inside)."""
    procs = [agent(nats_url, settings, "contend", "te_po", "3", pipes=False) for _ in range(10)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    events = [e async for e in store.read("realm", "te_po")]
    assert len(events) == 60
    tokens = []
    for entered, left in zip(events[::2], events[1::2], strict=True):
        assert (entered.type, left.type) == ("Entered", "Left")
        assert entered.data == left.data  # the same holder and grant: nobody came in between
        assert entered.metadata["lease"] == {"name": "te_po", "token": entered.data["token"]}
        tokens.append(entered.data["token"])
    assert tokens == sorted(set(tokens))  # a new grant, with a larger token, every time
    assert len({e.data["owner"] for e in events}) == 10


async def test_a_killed_holder_loses_the_lease_at_its_ttl(
    nats_url: str, settings: StreamSettings, store: EventStore
) -> None:
    """The holder is SIGKILLed; nobody releases its lease, yet another acquires it within the
    TTL (2 s) plus a margin, with a larger token."""
    holder = agent(nats_url, settings, "hold", "realm:te_po")
    try:
        line = first_line(holder)
        assert line.startswith("held ")
        old = int(line.split()[1])
        killed = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        lease = await store.leases.acquire("realm:te_po", owner="next", ttl=5, wait=15)
        waited = time.monotonic() - killed
    finally:
        finish(holder)
    assert lease.token > old
    assert waited < 2 + 2.5  # TTL + margin (server expiry granularity and polling)


async def test_a_wakened_old_holder_is_fenced_off_in_the_projection(
    nats_url: str, settings: StreamSettings, store: EventStore, tmp_path: Path
) -> None:
    """An old holder stamped its write, was paused (SIGSTOP) past its TTL, and appends once
    woken: the new holder's write stays, the old one is quarantined as ``fenced``, and
    ``verify`` (an independent fold of the log) decides the same."""
    old = agent(nats_url, settings, "stale", "te_po")
    try:
        line = first_line(old)
        assert line.startswith("stamped ")
        old.send_signal(signal.SIGSTOP)
        lease = await store.leases.acquire("te_po", owner="new", ttl=5, wait=15)
        await store.append("realm", "te_po", NewEvent("Set", {"value": "new holder"}), lease=lease)
        old.send_signal(signal.SIGCONT)
        assert old.stdin is not None
        old.stdin.write(b"go\n")
        old.stdin.flush()
        assert first_line(old) == "appended"
        assert old.wait(timeout=10) == 0
    finally:
        finish(old)
    events = [e async for e in store.read("realm", "te_po")]
    assert [e.data["value"] for e in events] == ["new holder", "old holder"]  # both in the log
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()])
        await runner.catch_up()
        q = await list_quarantine(db, "entities")
        report = await verify(store, db, [EntitiesProjection()])  # an independent fold agrees
    assert report.ok, report.mismatches
    stored = stored_states(tmp_path / "p.db")[("realm", "te_po")]
    assert (stored["state"]["value"], stored["version"]) == ("new holder", 2)
    assert [(r.seq, r.kind) for r in q] == [(events[1].seq, "fenced")]
