"""Seed 002 (TAI-State) on the product: ``python -m examples.tai_state [--url URL]``.

Starts its own projection worker (a real ``eventstore worker`` process), runs the seed's
scenarios against stream ``TAI``, prints what each shows, and ends with one JSON line of the
figures it checked; exit 0 only if every check held. See examples/tai_state/README.md.
"""

from __future__ import annotations

import uuid
from typing import Any

from consumers import ProjectionClient
from eventstore import EventStore, StreamSettings
from examples._shell import Context, run_example, store_rules, worker
from examples.tai_state import model, scenarios


async def run(ctx: Context) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    async with await EventStore.connect(
        ctx.url, producer=f"tai-admin-{tag}", stream=ctx.settings
    ) as store:
        if await store_rules(store, model.rules(), "examples.tai_state") is not None:
            print("rules stored with the log: workflow machine, lww / priority / merge resolvers")
        start = await store.head() + 1
        async with (
            worker(
                ctx, projections=["entities", *model.PROJECTIONS], settings={"snapshot_every": 10}
            ) as w,
            ProjectionClient(store) as client,
        ):
            print(f"worker pid {w.pid} folds stream TAI into {w.db}")
            env = scenarios.Env(ctx.url, ctx.settings, tag, ctx.checks, client)
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
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_example(
        "tai_state", __doc__, run, argv, stream=StreamSettings(name="TAI", prefix="tai")
    )


if __name__ == "__main__":
    raise SystemExit(main())
