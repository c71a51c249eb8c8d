"""A reader that closes the pipe early (``| head``) ends the writer promptly and quietly: the
CLI's ``history`` and ``tail`` exit 0 with nothing on stderr, ``tail`` even when no new event
comes to make it write; an application printing into ``head`` while the library works exits
instead of hanging, and no line of the library's is among what ``head`` read.

Real shell pipelines (``bash -c '... | head -N'``), each bounded by a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers_projections import ROOT
from test_cli import BASE

from eventstore import AppendRequest, EventStore, NewEvent, StreamSettings

TIMEOUT = 60.0  # a hang fails; 20 s was once too short on a machine running three suites


def run_pipeline(command: list[str], head: int) -> tuple[list[str], int, str]:
    """``command | head -N`` in bash: the lines head printed, the command's exit status and
    its stderr."""
    quoted = " ".join("'" + part.replace("'", "'\\''") + "'" for part in command)
    script = f'{quoted} 2>"$ERR" | head -{head}; echo "${{PIPESTATUS[0]}}" >"$STATUS"'
    with tempfile.TemporaryDirectory() as tmp:
        err, status = Path(tmp) / "err", Path(tmp) / "status"
        try:
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=ROOT,
                env=os.environ | {"ERR": str(err), "STATUS": str(status)},
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{quoted} | head -{head}` did not end within {TIMEOUT} s")
        return done.stdout.splitlines(), int(status.read_text()), err.read_text()


async def _fill(store: EventStore, n: int) -> None:
    await store.append_many(
        [AppendRequest("agent", "a1", [NewEvent("Step", {"i": i}) for i in range(500)])]
        * (n // 500)
    )


def _cli(url: str, settings: StreamSettings, *args: str) -> list[str]:
    return [*BASE, *args, "--url", url, "--stream", settings.name, "--prefix", settings.prefix]


async def test_history_into_head_exits_0_quietly(
    store: EventStore, nats_url: str, settings: StreamSettings
) -> None:
    """``eventstore history ... | head -1`` on a long history: one line read, exit 0, no
    traceback."""
    await _fill(store, 5000)
    out, status, err = run_pipeline(_cli(nats_url, settings, "history", "agent", "a1"), 1)
    assert len(out) == 1 and '"version":1' in out[0]
    assert (status, err) == (0, "")


@pytest.mark.parametrize("more", [False, True], ids=["idle-log", "growing-log"])
async def test_tail_into_head_exits_0_even_with_nothing_new(
    store: EventStore, nats_url: str, settings: StreamSettings, more: bool
) -> None:
    """``eventstore tail --from-seq 1 | head -2`` with two events in the log: it ends at once
    although nothing new arrives (it would otherwise follow forever), exit 0, stderr empty;
    with a log still growing too."""
    await store.append("agent", "a1", [NewEvent("A"), NewEvent("B")])
    if more:
        await _fill(store, 5000)
    out, status, err = run_pipeline(_cli(nats_url, settings, "tail", "--from-seq", "1"), 2)
    assert [line.split('"type":"')[1].split('"')[0] for line in out] == ["A", "B"]
    assert (status, err) == (0, "")


APP = """
import asyncio, sys
from eventstore import EventStore, NewEvent, StreamSettings
from projections import EntitiesProjection, ProjectionDB, Runner

URL, STREAM, PREFIX, DB = sys.argv[1:5]

async def main():
    store = await EventStore.connect(URL, producer="app",
                                     stream=StreamSettings(name=STREAM, prefix=PREFIX))
    for round in range(1000):
        await store.append("agent", f"a{round % 7}", [NewEvent("Step", {"round": round})])
        db = await ProjectionDB.open(DB)            # never closed, as in the README's example
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        for i in range(200):
            print(f"line {round * 200 + i}")

asyncio.run(main())
"""


def test_an_application_printing_into_head_exits(
    tmp_path: Path, nats_url: str, settings: StreamSettings
) -> None:
    """``python app.py | head -3`` while the app opens databases and folds batches: head gets
    the app's own first three lines (nothing of the library's), and the app ends at its own
    BrokenPipeError (exit 1) instead of hanging."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    command = [sys.executable, str(script), nats_url, settings.name, settings.prefix]
    out, status, err = run_pipeline([*command, str(tmp_path / "app.db")], 3)
    assert out == ["line 0", "line 1", "line 2"]
    assert status == 1
    assert "BrokenPipeError" in err and "projections" not in err and "eventstore" not in err
