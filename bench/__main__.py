"""``python -m bench [--quick]`` (``make bench``): every benchmark, one after the other."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from bench import (
    audit,
    catchup,
    compare_eventsourcing,
    groupcommit,
    live,
    publish,
    serving,
    timetravel,
    writemodel,
)
from eventstore.logging import configure_logging


async def run_all(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, module in (
        ("publish", publish),
        ("groupcommit", groupcommit),
        ("catchup", catchup),
        ("live", live),
        ("timetravel", timetravel),
        ("compare_eventsourcing", compare_eventsourcing),
        ("audit", audit),
        ("writemodel", writemodel),
        ("serving", serving),
    ):
        results[name] = await module.run(quick=quick)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args()
    configure_logging("warning", json=False)
    results = asyncio.run(run_all(args.quick))
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
