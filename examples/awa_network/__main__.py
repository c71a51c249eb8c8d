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

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from consumers import ProjectionClient, WorkerProcess
from eventstore import DEFAULT_URL, EventStore, EventStoreError, Rules, StreamSettings
from examples.awa_network.realms import RealmProjection
from examples.awa_network.recovery import carving_logs, concurrent_agents, crash_and_reconcile
from examples.awa_network.steps import (
    Checks,
    expiry_and_fencing,
    initialise,
    lock_and_operate,
    staleness,
)
from projections import ProjectionDB, verify

RULES = Path(__file__).with_name("rules.toml")
PROJECTION = "examples.awa_network.realms:RealmProjection"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.awa_network",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        default=os.environ.get("EVENTSTORE_URL", DEFAULT_URL),
        help=f"NATS server URL (env EVENTSTORE_URL, default {DEFAULT_URL})",
    )
    p.add_argument("--stream", default="AWA", help="a stream of its own (default AWA)")
    p.add_argument("--prefix", default=None, help="subject prefix (default: the stream, lower)")
    p.add_argument("--dir", default=None, help="keep the worker's files here (default: temp)")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = StreamSettings(name=args.stream, prefix=args.prefix or args.stream.lower())
    checks = Checks()
    figures: dict[str, Any] = {"example": "awa_network", "stream": settings.name}
    async with await EventStore.connect(args.url, producer="kitenga_whiro", stream=settings) as s:
        if await s.head() > 0:
            raise EventStoreError(
                f"stream {settings.name} already holds events (an earlier run?): the example "
                "needs a stream of its own, give another with --stream NAME"
            )
        rules = await s.set_rules(Rules.from_toml(RULES), comment="awa_network example")
        print(f"rules version {rules.version} stored: realms resolve conflicts by lww")
        worker = WorkerProcess(
            args.url,
            stream=settings,
            directory=workdir,
            projections=[PROJECTION],
            serves="realms",
            settings={"snapshot_every": 10},
        )
        await worker.start()
        try:
            print(f"worker pid {worker.pid} folds the realms projection into {worker.db}")
            client = ProjectionClient(s, projection="realms")
            figures["realms"] = await initialise(s, client, checks)
            figures["stale_before"] = await staleness(client, checks, expect_stale=True)
            figures["lock"] = await lock_and_operate(s, client, checks)
            figures["stale_after"] = await staleness(client, checks, expect_stale=False)
            figures["expiry"] = await expiry_and_fencing(s, client, worker, checks)
            figures["concurrent"] = await concurrent_agents(args.url, s, client, worker, checks)
            figures["crash"] = await crash_and_reconcile(args.url, s, client, checks)
            figures["carving"] = await carving_logs(s, workdir, checks)
            await client.wait_for(await s.head(), timeout=30)
            async with await ProjectionDB.open(worker.db, readonly=True) as db:
                report = await verify(s, db, [RealmProjection()])
            checks.check(
                "verify: an independent fold of the log equals the worker's database",
                report.ok,
                str(report.mismatches[:3]),
            )
            figures["verify_ok"] = report.ok
        finally:
            code = await worker.stop()
            checks.check("the worker stopped cleanly on SIGTERM (exit 0)", code == 0, str(code))
    figures["checks"] = checks.results
    figures["ok"] = checks.ok
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.dir is not None:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
            figures = asyncio.run(run(args, Path(args.dir)))
        else:
            with tempfile.TemporaryDirectory(prefix="awa-") as tmp:
                figures = asyncio.run(run(args, Path(tmp)))
    except (EventStoreError, OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"awa_network: {type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(figures, sort_keys=True))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
