"""Group-commit benchmark: ``append_many`` against raw atomic batches of the same messages.

Three cells, each beside raw nats-py baselines measured in the same interleaved rounds:

- cold: 2,000 appends (one event each) to 2,000 aggregates never written before;
- warm: 2,000 more appends to the same aggregates (their heads are cached);
- contended: two producers (two connections) each appending 2,000 events round-robin over the
  same 100 aggregates at the same time, so their batches keep invalidating each other's heads.

Baselines: raw atomic batches of 500 carrying the same headers (``Nats-Msg-Id`` on every
message, ``Nats-Expected-Last-Subject-Sequence`` on each subject's first message of a batch,
from heads the raw writer tracks itself), and pipelined ``publish_async`` with a
``Nats-Msg-Id``. Bodies are the size of ours. Targets (issue 15): cold and warm >= 0.8x raw
atomic, contended >= 0.3x raw atomic (on 100 aggregates).
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import msgspec
import nats

from bench.common import bench_server, main_for, report, timed
from eventstore import AppendRequest, EventStore, NewEvent, StreamSettings, uuid7
from eventstore.events import Envelope, encode_envelope, utcnow

_DATA = {"step": "processing", "progress": 0.65, "note": "x" * 60}
_BATCH = 500


def _body_size() -> int:
    env = Envelope(
        id=uuid7(),
        type="Progressed",
        aggregate_type="agent",
        aggregate_id="agent-00000-000",
        version=1,
        occurred_at=utcnow(),
        producer="bench",
        lamport=10000,
        vclock={"bench": 10000},
        data=_DATA,
    )
    return len(encode_envelope(env))


class RawAtomic:
    """Raw nats-py atomic batches with our headers; it tracks each subject's last sequence."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.last: dict[str, int] = {}
        self.batches = 0

    async def publish(self, subjects: list[str], body: bytes) -> None:
        for start in range(0, len(subjects), _BATCH):
            chunk = subjects[start : start + _BATCH]
            self.batches += 1
            bid = f"raw-{id(self)}-{self.batches}"
            first: set[str] = set()
            n = len(chunk)
            for i, subject in enumerate(chunk, 1):
                h = {"Nats-Msg-Id": uuid7(), "Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(i)}
                if subject not in first:
                    first.add(subject)
                    h["Nats-Expected-Last-Subject-Sequence"] = str(self.last.get(subject, 0))
                if i == n:
                    h["Nats-Batch-Commit"] = "1"
                    reply = await self.nc.request(subject, body, timeout=30, headers=h)
                elif i == 1:
                    await self.nc.request(subject, body, timeout=30, headers=h)
                else:
                    await self.nc.publish(subject, body, headers=h)
            ack = msgspec.json.decode(reply.data)
            if "error" in ack:
                raise RuntimeError(f"raw atomic batch refused: {ack['error']}")
            seq = int(ack["seq"]) - n + 1
            for subject in chunk:
                self.last[subject] = seq
                seq += 1


async def _raw_atomic(raw: RawAtomic, subjects: list[str], body: bytes) -> float:
    with timed() as t:
        await raw.publish(subjects, body)
    return len(subjects) / t.seconds


async def _raw_async(js: Any, subjects: list[str], body: bytes) -> float:
    with timed() as t:
        futs = [await js.publish_async(s, body, headers={"Nats-Msg-Id": uuid7()}) for s in subjects]
        await asyncio.wait_for(asyncio.gather(*futs), 120)
    return len(subjects) / t.seconds


def _requests(ids: list[str]) -> list[AppendRequest]:
    return [AppendRequest("agent", i, [NewEvent("Progressed", _DATA)]) for i in ids]


async def _ours(store: EventStore, ids: list[str]) -> float:
    with timed() as t:
        results = await store.append_many(_requests(ids))
    if failed := [r for r in results if isinstance(r, Exception)]:
        raise RuntimeError(f"{len(failed)} appends failed: {failed[0]}")
    return len(ids) / t.seconds


async def _ours_contended(stores: list[EventStore], ids: list[str]) -> float:
    with timed() as t:
        got = await asyncio.gather(*(s.append_many(_requests(ids)) for s in stores))
    if failed := [r for rs in got for r in rs if isinstance(r, Exception)]:
        raise RuntimeError(f"{len(failed)} contended appends failed: {failed[0]}")
    return len(ids) * len(stores) / t.seconds


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


async def run(
    quick: bool = False, rounds: int | None = None, aggregates: int | None = None
) -> dict[str, Any]:
    n = aggregates or (500 if quick else 2000)
    shared = 100
    rounds = rounds or (2 if quick else 5)
    body = b"x" * _body_size()
    cells = ("cold", "warm", "contended")
    rates: dict[str, list[float]] = {
        k: [] for k in ("raw_new", "raw_known", "raw_shared", "raw_async", *cells)
    }
    ratios: dict[str, list[float]] = {k: [] for k in cells}
    with bench_server() as (server, _):
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="RAW", subjects=["raw.>"], allow_atomic=True)
        raw = RawAtomic(nc)
        settings = StreamSettings(name="BENCH", prefix="bench")
        a = await EventStore.connect(server.url, producer="bench-a", stream=settings,
                                     append_timeout=120.0)  # fmt: skip
        b = await EventStore.connect(server.url, producer="bench-b", stream=settings,
                                     append_timeout=120.0)  # fmt: skip
        try:
            await a.append("agent", "warmup", NewEvent("Warmup", _DATA))
            await _raw_atomic(raw, ["raw.warmup"] * 10, body)
            shared_ids = [f"shared-{i % shared:03d}" for i in range(n)]
            await _ours_contended([a, b], shared_ids[:shared])  # both learn the shared heads
            for r in range(rounds):  # interleaved, so drift on a noisy machine hits every cell
                raw_subjects = [f"raw.agent.r{r}-{i:05d}" for i in range(n)]
                ids = [f"r{r}-{i:05d}" for i in range(n)]
                rn = await _raw_atomic(raw, raw_subjects, body)
                cold = await _ours(a, ids)
                rk = await _raw_atomic(raw, raw_subjects, body)
                warm = await _ours(a, ids)
                ra = await _raw_async(js, [f"raw.async.r{r}-{i:05d}" for i in range(n)], body)
                rs = await _raw_atomic(raw, [f"raw.shared.{i % shared}" for i in range(n)], body)
                contended = await _ours_contended([a, b], shared_ids)
                for k, v in (("raw_new", rn), ("raw_known", rk), ("raw_shared", rs),
                             ("raw_async", ra), ("cold", cold), ("warm", warm),
                             ("contended", contended)):  # fmt: skip
                    rates[k].append(v)
                ratios["cold"].append(cold / rn)
                ratios["warm"].append(warm / rk)
                ratios["contended"].append(contended / rs)
        finally:
            await a.close()
            await b.close()
            await nc.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    figures: dict[str, Any] = {
        "aggregates": n,
        "rounds": rounds,
        **{f"{k}_events_per_s": round(v) for k, v in med.items()},
        **{f"{k}_ratio": round(statistics.median(v), 2) for k, v in ratios.items()},
        **{f"{k}_ratio_min_max": [round(min(v), 2), round(max(v), 2)] for k, v in ratios.items()},
        **{f"{k}_vs_publish_async": round(med[k] / med["raw_async"], 2) for k in cells},
    }
    report(
        f"group commit ({len(body)}-byte events, fsync on every ack, median (min-max) of "
        f"{rounds} interleaved rounds)",
        [
            ("cell", "eventstore", "raw atomic (same headers)", "ratio (target)", "vs async"),
            (
                f"cold: {n} new aggregates",
                f"{med['cold']:.0f}/s",
                f"{med['raw_new']:.0f}/s",
                f"{_spread(ratios['cold'])} (>= 0.8)",
                figures["cold_vs_publish_async"],
            ),
            (
                f"warm: the same {n} again",
                f"{med['warm']:.0f}/s",
                f"{med['raw_known']:.0f}/s",
                f"{_spread(ratios['warm'])} (>= 0.8)",
                figures["warm_vs_publish_async"],
            ),
            (
                f"contended: 2 producers, {shared} aggregates",
                f"{med['contended']:.0f}/s",
                f"{med['raw_shared']:.0f}/s",
                f"{_spread(ratios['contended'])} (>= 0.3)",
                figures["contended_vs_publish_async"],
            ),
            ("raw publish_async + Nats-Msg-Id", "", f"{med['raw_async']:.0f}/s", "", ""),
        ],
        figures,
    )
    return figures


def main() -> None:
    main_for(
        "groupcommit",
        run,
        description=__doc__ or "",
        sizes={"rounds": "interleaved rounds", "aggregates": "appends per cell"},
    )


if __name__ == "__main__":
    main()
