"""A writer process for the write-model tests: ``n`` updates incrementing ``count`` of one
aggregate through ``projections.Repository`` (run as ``python tests/writer_process.py URL
STREAM PREFIX PRODUCER N AGGREGATE_ID``); prints the versions it appended, one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from eventstore import EventStore, NewEvent, StreamSettings
from projections import Repository


def increment(state: dict[str, Any]) -> list[NewEvent]:
    return [NewEvent("Incremented", {"count": state.get("count", 0) + 1})]


async def main(url: str, stream: str, prefix: str, producer: str, n: int, agg_id: str) -> None:
    settings = StreamSettings(name=stream, prefix=prefix)
    async with await EventStore.connect(url, producer=producer, stream=settings) as store:
        repo = Repository(store)
        versions = []
        attempts = 0
        for _ in range(n):
            done = await repo.update("counter", agg_id, increment, retries=1000)
            versions.append(done.version)
            attempts += done.attempts
    sys.stdout.write(json.dumps({"versions": versions, "attempts": attempts}) + "\n")


if __name__ == "__main__":
    u, s, p, who, count, agg = sys.argv[1:7]
    asyncio.run(main(u, s, p, who, int(count), agg))
