"""``eventstore watch`` and ``eventstore publish --wait`` as a user runs them: real processes
against a real worker process, lines read from the pipe while the watch runs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from helpers_serving import running_worker
from test_cli_serving import ROOT, _env, cli

from eventstore import EventStore, NewEvent

FIELDS = ["projection", "aggregate_type", "aggregate_id", "version", "seq", "state"]


def watch_process(store: EventStore, *args: str) -> subprocess.Popen[bytes]:
    g = ["--url", store.url, "--stream", store.settings.name, "--prefix", store.settings.prefix]
    return subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", "watch", *args, *g],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )


def done(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


async def read_line(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line, proc.stderr.read().decode() if proc.stderr else "no output"
    parsed: dict[str, object] = json.loads(line)
    return parsed


async def test_watch_prints_initial_states_then_changes_flushed_and_stops_on_sigint(
    store: EventStore, tmp_path: Path
) -> None:
    """The watch prints each current agent state, then a change published afterwards (read
    from the pipe while it runs, so flushed), with exactly the six fields; SIGINT: exit 0."""
    await store.append("agent", "a1", NewEvent("Created", {"n": 1}))
    await store.append("agent", "a2", NewEvent("Created", {"n": 2}))
    await store.append("task", "t1", NewEvent("Queued"))
    async with running_worker(store, tmp_path / "w.db", tmp_path / "w.log"):
        proc = watch_process(store, "agent")
        try:
            first = [await read_line(proc), await read_line(proc)]
            assert [(x["aggregate_id"], x["version"]) for x in first] == [("a1", 1), ("a2", 1)]
            assert list(first[0]) == FIELDS and first[0]["state"] == {"n": 1}
            published = await cli(
                store, tmp_path, "publish", "agent", "a1", "Moved", "--data", '{"n": 5}'
            )
            assert published.returncode == 0, published.stderr
            change = await read_line(proc)
            assert (change["aggregate_id"], change["version"], change["state"]) == (
                "a1", 2, {"n": 5},
            )  # fmt: skip
            assert change["seq"] == json.loads(published.stdout)["seq"]
            proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            assert proc.stderr is not None and proc.stderr.read() == b""
        finally:
            done(proc)


async def test_watch_ends_quietly_when_its_reader_goes_away(
    store: EventStore, tmp_path: Path
) -> None:
    """`eventstore watch | head -1`: once the reader closed the pipe, the watch exits 0 at
    once, though no new change comes to make it write."""
    await store.append("agent", "a1", NewEvent("Created"))
    async with running_worker(store, tmp_path / "w.db", tmp_path / "w.log"):
        proc = watch_process(store)
        try:
            await read_line(proc)
            assert proc.stdout is not None
            proc.stdout.close()
            assert await asyncio.to_thread(proc.wait, 20) == 0
        finally:
            done(proc)


async def test_publish_wait_then_state_shows_the_write(store: EventStore, tmp_path: Path) -> None:
    """`publish --wait` prints the usual JSON once the projection has the event, so `state`
    through the query service right after shows it; without a worker it, and `watch`, fail in
    one line."""
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    async with running_worker(store, tmp_path / "w.db", tmp_path / "w.log"):
        for i in range(5):
            pub = await cli(
                store, elsewhere, "publish", "agent", "rw", "Set", "--data", f'{{"n": {i}}}',
                "--wait",
            )  # fmt: skip
            assert pub.returncode == 0, pub.stderr
            out = json.loads(pub.stdout)
            assert set(out) == {"id", "seq", "version", "duplicate"}
            state = await cli(store, elsewhere, "state", "agent", "rw")
            assert state.returncode == 0, state.stderr
            got = json.loads(state.stdout)
            assert (got["version"], got["state"]) == (i + 1, {"n": i})
    alone = await cli(store, elsewhere, "publish", "agent", "rw", "Set", "--wait", "0.5")
    assert alone.returncode == 1
    assert len(alone.stderr.splitlines()) == 1 and "entities" in alone.stderr, alone.stderr
    bad = await cli(store, elsewhere, "publish", "agent", "rw", "Set", "--wait", "-1")
    assert bad.returncode == 2 and "--wait" in bad.stderr
    watch = await cli(store, elsewhere, "watch", "agent")  # no worker: one line, no hang
    assert watch.returncode == 1 and watch.stdout == ""
    assert (
        watch.stderr.startswith("eventstore: UnknownProjection: ")
        and len(watch.stderr.splitlines()) == 1
    ), watch.stderr
