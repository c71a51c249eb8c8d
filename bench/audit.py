"""Audit export/import benchmark: time and peak memory at 100k, 300k and 1M events (1M not
with ``--quick``), against raw nats-py, in ``--repeat`` (3) interleaved rounds. The import runs
at the sizes up to ``--import-max`` (300k): the issue asks a 1M export and a 100k round trip,
and a 1M import (raw and ours) would add ~10 minutes a round.

- fill: one stream per size on one server, agent-style ~200-byte ``data``, 1,000 aggregates.
- each measurement runs in a child process of its own (``python -m bench.audit --child ...``),
  which reports its seconds and its peak RSS (``VmHWM`` of ``/proc/self/status``; see
  ``peak_rss_kb`` for why not ``getrusage``), so one run's memory never hides in another's:
  - ``export``: ``eventstore.export_events`` of the whole stream into a file;
  - ``raw-export`` (baseline): a raw nats-py ordered push consumer writing each message's
    body as a line, nothing decoded;
  - ``import``: ``eventstore.import_events`` of that file into a fresh stream of a second
    server (ids, versions, clocks kept; heads checked; atomic batches);
  - ``raw-import`` (baseline): the same lines published raw with ``js.publish_async``, 500
    in flight, nothing checked.
- round trip (first round): the imported stream is exported again and must equal the first
  export line for line but for ``recorded_at``.
- figures: median rates, ratios (ours / raw) and peak RSS per size with min-max; the rule
  for "the peak does not grow": the largest size's highest peak exceeds the smallest size's
  highest peak by less than the larger of two floors, the largest spread of repeated runs at
  one size and one byte per extra event (``GROWTH_FLOOR``). The second floor is there because
  a run-to-run spread of 0.05 MB is tighter than an allocator's noise, while anything a
  reader kept per event (the smallest Python object is 16 bytes, a message 500+) would
  exceed one byte per event many times over."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.common import bench_server, connect, fill, main_for, median, report
from eventstore import EventStore, StreamSettings, export_events, import_events

AGGREGATES = 1000
GROWTH_FLOOR = 1  # bytes per extra event below which a higher peak is noise, not growth
IMPORT_MAX = 300_000
ROOT = Path(__file__).resolve().parent.parent


# -- the children ------------------------------------------------------------------------------


EARLY = 100_000  # the export child also notes its peak once this many events are out
_marks: dict[str, int] = {}


def _note_early(done: int, _total: int) -> None:
    if done >= EARLY and "rss_early_kb" not in _marks:
        _marks["rss_early_kb"] = peak_rss_kb()


async def _export(url: str, stream: str, file: Path) -> int:
    settings = StreamSettings(name=stream, prefix=stream.lower())
    async with await EventStore.connect(url, producer="bench-export", stream=settings) as store:
        with file.open("wb") as out:
            return (await export_events(store, out, progress=_note_early)).events


async def _import(url: str, stream: str, file: Path) -> int:
    settings = StreamSettings(name=stream, prefix=stream.lower())
    async with await EventStore.connect(url, producer="bench-import", stream=settings) as store:
        with file.open("rb") as source:
            return (await import_events(store, source)).imported


async def _raw_export(url: str, stream: str, file: Path) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        head = (await js.stream_info(stream)).state.last_seq
        done, count = asyncio.Event(), 0
        with file.open("wb") as out:

            async def on_msg(msg: Any) -> None:
                nonlocal count
                out.write(msg.data + b"\n")
                count += 1
                if count >= head:
                    done.set()

            sub = await js.subscribe(
                f"{stream.lower()}.>", cb=on_msg, ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )  # fmt: skip
            await asyncio.wait_for(done.wait(), 600)
            await sub.unsubscribe()
        return count
    finally:
        await nc.close()


async def _raw_import(url: str, stream: str, file: Path) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        count, pending = 0, []
        with file.open("rb") as source:
            for line in source:
                body = json.loads(line)
                subject = f"{stream.lower()}.{body['aggregate_type']}.{body['aggregate_id']}"
                pending.append(await js.publish_async(subject, line.rstrip(b"\n")))
                count += 1
                if len(pending) >= 500:
                    await asyncio.wait_for(asyncio.gather(*pending), 60)
                    pending.clear()
        await asyncio.wait_for(asyncio.gather(*pending), 60)
        return count
    finally:
        await nc.close()


CHILDREN = {"export": _export, "import": _import, "raw-export": _raw_export,
            "raw-import": _raw_import}  # fmt: skip


def peak_rss_kb() -> int:
    """This process's peak resident set in kB: ``VmHWM``, which starts afresh at exec.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` does not: Linux carries the high-water mark of the
    process image an ``exec`` replaced (here the parent at fork time, which grew with the
    fill) into the child's, so it would measure the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best we have


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=sorted(CHILDREN))
    p.add_argument("url")
    p.add_argument("stream")
    p.add_argument("file", type=Path)
    a = p.parse_args(argv)
    started = time.perf_counter()
    events = asyncio.run(CHILDREN[a.what](a.url, a.stream, a.file))
    seconds = time.perf_counter() - started
    rss_kb = peak_rss_kb()
    print(json.dumps({"events": events, "seconds": seconds, "rss_kb": rss_kb, **_marks}))


async def child(what: str, url: str, stream: str, file: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.audit", "--child", what, url, stream, str(file)]
    done = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the benchmark -----------------------------------------------------------------------------

SIZES = (100_000, 300_000, 1_000_000)
QUICK_SIZES = (100_000, 300_000)


def spread(values: list[int]) -> int:
    return max(values) - min(values)


def same_trail(first: Path, second: Path) -> bool:
    """Whether two exports hold the same events line for line but for ``recorded_at`` (the
    round trip: what was imported into a fresh stream exports as it was exported)."""
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    with first.open("rb") as a, second.open("rb") as b:
        for x, y in itertools.zip_longest(a, b):
            if x is None or y is None:
                return False
            dx, dy = decode(x), decode(y)
            dx.pop("recorded_at"), dy.pop("recorded_at")
            if dx != dy:
                return False
    return True


async def run(
    quick: bool = False,
    sizes: tuple[int, ...] | None = None,
    repeat: int = 3,
    import_max: int = IMPORT_MAX,
) -> dict[str, Any]:
    """Fill one stream per size, then ``repeat`` rounds, each measuring every size in turn
    (interleaved, so a slow moment of a shared machine falls on all sizes alike)."""
    sizes = tuple(sorted(sizes or (QUICK_SIZES if quick else SIZES)))
    imported = tuple(n for n in sizes if n <= import_max) or sizes[:1]
    figures: dict[str, Any] = {"sizes": list(sizes), "repeat": repeat, "imported": list(imported)}
    runs: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    with bench_server() as (source, tmp), bench_server() as (target, _):
        for n in sizes:
            store = await connect(source, f"S{n}", f"s{n}")
            try:
                await fill(store, "task", AGGREGATES, n)
            finally:
                await store.close()
        for rep in range(repeat):
            for n in sizes:
                stream, file, raw_file = f"S{n}", tmp / f"S{n}.jsonl", tmp / f"S{n}.raw"
                steps = {
                    "export": (await child("export", source.url, stream, file),
                               await child("raw-export", source.url, stream, raw_file)),
                }  # fmt: skip
                if n in imported:
                    steps["import"] = (
                        await child("import", target.url, f"{stream}I{rep}", file),
                        await child("raw-import", target.url, f"{stream}R{rep}", file),
                    )
                for step, (ours, raw) in steps.items():
                    assert ours["events"] == raw["events"] == n, (step, ours, raw)
                    runs.setdefault((step, n), []).append((ours, raw))
                if rep == 0 and n in imported:  # the round trip, once per size imported
                    back = tmp / f"S{n}.back.jsonl"
                    await child("export", target.url, f"{stream}I0", back)
                    figures[f"round_trip_{n}"] = same_trail(file, back)
                    assert figures[f"round_trip_{n}"], f"the round trip of {n} events differs"
                    back.unlink()
    rows: list[list[Any]] = [["events", "step", "eventstore /s", "raw /s", "ratio",
                              "peak RSS MB (min-max)", "raw RSS MB"]]  # fmt: skip
    for (step, n), pairs in sorted(runs.items()):
        rates = [n / o["seconds"] for o, _ in pairs]
        ratios = [(n / o["seconds"]) / (n / r["seconds"]) for o, r in pairs]
        rss, raw_rss = [o["rss_kb"] for o, _ in pairs], [r["rss_kb"] for _, r in pairs]
        key = f"{step}_{n}"
        figures[f"{key}_per_s"] = round(median(rates))
        figures[f"{key}_ratio"] = round(median(ratios), 3)
        figures[f"{key}_rss_kb"] = round(median(rss))
        figures[f"{key}_rss_max_kb"], figures[f"{key}_rss_spread_kb"] = max(rss), spread(rss)
        figures[f"{key}_raw_rss_kb"] = round(median(raw_rss))
        raw_rate = n / median([r["seconds"] for _, r in pairs])
        ratio = f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        mb = f"{median(rss) / 1024:.1f} ({min(rss) / 1024:.1f}-{max(rss) / 1024:.1f})"
        rows.append([f"{n:,}", step, f"{median(rates):,.0f}", f"{raw_rate:,.0f}", ratio, mb,
                     f"{median(raw_rss) / 1024:.1f}"])  # fmt: skip
    # Within one export process: the peak after the first EARLY events against the peak at the
    # end, at the largest size (no process-to-process noise in this one).
    big_runs = runs.get(("export", sizes[-1]), [])
    early = [o["rss_early_kb"] for o, _ in big_runs if "rss_early_kb" in o]
    if early and sizes[-1] > EARLY:
        after = [o["rss_kb"] - o["rss_early_kb"] for o, _ in big_runs if "rss_early_kb" in o]
        figures["export_in_process_growth_kb"] = max(after)
        rows.append([f"{EARLY:,} -> {sizes[-1]:,}", "export, one process", "", "", "",
                     "peak after the first 100k -> at the end: "
                     + ", ".join(f"{e / 1024:.1f} -> {(e + a) / 1024:.1f} MB"
                                 for e, a in zip(early, after, strict=True)), ""])  # fmt: skip
    for step, measured in (("export", sizes), ("import", imported)):
        # The rule (see the module's docstring): the largest size's highest peak exceeds the
        # smallest size's by less than the larger of the repeated runs' spread and one byte
        # per extra event.
        small, big = measured[0], measured[-1]
        growth = figures[f"{step}_{big}_rss_max_kb"] - figures[f"{step}_{small}_rss_max_kb"]
        spread_kb = max(figures[f"{step}_{n}_rss_spread_kb"] for n in measured)
        floor_kb = GROWTH_FLOOR * (big - small) // 1024
        noise = max(spread_kb, floor_kb)
        figures[f"{step}_rss_growth"] = round(
            figures[f"{step}_{big}_rss_kb"] / figures[f"{step}_{small}_rss_kb"], 3
        )
        figures[f"{step}_rss_growth_kb"], figures[f"{step}_rss_noise_kb"] = growth, noise
        figures[f"{step}_rss_spread_kb"], figures[f"{step}_rss_floor_kb"] = spread_kb, floor_kb
        figures[f"{step}_rss_grows"] = growth >= max(noise, 1)
        rows.append([f"{small:,} -> {big:,}", f"{step} peak RSS", "", "", "",
                     f"x{figures[f'{step}_rss_growth']:.2f}; max {growth / 1024:+.2f} MB; "
                     f"spread {spread_kb / 1024:.2f} MB, floor {floor_kb / 1024:.2f} MB",
                     "grows" if figures[f"{step}_rss_grows"] else "flat"])  # fmt: skip
    report(f"Audit export / import (child processes, {repeat} interleaved rounds, median "
           "(min-max); ratio = ours / raw nats-py)", rows, figures)  # fmt: skip
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main_for("audit", run, __doc__, {"repeat": "rounds per size (default 3)",
                                          "import_max": "import only at sizes up to this "
                                          "(default 300000)"})  # fmt: skip
