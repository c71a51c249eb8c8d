"""Nothing the library opens keeps a process alive: a script that raises (or simply ends) with a
``ProjectionDB``, a ``Runner``, a ``TimeTravel`` or an ``EventStore`` still open exits at once,
with the exception's exit status, instead of hanging on a worker thread nobody closed.

Each case is a real Python process, bounded by a timeout: a hang fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers_projections import ROOT

from eventstore import StreamSettings

TIMEOUT = 20.0

PRELUDE = """
import asyncio, sys
from eventstore import EventStore, NewEvent, StreamSettings
from projections import EntitiesProjection, ProjectionDB, Runner, TimeTravel

URL, STREAM, PREFIX, DB = sys.argv[1:5]

async def connect():
    return await EventStore.connect(URL, producer="exit-test",
                                    stream=StreamSettings(name=STREAM, prefix=PREFIX))
"""

CASES = {
    # The README's own example style: opened, never closed, then an exception.
    "db_open_then_raise": """
async def main():
    db = await ProjectionDB.open(DB)
    raise RuntimeError("boom")
""",
    "db_readonly_then_raise": """
async def main():
    db = await ProjectionDB.open(DB)
    await db.close()
    ro = await ProjectionDB.open(DB, readonly=True)
    raise RuntimeError("boom")
""",
    "worker_lock_then_raise": """
async def main():
    db = await ProjectionDB.open(DB, lock=True)
    raise RuntimeError("boom")
""",
    # ``async with`` on the store closes it; the database opened inside is left open.
    "async_with_store_db_inside": """
async def main():
    async with await connect() as store:
        await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
        db = await ProjectionDB.open(DB)
        raise RuntimeError("boom")
""",
    "runner_left_open": """
async def main():
    store = await connect()
    await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
    runner = Runner(store, await ProjectionDB.open(DB), [EntitiesProjection()])
    await runner.catch_up()
    raise RuntimeError("boom")
""",
    "timetravel_left_open": """
async def main():
    store = await connect()
    await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
    db = await ProjectionDB.open(DB)
    await Runner(store, db, [EntitiesProjection()]).catch_up()
    tt = TimeTravel(store, EntitiesProjection(), db)
    await tt.state_at("agent", "a1", version=1)
    raise RuntimeError("boom")
""",
    "store_left_connected": """
async def main():
    store = await connect()
    await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
    raise RuntimeError("boom")
""",
    # No exception at all: a script that just ends with everything open exits 0.
    "everything_open_clean_end": """
async def main():
    store = await connect()
    await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
    db = await ProjectionDB.open(DB)
    await Runner(store, db, [EntitiesProjection()]).catch_up()
    print("done")
""",
}


def run_script(body: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(PRELUDE + body + "\nasyncio.run(main())\n")
    try:
        return subprocess.run(
            [sys.executable, str(script), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:  # what the issue reproduced: a hang
        pytest.fail(f"the process did not exit within {TIMEOUT} s: {exc.stderr!r}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unclosed_library_object_never_keeps_the_process_alive(
    case: str, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """The script exits within the timeout: 1 with its own traceback for the exception, 0
    when it simply ends; nothing of the library is printed."""
    done = run_script(
        CASES[case], tmp_path, nats_url, settings.name, settings.prefix, str(tmp_path / "p.db")
    )
    if case == "everything_open_clean_end":
        assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")
    else:
        assert done.returncode == 1, done.stderr
        assert done.stderr.rstrip().endswith("RuntimeError: boom"), done.stderr
        assert done.stdout == ""
