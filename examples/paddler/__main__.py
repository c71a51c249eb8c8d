"""``python -m examples.paddler [--url URL] [--stream PADDLER]``: seed 001 end to end.

It stores the rules (``rules.toml``: the request machine), starts a real ``eventstore
worker`` process folding the ``paddler`` projection and running the reconciler
(``AgentReconciler``), and then, on the stream ``PADDLER`` (prefix ``paddler``):

1. desired state from three sources at once (management API, configuration file
   ``paddler.toml``, auto-discovery), resolved field by field by priority; the reconciler
   brings each agent's current state to it;
2. re-run on change: the API overrides a model while the worker is SIGKILLed and restarted,
   then withdraws the override; current follows each time, each change applied once;
3. the request lifecycle Queued → Routed → Processing → Streaming → Completed / Failed,
   with two invalid transitions refused;
4. the state dump API (desired, applicable, current, requests) from the query service;
5. a diff between two points of a request's life.

The last line printed is one JSON object with the figures checked; exit 0 only if all hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers import ProjectionClient
from eventstore import EventStore, Rules, StreamSettings
from examples._shell import Context, fresh_stream, run_example, verify_worker, worker
from examples.paddler.desired import PaddlerProjection
from examples.paddler.steps import (
    desired_sources,
    re_reconcile,
    request_diff,
    request_lifecycle,
    state_dump,
)

RULES = Path(__file__).with_name("rules.toml")
PROJECTION = "examples.paddler.desired:PaddlerProjection"
RECONCILER = "examples.paddler.reconciler:AgentReconciler"


async def run(ctx: Context) -> dict[str, Any]:
    checks = ctx.checks
    figures: dict[str, Any] = {"example": "paddler", "stream": ctx.settings.name}
    async with await EventStore.connect(ctx.url, producer="balancer-1", stream=ctx.settings) as s:
        version = await fresh_stream(s, Rules.from_toml(RULES), "paddler example")
        print(f"rules version {version} stored: the request machine")
        async with worker(
            ctx, check_stop=True, projections=[PROJECTION], reactors=[RECONCILER],
            serves="paddler", settings={"snapshot_every": 5},
        ) as w:  # fmt: skip
            print(f"worker pid {w.pid}: the paddler projection and the reconciler")
            client = ProjectionClient(s, projection="paddler")
            figures["desired"] = await desired_sources(ctx.url, s, client, checks)
            figures["reconcile"] = await re_reconcile(ctx.url, s, client, w, checks)
            figures["requests"] = await request_lifecycle(s, client, checks)
            figures["dump"] = await state_dump(client, checks, await s.head())
            figures["diff"] = await request_diff(s, checks)
            figures["verify_ok"] = await verify_worker(ctx, s, client, w, PaddlerProjection())
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_example(
        "paddler", __doc__, run, argv,
        stream=StreamSettings(name="PADDLER", prefix="paddler"), own_stream=True,
        report="claims",
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
