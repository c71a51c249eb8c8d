"""``eventstore status --watch N``: a fresh JSON document every N seconds, following the log,
until SIGTERM (exit 0)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers_projections import ROOT

from eventstore import EventStore, NewEvent
from projections import EntitiesProjection, ProjectionDB, Runner


async def test_watch_prints_a_new_document_per_refresh_until_sigterm(
    store: EventStore, tmp_path: Path
) -> None:
    """Each line is a whole status document; an event appended while watching shows up as
    the stream's new last sequence and as lag; SIGTERM ends it with exit 0."""
    db = tmp_path / "w.db"
    await store.append("agent", "w", NewEvent("E"))
    async with await ProjectionDB.open(db) as pdb:
        await Runner(store, pdb, [EntitiesProjection()]).catch_up()
    command = [sys.executable, "-m", "consumers.cli", "--url", store.url, "--stream",
               store.settings.name, "--prefix", store.settings.prefix, "--db", str(db),
               "status", "--watch", "1"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    proc = await asyncio.to_thread(
        subprocess.Popen, command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        first = json.loads(await asyncio.to_thread(proc.stdout.readline))
        assert first["stream"]["last_seq"] == 1 and first["projections"][0]["lag_events"] == 0
        await store.append("agent", "w", NewEvent("E"))
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline and proc.poll() is None
            doc = json.loads(await asyncio.to_thread(proc.stdout.readline))
            if doc["stream"]["last_seq"] == 2:
                break
        assert doc["projections"][0]["lag_events"] == 1 and doc["stream"]["messages"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        proc.stdout.close()
