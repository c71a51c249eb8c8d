"""``python -m examples.awa_network [--url URL] [--stream AWA]``: seed 000 end to end.

It stores the rules (``rules.toml``), starts a real ``eventstore worker`` process folding the
``realms`` projection, and then, on the stream ``AWA`` (prefix ``awa``):

1. the guardian writes the realm state files ``te_po`` and ``te_hau`` (the seed's documents);
2. staleness: components whose ``last_sync`` is older than five minutes are reported;
3. the realm lock: request, acquire, operate (a vector sync, under the lease), release; a
   second request while it is held is refused, naming the holder; holds last 300 s at most;
4. released on timeout, and a stale holder fenced: a holder that stops renewing loses the
   lock when its TTL passes, the next one gets a larger token, and the old holder's late
   write is in the log but quarantined as ``fenced``, never in the state;
5. three agents update ``te_po`` at once without reading each other, while the worker is
   SIGKILLed and restarted: disjoint paths merge, overlapping ones are recorded conflicts
   resolved by ``lww``, and the worker, a fold from scratch and ``verify`` agree;
6. a guardian process is SIGKILLed mid-operation; the reconcile takes the expired lock and
   repairs the pipeline it left ``running``;
7. the carving logs: ``eventstore export realm <realm>`` per realm, in the seed's line shape.

The last line printed is one JSON object with the figures checked; exit 0 only if all hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers import ProjectionClient
from eventstore import EventStore, Rules, StreamSettings
from examples._shell import Context, fresh_stream, run_example, verify_worker, worker
from examples.awa_network.realms import RealmProjection
from examples.awa_network.recovery import carving_logs, concurrent_agents, crash_and_reconcile
from examples.awa_network.steps import expiry_and_fencing, initialise, lock_and_operate, staleness

RULES = Path(__file__).with_name("rules.toml")
PROJECTION = "examples.awa_network.realms:RealmProjection"


async def run(ctx: Context) -> dict[str, Any]:
    checks = ctx.checks
    figures: dict[str, Any] = {"example": "awa_network", "stream": ctx.settings.name}
    async with await EventStore.connect(
        ctx.url, producer="kitenga_whiro", stream=ctx.settings
    ) as s:
        version = await fresh_stream(s, Rules.from_toml(RULES), "awa_network example")
        print(f"rules version {version} stored: realms resolve conflicts by lww")
        async with worker(
            ctx, check_stop=True, projections=[PROJECTION], serves="realms",
            settings={"snapshot_every": 10},
        ) as w:  # fmt: skip
            print(f"worker pid {w.pid} folds the realms projection into {w.db}")
            client = ProjectionClient(s, projection="realms")
            figures["realms"] = await initialise(s, client, checks)
            figures["stale_before"] = await staleness(client, checks, expect_stale=True)
            figures["lock"] = await lock_and_operate(s, client, checks)
            figures["stale_after"] = await staleness(client, checks, expect_stale=False)
            figures["expiry"] = await expiry_and_fencing(s, client, w, checks)
            figures["concurrent"] = await concurrent_agents(ctx.url, s, client, w, checks)
            figures["crash"] = await crash_and_reconcile(ctx.url, s, client, checks)
            figures["carving"] = await carving_logs(s, ctx.workdir, checks)
            figures["verify_ok"] = await verify_worker(ctx, s, client, w, RealmProjection())
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_example(
        "awa_network", __doc__, run, argv,
        stream=StreamSettings(name="AWA", prefix="awa"), own_stream=True, report="claims",
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
