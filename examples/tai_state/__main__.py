"""Seed 002 (TAI-State) on the product: ``python -m examples.tai_state [--url URL]``.

Starts its own projection worker (a real ``eventstore worker`` process), runs the seed's
scenarios against stream ``TAI``, prints what each shows, and ends with one JSON line of the
figures it checked; exit 0 only if every check held. See examples/tai_state/README.md.
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
from examples.tai_state import model, scenarios

ROOT = Path(__file__).resolve().parents[2]  # the directory that holds ``examples``
SETTINGS = StreamSettings(name="TAI", prefix="tai")


async def run(url: str) -> dict[str, Any]:
    checks = scenarios.Checks()
    tag = uuid.uuid4().hex[:8]
    async with await EventStore.connect(url, producer=f"tai-admin-{tag}", stream=SETTINGS) as store:
        current = store.rules.current
        if current is None or current.rules != model.rules():
            await store.set_rules(model.rules(), comment="examples.tai_state")
            print("rules stored with the log: workflow machine, lww / priority / merge resolvers")
        start = await store.head() + 1
        with tempfile.TemporaryDirectory(prefix="tai-") as tmp:
            worker = WorkerProcess(
                url, stream=SETTINGS, directory=Path(tmp),
                projections=["entities", *model.PROJECTIONS], settings={"snapshot_every": 10},
                pythonpath=[ROOT],
            )  # fmt: skip
            async with worker, ProjectionClient(store) as client:
                print(f"worker pid {worker.pid} folds stream TAI into {worker.db}")
                env = scenarios.Env(url, SETTINGS, tag, checks, client)
                figures: dict[str, Any] = {"example": "tai_state", "run": tag}
                steps = [
                    ("contention", "optimistic locking under contention", scenarios.contention),
                    ("transaction", "multi-document transaction", scenarios.transaction),
                    ("conflicts", "conflict strategies and vector clocks", scenarios.conflicts),
                    ("temporal", "snapshots and state at a past time", scenarios.temporal),
                    ("errors", "transient and permanent errors", scenarios.errors),
                    ("lock", "distributed lock on a hot document", scenarios.hot_lock),
                ]
                for key, title, scenario in steps:
                    print(f"\n{title}")
                    figures[key] = await scenario(env)
                print("\naudit export")
                figures["audit"] = await scenarios.audit(env, start)
    figures["checks_passed"] = checks.passed
    figures["failed"] = checks.failed
    figures["ok"] = not checks.failed
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.tai_state", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("EVENTSTORE_URL", DEFAULT_URL))
    args = parser.parse_args(argv)
    try:
        figures = asyncio.run(run(args.url))
    except EventStoreError as exc:
        print(f"examples.tai_state: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
