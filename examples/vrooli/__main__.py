"""Seed 004 (Vrooli) on the product: ``python -m examples.vrooli [--url URL]``.

Starts its own worker process (the ``vrooli`` read-model projection beside ``entities``), runs
the seed's scenarios against stream ``VROOLI`` and ends with one JSON line of the figures it
checked; exit 0 only if every check held. See examples/vrooli/README.md.
"""

from __future__ import annotations

import uuid
from typing import Any

from consumers import ProjectionClient
from eventstore import EventStore, StreamSettings
from examples._shell import Context, run_example, worker
from examples.vrooli import scenarios

READ_MODELS = "examples.vrooli.readmodels:ReadModels"


async def run(ctx: Context) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    figures: dict[str, Any] = {"example": "vrooli", "run": tag}
    producer = f"vrooli-api-{tag}"
    async with (
        await EventStore.connect(ctx.url, producer=producer, stream=ctx.settings) as store,
        worker(ctx, projections=["entities", READ_MODELS]) as w,
        ProjectionClient(store) as client,
    ):
        print(f"worker pid {w.pid}: entities + {READ_MODELS} into {w.db}")
        env = scenarios.Env(store, client, w.db, tag, ctx.checks)
        print("\nCQRS read models: teams, bots, chats")
        figures["read_models"] = await scenarios.read_models(env)
        print("\nL1 cache: a live view invalidated by the change feed, no TTL")
        figures["cache"] = await scenarios.cache(env)
        print("\nread-your-writes after a command")
        figures["read_your_writes"] = await scenarios.read_your_writes(env)
        print("\ntime-travel debugging of a swarm run")
        figures["swarm"] = await scenarios.swarm_debugging(env)
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_example(
        "vrooli", __doc__, run, argv, stream=StreamSettings(name="VROOLI", prefix="vrooli")
    )


if __name__ == "__main__":
    raise SystemExit(main())
