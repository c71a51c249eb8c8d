"""A guardian process that dies mid-operation (the crash of seed 000's "Handling Failures").

``python -m examples.awa_network.guardian URL STREAM PREFIX`` takes the realm lock of
``te_po`` (TTL 2 s, renewed while it lives), appends the start of an OCR run under it, prints
``operating <token> <seq>`` and works on forever; the example SIGKILLs it there. What it
leaves behind is what a real crash leaves: a pipeline marked ``running`` that nobody runs,
and a lock that nobody renews, which the server expires after its TTL.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

from eventstore import EventStore, NewEvent, StreamSettings

LOCK = "realm:te_po"


async def main(url: str, stream: str, prefix: str) -> None:
    me = f"kitenga_whiro_process_{os.getpid()}"
    settings = StreamSettings(name=stream, prefix=prefix)
    async with await EventStore.connect(url, producer=me, stream=settings) as store:
        lease = await store.leases.acquire(LOCK, owner=me, ttl=2.0, wait=10.0)
        keeper = asyncio.create_task(store.leases.keep(lease))
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        res = await store.append(
            "realm",
            "te_po",
            NewEvent(
                "pipeline_start",
                {
                    "operation": "ocr_run",
                    "details": {"pipeline": "ocr_pipeline"},
                    "status": "success",
                    "error": None,
                    "duration_ms": 0,
                    "state": {
                        "pipelines": {"ocr_pipeline": {"status": "running", "last_run": now}}
                    },
                },
                metadata={"guardian": "kitenga_whiro"},
            ),
            lease=lease,
        )
        print(f"operating {lease.token} {res.last_seq}", flush=True)
        await asyncio.sleep(600)  # the OCR run; SIGKILL arrives long before
        keeper.cancel()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
