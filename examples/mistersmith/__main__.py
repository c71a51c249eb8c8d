"""Seed 003 (MisterSmith) on the product: ``python -m examples.mistersmith [--url URL]``.

Starts its own worker process (running the supervisor reactor and serving metrics), runs the
seed's scenarios against stream ``SMITH``, migrates the log to a fresh embedded server, and
ends with one JSON line of the figures it checked; exit 0 only if every check held.
See examples/mistersmith/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from consumers import ProjectionClient, WorkerProcess
from eventstore import DEFAULT_URL, EventStore, EventStoreError, StreamSettings, free_port
from examples.mistersmith import scenarios

ROOT = Path(__file__).resolve().parents[2]  # the directory that holds ``examples``
SETTINGS = StreamSettings(name="SMITH", prefix="smith")
SUPERVISOR = "examples.mistersmith.supervisor:Supervisor"


async def run(url: str) -> dict[str, Any]:
    checks = scenarios.Checks()
    tag = uuid.uuid4().hex[:8]
    figures: dict[str, Any] = {"example": "mistersmith", "run": tag}
    async with await EventStore.connect(
        url, producer=f"smith-runtime-{tag}", stream=SETTINGS
    ) as store:
        current = store.rules.current
        if current is None or current.rules != scenarios.rules():
            await store.set_rules(scenarios.rules(), comment="examples.mistersmith")
            print("rules stored with the log: the agent lifecycle machine")
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="smith-") as tmp:
            worker = WorkerProcess(
                url, stream=SETTINGS, directory=Path(tmp),
                reactors=[SUPERVISOR], metrics_port=port, pythonpath=[ROOT],
            )  # fmt: skip
            async with worker, ProjectionClient(store) as client:
                print(f"worker pid {worker.pid}: entities + reactor {SUPERVISOR}, metrics :{port}")
                env = scenarios.Env(store, client, tag, checks)
                print("\nagent lifecycles, every append retried with the same ids")
                figures["lifecycles"] = await scenarios.lifecycles(env)
                print("\nsupervision: restarts with backoff, escalation")
                figures["supervision"] = await scenarios.supervision(env)
                print("\nreplay of the flaky agent's history")
                figures["replay"] = await scenarios.replay(env, figures["supervision"]["agent"])
                print("\nthe worker's metrics")
                figures["metrics"] = await scenarios.metrics(env, port)
                print("\nmigration: export, import into a fresh server, verify")
                figures["migration"] = await scenarios.migration(env, ROOT)
    figures["checks_passed"] = checks.passed
    figures["failed"] = checks.failed
    figures["ok"] = not checks.failed
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.mistersmith", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("EVENTSTORE_URL", DEFAULT_URL))
    args = parser.parse_args(argv)
    try:
        figures = asyncio.run(run(args.url))
    except EventStoreError as exc:
        print(f"examples.mistersmith: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
