"""Seed 004 (Vrooli) on the product: ``python -m examples.vrooli [--url URL]``.

Starts its own worker process (the ``vrooli`` read-model projection beside ``entities``), runs
the seed's scenarios against stream ``VROOLI`` and ends with one JSON line of the figures it
checked; exit 0 only if every check held. See examples/vrooli/README.md.
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
from eventstore import DEFAULT_URL, EventStore, EventStoreError, StreamSettings
from examples.vrooli import scenarios

ROOT = Path(__file__).resolve().parents[2]  # the directory that holds ``examples``
SETTINGS = StreamSettings(name="VROOLI", prefix="vrooli")
READ_MODELS = "examples.vrooli.readmodels:ReadModels"


async def run(url: str) -> dict[str, Any]:
    checks = scenarios.Checks()
    tag = uuid.uuid4().hex[:8]
    figures: dict[str, Any] = {"example": "vrooli", "run": tag}
    async with await EventStore.connect(
        url, producer=f"vrooli-api-{tag}", stream=SETTINGS
    ) as store:
        with tempfile.TemporaryDirectory(prefix="vrooli-") as tmp:
            worker = WorkerProcess(
                url, stream=SETTINGS, directory=Path(tmp),
                projections=["entities", READ_MODELS], pythonpath=[ROOT],
            )  # fmt: skip
            async with worker, ProjectionClient(store) as client:
                print(f"worker pid {worker.pid}: entities + {READ_MODELS} into {worker.db}")
                env = scenarios.Env(store, client, worker.db, tag, checks)
                print("\nCQRS read models: teams, bots, chats")
                figures["read_models"] = await scenarios.read_models(env)
                print("\nL1 cache: a live view invalidated by the change feed, no TTL")
                figures["cache"] = await scenarios.cache(env)
                print("\nread-your-writes after a command")
                figures["read_your_writes"] = await scenarios.read_your_writes(env)
                print("\ntime-travel debugging of a swarm run")
                figures["swarm"] = await scenarios.swarm_debugging(env)
    figures["checks_passed"] = checks.passed
    figures["failed"] = checks.failed
    figures["ok"] = not checks.failed
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.vrooli", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("EVENTSTORE_URL", DEFAULT_URL))
    args = parser.parse_args(argv)
    try:
        figures = asyncio.run(run(args.url))
    except EventStoreError as exc:
        print(f"examples.vrooli: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
