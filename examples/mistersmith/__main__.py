"""Seed 003 (MisterSmith) on the product: ``python -m examples.mistersmith [--url URL]``.

Starts its own worker process (running the supervisor reactor and serving metrics), runs the
seed's scenarios against stream ``SMITH``, migrates the log to a fresh embedded server, and
ends with one JSON line of the figures it checked; exit 0 only if every check held.
See examples/mistersmith/README.md.
"""

from __future__ import annotations

import uuid
from typing import Any

from consumers import ProjectionClient
from eventstore import EventStore, StreamSettings, free_port
from examples._shell import ROOT, Context, run_example, store_rules, worker
from examples.mistersmith import scenarios

SUPERVISOR = "examples.mistersmith.supervisor:Supervisor"


async def run(ctx: Context) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    figures: dict[str, Any] = {"example": "mistersmith", "run": tag}
    async with await EventStore.connect(
        ctx.url, producer=f"smith-runtime-{tag}", stream=ctx.settings
    ) as store:
        if await store_rules(store, scenarios.rules(), "examples.mistersmith") is not None:
            print("rules stored with the log: the agent lifecycle machine")
        port = free_port()
        async with (
            worker(ctx, reactors=[SUPERVISOR], metrics_port=port) as w,
            ProjectionClient(store) as client,
        ):
            print(f"worker pid {w.pid}: entities + reactor {SUPERVISOR}, metrics :{port}")
            env = scenarios.Env(store, client, tag, ctx.checks)
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
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_example(
        "mistersmith", __doc__, run, argv, stream=StreamSettings(name="SMITH", prefix="smith")
    )


if __name__ == "__main__":
    raise SystemExit(main())
