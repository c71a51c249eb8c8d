"""``python -m bench [--quick] [--only NAME,...] [--plot DIR [--runs N]]`` (``make bench``):
every benchmark, one after the other; with ``--plot`` each benchmark's figures also as a PNG
chart in DIR (``bench.plots``: ours beside the baseline, median and min-max over N runs)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench import (
    audit,
    catchup,
    compare_eventsourcing,
    failover,
    groupcommit,
    live,
    plots,
    publish,
    serving,
    timetravel,
    writemodel,
)
from eventstore.logging import configure_logging

BENCHMARKS: dict[str, Any] = {
    "publish": publish,
    "groupcommit": groupcommit,
    "catchup": catchup,
    "live": live,
    "timetravel": timetravel,
    "compare_eventsourcing": compare_eventsourcing,
    "audit": audit,
    "writemodel": writemodel,
    "serving": serving,
    "failover": failover,
}


async def run_all(quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, module in BENCHMARKS.items():
        if only is None or name in only:
            results[name] = await module.run(quick=quick)
    return results


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", type=_names, metavar="NAME,...", help="only these benchmarks")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write a PNG per benchmark")
    parser.add_argument(
        "--runs", type=int, default=None, metavar="N",
        help="run everything N times (default 3 with --plot, else 1): the plots' spread",
    )  # fmt: skip
    parser.add_argument(
        "--replot", type=Path, metavar="DIR", help="redraw DIR's PNGs from its results.json"
    )
    args = parser.parse_args()
    if args.replot is not None:
        runs = json.loads((args.replot / "results.json").read_text())
        for path in plots.plot_runs(runs, args.replot):
            print(f"wrote {path}")
        return
    configure_logging("warning", json=False)
    count = args.runs or (3 if args.plot else 1)
    if count < 1:
        parser.error("--runs must be at least 1")
    runs = [asyncio.run(run_all(args.quick, args.only)) for _ in range(count)]
    for results in runs:
        print(json.dumps(results, default=str))
    if args.plot is not None:
        args.plot.mkdir(parents=True, exist_ok=True)
        (args.plot / "results.json").write_text(json.dumps(runs, default=str, indent=1))
        for path in plots.plot_runs(runs, args.plot):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
