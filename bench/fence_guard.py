"""The server-side fencing guard, evaluated: ``Nats-Expected-Last-Subject-Sequence-Subject``.

With each lease grant kept as a message in the log (``<prefix>._grants.<name>``), an append
made under a grant can carry, in its atomic batch, a guard message whose expectation is checked
against the *grant* subject: "the last grant of this lease is still seq G". A holder whose
grant was superseded has its whole batch refused (10071) with nothing stored.

What this script measures on one node (``sync_interval: always``), one append at a time:

- ``plain``: one event per append, its own expected-last-subject-sequence (what we do now);
- ``guarded``: the same, plus a guard message in one atomic batch (two messages per append);
- ``pair``: the same two-message batch without the guard's expectation (the batch's own cost);
- ``stale_refused``: appends of a superseded grant that the server refused (all of them);
- ``stale_stored``: messages of those appends that were stored anyway (must be 0).

``python -m bench.fence_guard [--n 500]`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StreamConfig

from eventstore import EmbeddedServer, free_port

PREFIX = "fg"
GRANTS = f"{PREFIX}._grants.realm"
GUARDS = f"{PREFIX}._guards.realm"


async def _batch(nc: Any, msgs: list[tuple[str, bytes, dict[str, str]]]) -> dict[str, Any]:
    """Publish ``msgs`` as one atomic batch; the server's reply as a dict."""
    batch = uuid.uuid4().hex
    for i, (subject, body, headers) in enumerate(msgs, 1):
        headers = headers | {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(i)}
        if i == len(msgs):
            headers["Nats-Batch-Commit"] = "1"
        if i < len(msgs):  # the middle of a batch goes by plain publish (no reply)
            await nc.publish(subject, body, headers=headers)
            continue
        reply = await nc.request(subject, body, timeout=5, headers=headers)
        got: dict[str, Any] = json.loads(reply.data) if reply.data else {}
        return got
    raise AssertionError("unreachable")


def guarded(
    subject: str, head: int, grant: int, body: bytes
) -> list[tuple[str, bytes, dict[str, str]]]:
    """An append's batch: the guard (checked against the grant subject), then the event."""
    guard = {"Nats-Expected-Last-Subject-Sequence": str(grant),
             "Nats-Expected-Last-Subject-Sequence-Subject": GRANTS}  # fmt: skip
    event = {"Nats-Expected-Last-Subject-Sequence": str(head), "Nats-Msg-Id": uuid.uuid4().hex}
    return [(GUARDS, b"", guard), (subject, body, event)]


async def measure(url: str, stream: str, n: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{PREFIX}.>"], allow_atomic=True,
                                     deny_delete=True, deny_purge=True))  # fmt: skip
    body = json.dumps({"data": {"x": 1}}).encode()
    out: dict[str, Any] = {"n": n}
    head, t = 0, time.perf_counter()
    for _ in range(n):
        expect = {"Nats-Expected-Last-Subject-Sequence": str(head)}
        ack = await js.publish(f"{PREFIX}.plain.a", body, headers=expect)
        head = ack.seq
    out["plain_per_s"] = round(n / (time.perf_counter() - t))
    grant = (await js.publish(GRANTS, b'{"owner": "old"}')).seq
    head, t = 0, time.perf_counter()
    for _ in range(n):
        got = await _batch(nc, guarded(f"{PREFIX}.guarded.a", head, grant, body))
        assert "error" not in got, got
        head = got["seq"]
    out["guarded_per_s"] = round(n / (time.perf_counter() - t))
    head, t = 0, time.perf_counter()
    for _ in range(n):
        unguarded = guarded(f"{PREFIX}.pair.a", head, grant, body)
        unguarded[0] = (f"{PREFIX}._marks.realm", b"", {})  # same two messages, no guard
        got = await _batch(nc, unguarded)
        assert "error" not in got, got
        head = got["seq"]
    out["pair_per_s"] = round(n / (time.perf_counter() - t))
    out["guarded_cost"] = round(out["plain_per_s"] / out["guarded_per_s"], 2)
    before = (await js.stream_info(stream)).state.last_seq
    await js.publish(GRANTS, b'{"owner": "new"}')  # a new grant supersedes the old one
    refused = 0
    for _ in range(min(n, 50)):
        got = await _batch(nc, guarded(f"{PREFIX}.guarded.a", head, grant, body))
        refused += got.get("error", {}).get("err_code") == 10071
    out["stale_refused"] = refused
    out["stale_stored"] = (await js.stream_info(stream)).state.last_seq - before - 1
    await nc.close()
    return out


async def run(n: int = 500) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp), port=free_port())
        server.start()
        try:
            return await measure(server.url, "FENCEGUARD", n)
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    print(json.dumps(asyncio.run(run(parser.parse_args().n))))


if __name__ == "__main__":
    main()
