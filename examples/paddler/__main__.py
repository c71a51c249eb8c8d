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

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from consumers import ProjectionClient, WorkerProcess
from eventstore import DEFAULT_URL, EventStore, EventStoreError, Rules, StreamSettings
from examples.paddler.desired import PaddlerProjection
from examples.paddler.steps import (
    Checks,
    desired_sources,
    re_reconcile,
    request_diff,
    request_lifecycle,
    state_dump,
)
from projections import ProjectionDB, verify

RULES = Path(__file__).with_name("rules.toml")
PROJECTION = "examples.paddler.desired:PaddlerProjection"
RECONCILER = "examples.paddler.reconciler:AgentReconciler"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.paddler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        default=os.environ.get("EVENTSTORE_URL", DEFAULT_URL),
        help=f"NATS server URL (env EVENTSTORE_URL, default {DEFAULT_URL})",
    )
    p.add_argument("--stream", default="PADDLER", help="a stream of its own (default PADDLER)")
    p.add_argument("--prefix", default=None, help="subject prefix (default: the stream, lower)")
    p.add_argument("--dir", default=None, help="keep the worker's files here (default: temp)")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = StreamSettings(name=args.stream, prefix=args.prefix or args.stream.lower())
    checks = Checks()
    figures: dict[str, Any] = {"example": "paddler", "stream": settings.name}
    async with await EventStore.connect(args.url, producer="balancer-1", stream=settings) as s:
        if await s.head() > 0:
            raise EventStoreError(
                f"stream {settings.name} already holds events (an earlier run?): the example "
                "needs a stream of its own, give another with --stream NAME"
            )
        rules = await s.set_rules(Rules.from_toml(RULES), comment="paddler example")
        print(f"rules version {rules.version} stored: the request machine")
        worker = WorkerProcess(
            args.url,
            stream=settings,
            directory=workdir,
            projections=[PROJECTION],
            reactors=[RECONCILER],
            serves="paddler",
            settings={"snapshot_every": 5},
        )
        await worker.start()
        try:
            print(f"worker pid {worker.pid}: the paddler projection and the reconciler")
            client = ProjectionClient(s, projection="paddler")
            figures["desired"] = await desired_sources(args.url, s, client, checks)
            figures["reconcile"] = await re_reconcile(args.url, s, client, worker, checks)
            figures["requests"] = await request_lifecycle(s, client, checks)
            figures["dump"] = await state_dump(client, checks, await s.head())
            figures["diff"] = await request_diff(s, checks)
            await client.wait_for(await s.head(), timeout=30)
            async with await ProjectionDB.open(worker.db, readonly=True) as db:
                report = await verify(s, db, [PaddlerProjection()])
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
            with tempfile.TemporaryDirectory(prefix="paddler-") as tmp:
                figures = asyncio.run(run(args, Path(tmp)))
    except (EventStoreError, OSError) as exc:
        sys.stderr.write(f"paddler: {type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(figures, sort_keys=True))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
