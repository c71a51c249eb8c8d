"""Readers never stop at a malformed message: the library skips it and says so (a logged
warning, or the caller's ``on_malformed``), and ``history`` / ``tail`` print one warning line
on stderr per skipped message and go on. Real server, raw publishes, real subprocesses."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

import pytest
from test_cli import LineReader, _globals, cli, lines, spawn
from test_hostile_writes import raw_envelope

from eventstore import EventStore, Malformed, NewEvent, StreamSettings

DEEP = b'{"version": 2, "data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
BAD_UTF8 = b'{"version": 2, "type": "T", "data": {"s": "\xff"}}'

# Malformed bodies of many kinds: not JSON, invalid UTF-8, nested 10,000 deep, not an object.
MALFORMED = [b"{not json", b"\xff\xfe", DEEP, BAD_UTF8, b"[1, 2]", b""]


async def _fill(store: EventStore, agg_id: str = "g") -> tuple[list[int], list[int]]:
    """Valid events with every kind of malformed message between them: (good, bad) seqs."""
    good: list[int] = []
    bad: list[int] = []
    for i, body in enumerate(MALFORMED):
        good.append((await store.append("agent", agg_id, NewEvent("Step", {"i": i}))).last_seq)
        bad.append(int((await store.js.publish(store.subject("agent", agg_id), body)).seq))
    good.append((await store.append("agent", agg_id, NewEvent("Step", {"i": 99}))).last_seq)
    return good, bad


async def test_read_skips_malformed_messages_and_reports_each(store: EventStore) -> None:
    """read() yields every valid event and hands each malformed message to on_malformed."""
    good, bad = await _fill(store)
    skipped: list[Malformed] = []
    evs = [e async for e in store.read("agent", "g", on_malformed=skipped.append)]
    assert [e.seq for e in evs] == good
    assert [e.version for e in evs] == list(range(1, len(good) + 1))
    assert [m.seq for m in skipped] == bad
    assert all(m.kind == "undecodable" and m.reason for m in skipped)
    assert skipped[0].subject == store.subject("agent", "g")


async def test_without_a_callback_each_skipped_message_is_a_logged_warning(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """No malformed message is dropped silently: the library logs a warning naming its seq."""
    good, bad = await _fill(store)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eventstore"):
        evs = [e async for e in store.read_all()]
    assert [e.seq for e in evs] == good
    logs = [vars(r)["event_dict"] for r in caplog.records if r.levelname == "WARNING"]
    warned = [r for r in logs if "seq" in r]
    assert [r["seq"] for r in warned] == bad


async def test_read_all_and_by_seq_and_time_skip_malformed(store: EventStore) -> None:
    """read_all, read_by_seq and read_by_time go past malformed messages, on any subject."""
    good, bad = await _fill(store)
    odd = int((await store.js.publish(f"{store.settings.prefix}.agent", b"{}")).seq)
    after = (await store.append("agent", "g", NewEvent("Step"))).last_seq
    seen: list[Malformed] = []
    assert [e.seq async for e in store.read_all(on_malformed=seen.append)] == [*good, after]
    assert [m.seq for m in seen] == [*bad, odd]
    seen.clear()
    by_seq = [e.seq async for e in store.read_by_seq("agent", "g", 1, on_malformed=seen.append)]
    assert by_seq == [*good, after] and [m.seq for m in seen] == bad
    from datetime import UTC, datetime

    start = datetime(2000, 1, 1, tzinfo=UTC)
    assert [e.seq async for e in store.read_by_time("agent", "g", start, on_malformed=print)] == [
        *good,
        after,
    ]


async def test_a_raising_callback_stops_the_read(store: EventStore) -> None:
    """A caller that wants to stop at a malformed message raises from on_malformed."""
    await _fill(store)

    def stop(m: Malformed) -> None:
        raise RuntimeError(f"stop at {m.seq}")

    with pytest.raises(RuntimeError, match="stop at 2"):
        [e async for e in store.read("agent", "g", on_malformed=stop)]


async def test_read_by_version_follows_the_fold(store: EventStore) -> None:
    """By version, read() gives the aggregate's history as the projection folds it: a raw
    stale or gap version is skipped (kind duplicate / gap), a range ends at its last version."""
    for i in range(2):
        await store.append("agent", "v", NewEvent("Step", {"i": i}))
    js, subject = store.js, store.subject("agent", "v")
    dup = int((await js.publish(subject, raw_envelope("agent", "v", 1))).seq)
    gap = int((await js.publish(subject, raw_envelope("agent", "v", 9))).seq)
    third = await store.append("agent", "v", NewEvent("Step", {"i": 2}))
    skipped: list[Malformed] = []
    evs = [e async for e in store.read("agent", "v", on_malformed=skipped.append)]
    assert [(e.version, e.producer) for e in evs] == [(1, "tester"), (2, "tester"), (3, "tester")]
    assert [(m.seq, m.kind) for m in skipped] == [(dup, "duplicate"), (gap, "gap")]
    ranged = [e async for e in store.read("agent", "v", 2, 3, on_malformed=lambda m: None)]
    assert [e.seq for e in ranged] == [evs[1].seq, third.last_seq]


async def test_follow_goes_on_past_a_malformed_message(store: EventStore) -> None:
    """A live follow sees a malformed message arrive, reports it and keeps following."""
    seen: list[int] = []
    skipped: list[int] = []

    async def consume() -> None:
        async for e in store.follow(1, on_malformed=lambda m: skipped.append(m.seq)):
            seen.append(e.seq)
            if len(seen) == 2:
                return

    task = asyncio.create_task(consume())
    first = await store.append("agent", "f", NewEvent("Step"))
    await asyncio.sleep(0.2)
    bad = int((await store.js.publish(store.subject("agent", "f"), DEEP)).seq)
    second = await store.append("agent", "f", NewEvent("Step"))
    await asyncio.wait_for(task, 10)
    assert seen == [first.last_seq, second.last_seq] and skipped == [bad]


# -- the CLI -----------------------------------------------------------------------------------


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


async def test_history_prints_every_valid_event_and_one_warning_per_malformed(
    store: EventStore, nats_url: str, settings: StreamSettings
) -> None:
    """`eventstore history` exits 0, prints every valid event, and one stderr line per
    malformed message naming its seq."""
    good, bad = await _fill(store)
    proc = await asyncio.to_thread(cli, nats_url, settings, "history", "agent", "g")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [e["seq"] for e in lines(proc.stdout)] == good
    warned = _warnings(proc.stderr)
    assert len(warned) == len(bad), proc.stderr
    for line, seq in zip(warned, bad, strict=True):
        assert "warning" in line and f"seq {seq}" in line, line


async def test_tail_stays_alive_across_malformed_messages(
    store: EventStore, nats_url: str, settings: StreamSettings
) -> None:
    """`eventstore tail` prints past malformed messages (old and live ones), one warning each,
    keeps printing later events, and exits 0 on SIGTERM."""
    good, bad = await _fill(store)

    def run_tail() -> tuple[list[dict[str, Any]], list[str], int]:
        with spawn(*_globals(nats_url, settings), "tail", "--from-seq", "1") as tail:
            out, err = LineReader(tail.stdout), LineReader(tail.stderr)  # type: ignore[arg-type]
            printed = [json.loads(out.next()) for _ in good]
            warned = [err.next() for _ in bad]
            asyncio.run(_publish_live(nats_url, settings))
            warned.append(err.next())
            printed.append(json.loads(out.next()))
            assert tail.poll() is None, "tail exited"
            tail.send_signal(signal.SIGTERM)
            return printed, warned, tail.wait(15)

    printed, warned, code = await asyncio.to_thread(run_tail)
    assert [e["seq"] for e in printed[:-1]] == good
    assert printed[-1]["type"] == "Later"
    assert [f"seq {s}" in w for w, s in zip(warned, bad, strict=False)] == [True] * len(bad)
    assert "Traceback" not in "".join(warned) and len(warned) == len(bad) + 1
    assert code == 0


async def _publish_live(url: str, settings: StreamSettings) -> None:
    async with await EventStore.connect(url, producer="live", stream=settings) as s:
        await s.js.publish(s.subject("agent", "g"), b"{live garbage")
        await s.append("agent", "g", NewEvent("Later"))
