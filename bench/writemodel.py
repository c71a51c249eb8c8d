"""Write-model benchmark: ``Repository.update`` under contention beside raw appends.

1, 4 and 16 writers (each its own connection and producer, as separate agents are) share
``n`` operations, either all on ONE aggregate (every writer races every other: conflicts,
reloads, backoff) or each on its own aggregate. Each operation is an ``update`` (consistent
load from the leader + decide + append at the expected version, retried on conflict) or, as
the baseline, a raw ``append`` (blind: no read, no expectation) by the same writers. Rounds
are interleaved (update, raw, update, raw ...) so drift on a noisy machine hits both sides;
the table gives the median and the spread (min-max) over rounds, and the conflicts retried.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.common import bench_server, connect, main_for, median, report, timed
from eventstore import EventStore, NewEvent
from projections import Repository

WRITERS = (1, 4, 16)


def _increment(state: dict[str, Any]) -> list[NewEvent]:
    return [NewEvent("Incremented", {"count": state.get("count", 0) + 1})]


async def _updates(repos: list[Repository], n: int, shared: bool, tag: str) -> tuple[float, int]:
    """(operations per second, conflicts retried) for ``n`` updates shared by the writers."""
    per = [n // len(repos) + (i < n % len(repos)) for i in range(len(repos))]
    attempts = 0

    async def writer(i: int) -> None:
        nonlocal attempts
        agg = f"{tag}-shared" if shared else f"{tag}-{i}"
        for _ in range(per[i]):
            done = await repos[i].update("counter", agg, _increment, retries=10_000)
            attempts += done.attempts

    with timed() as t:
        await asyncio.gather(*(writer(i) for i in range(len(repos))))
    return n / t.seconds, attempts - n


async def _appends(stores: list[EventStore], n: int, shared: bool, tag: str) -> float:
    per = [n // len(stores) + (i < n % len(stores)) for i in range(len(stores))]

    async def writer(i: int) -> None:
        agg = f"{tag}-shared" if shared else f"{tag}-{i}"
        for k in range(per[i]):
            await stores[i].append("counter", agg, NewEvent("Incremented", {"count": k}))

    with timed() as t:
        await asyncio.gather(*(writer(i) for i in range(len(stores))))
    return n / t.seconds


async def run(
    quick: bool = False, rounds: int | None = None, n: int | None = None
) -> dict[str, Any]:
    n = n or (48 if quick else 480)
    rounds = rounds or (1 if quick else 3)
    rates: dict[str, list[float]] = {}
    conflicts: dict[str, int] = {}
    with bench_server() as (server, _):
        stores = [
            await connect(server, "WRITEMODEL", "wm", producer=f"writer-{i}")
            for i in range(max(WRITERS))
        ]
        try:
            repos = [Repository(s) for s in stores]
            await repos[0].update("counter", "warmup", _increment)
            for r in range(rounds):
                for w in WRITERS:
                    for shared in (True, False):
                        key = f"{w}_{'one' if shared else 'distinct'}"
                        tag = f"r{r}w{w}{key}"
                        rate, retried = await _updates(repos[:w], n, shared, tag)
                        rates.setdefault(f"update_{key}", []).append(rate)
                        conflicts[key] = conflicts.get(key, 0) + retried
                        raw = await _appends(stores[:w], n, shared, f"raw{tag}")
                        rates.setdefault(f"append_{key}", []).append(raw)
        finally:
            for s in stores:
                await s.close()
    figures: dict[str, Any] = {"operations": n, "rounds": rounds}
    rows: list[tuple[str, ...]] = [
        ("writers", "aggregates", "update/s (min-max)", "raw append/s (min-max)", "ratio",
         "conflicts retried"),
    ]  # fmt: skip
    for w in WRITERS:
        for shared in (True, False):
            key = f"{w}_{'one' if shared else 'distinct'}"
            up, ap = rates[f"update_{key}"], rates[f"append_{key}"]
            figures[f"update_{key}_per_s"] = round(median(up))
            figures[f"append_{key}_per_s"] = round(median(ap))
            figures[f"ratio_{key}"] = round(median(up) / median(ap), 2)
            figures[f"conflicts_{key}"] = conflicts[key]
            rows.append((
                str(w), "one" if shared else "one each",
                f"{median(up):.0f} ({min(up):.0f}-{max(up):.0f})",
                f"{median(ap):.0f} ({min(ap):.0f}-{max(ap):.0f})",
                str(figures[f"ratio_{key}"]), str(conflicts[key]),
            ))  # fmt: skip
    report(
        f"write model: {n} operations per cell, median of {rounds} interleaved rounds",
        rows,
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "writemodel",
        run,
        description=__doc__ or "",
        sizes={"rounds": "interleaved rounds", "n": "operations per cell"},
    )


if __name__ == "__main__":
    main()
