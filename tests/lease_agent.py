"""A lease holder in a process of its own, for the crash tests of ``tests/test_leases_processes``.

``python tests/lease_agent.py URL STREAM PREFIX MODE NAME`` with MODE:

- ``contend N``: N times, take the lock ``NAME`` (waiting), append ``Entered`` and ``Left``
  to ``realm/NAME`` under it, release it;
- ``hold``: take the lock (TTL 2 s), print ``held <token>`` and sleep (to be SIGKILLed);
- ``stale``: take the lock (TTL 1 s), stamp an event with it, print ``stamped <token>``, then
  wait for a line on stdin and append the stamped event *without* checking the lease again:
  the gap between a holder's last check and its publish, widened by a SIGSTOP.
"""

from __future__ import annotations

import asyncio
import os
import sys

from eventstore import EventStore, NewEvent, StreamSettings, fenced_events


async def main(url: str, stream: str, prefix: str, mode: str, name: str, *rest: str) -> None:
    me = f"agent{os.getpid()}"
    settings = StreamSettings(name=stream, prefix=prefix)
    async with await EventStore.connect(url, producer=me, stream=settings) as store:
        if mode == "contend":
            for _ in range(int(rest[0])):
                async with store.lock(name, owner=me, ttl=5, wait=120) as lease:
                    for kind in ("Entered", "Left"):
                        data = {"owner": me, "token": lease.token}
                        await store.append("realm", name, NewEvent(kind, data), lease=lease)
        elif mode == "hold":
            lease = await store.leases.acquire(name, owner=me, ttl=2)
            print(f"held {lease.token}", flush=True)
            await asyncio.sleep(3600)
        elif mode == "stale":
            lease = await store.leases.acquire(name, owner=me, ttl=1)
            events = fenced_events(NewEvent("Set", {"value": "old holder"}), lease)
            print(f"stamped {lease.token}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            await store.append("realm", name, events)
            print("appended", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
