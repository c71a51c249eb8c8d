"""A client in another language: nats.js (pinned in tests/js/package.json) finds the query
service with ``$SRV.PING``, asks for a state and receives the change feed of an append."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers_serving import running_worker

from eventstore import EventStore, NewEvent

JS = Path(__file__).resolve().parent / "js"


def _node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the nats.js client test needs them")
    if not (JS / "node_modules" / "nats").is_dir():  # `make test` runs npm ci first
        subprocess.run([npm, "ci", "--prefix", str(JS), "--no-audit", "--no-fund"],
                       check=True, timeout=300, capture_output=True)  # fmt: skip
    return node


async def test_nats_js_discovers_the_service_and_receives_the_feed(
    store: EventStore, tmp_path: Path
) -> None:
    """nats.js: PING lists our worker (name eventstore, our stream), ``state`` answers with
    what the worker holds, and the append's notification arrives on the documented subject."""
    node = _node()
    await store.append("agent", "js-1", NewEvent("Created", {"lang": "python"}))
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log):
        proc = await asyncio.create_subprocess_exec(
            node, str(JS / "serving.mjs"), store.url, store.settings.name, "agent", "js-1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None

        async def line() -> dict[str, Any]:
            text = await asyncio.wait_for(proc.stdout.readline(), 20)  # type: ignore[union-attr]
            assert text, "the nats.js client ended early"
            return json.loads(text)  # type: ignore[no-any-return]

        try:
            ping = (await line())["ping"]
            assert [(p["name"], p["metadata"]["db"]) for p in ping] == [("eventstore", str(db))]
            state = await line()
            assert state["error"] is None
            assert (state["state"]["version"], state["state"]["state"]) == (1, {"lang": "python"})
            assert await line() == {"subscribed": True}
            await store.append("agent", "js-1", NewEvent("Noted", {"lang": "js"}))
            change = await line()
            assert change["subject"] == f"_ES.CHANGES.{store.settings.name}.entities.agent.js-1"
            note = change["change"]
            assert (note["aggregate_id"], note["version"], note["previous_version"]) == (
                "js-1", 2, 1,
            )  # fmt: skip
            assert note["state"] == {"lang": "js"}
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
