"""One rule each: global options on both sides of the command, and naive datetimes refused
with the same error by every entry point (library against a real server, CLI processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.cli import build_parser
from eventstore import EventStore, InvalidPoint, NewEvent, StreamSettings, check_time
from projections import EntitiesProjection, Point, TimeTravel

SCRIPT = Path(sys.executable).parent / "eventstore"
BASE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "consumers.cli"]
NAIVE = datetime(2025, 1, 13, 10, 30)
RULE = "has no time zone, and none is guessed"

GLOBALS = {
    "--url": ("nats://a:1", "nats://b:2"),
    "--stream": ("S1", "S2"),
    "--prefix": ("p1", "p2"),
    "--db": ("one.db", "two.db"),
    "--config": ("one.toml", "two.toml"),
    "--producer": ("X", "Y"),
    "--log-level": ("info", "error"),
}


@pytest.mark.parametrize("option", sorted(GLOBALS))
@pytest.mark.parametrize(
    "command", [["publish", "agent", "a", "T"], ["state", "agent", "a"], ["worker"], ["status"]]
)
def test_every_global_option_works_on_both_sides(option: str, command: list[str]) -> None:
    """Before the command, after it, or both: the value after the command wins."""
    dest = option.lstrip("-").replace("-", "_")
    before, after = GLOBALS[option]
    parser = build_parser()
    name, rest = command[0], command[1:]
    assert getattr(parser.parse_args([option, before, name, *rest]), dest) == before
    assert getattr(parser.parse_args([name, option, after, *rest]), dest) == after
    both = parser.parse_args([option, before, name, option, after, *rest])
    assert getattr(both, dest) == after


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return env | {"EVENTSTORE_LOG_LEVEL": "warning"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BASE, *args], capture_output=True, text=True, timeout=60, env=_env())


async def test_producer_before_or_after_publish(nats_url: str, settings: StreamSettings) -> None:
    """`eventstore --producer X publish` (the issue's "invalid choice: 'X'") and `publish
    --producer Y` both store the named producer; given on both sides, the command's wins."""
    glob = ["--url", nats_url, "--stream", settings.name, "--prefix", settings.prefix]
    runs = [
        ["--producer", "before-1", *glob, "publish", "agent", "g", "T"],
        [*glob, "publish", "agent", "g", "T", "--producer", "after-1"],
        ["--producer", "before-2", *glob, "publish", "--producer", "after-2", "agent", "g", "T"],
    ]
    for args in runs:
        done = await asyncio.to_thread(_run, *args)
        assert done.returncode == 0, done.stderr
    async with await EventStore.connect(nats_url, producer="r", stream=settings) as s:
        producers = [e.producer async for e in s.read("agent", "g")]
    assert producers == ["before-1", "after-1", "after-2"]


def test_the_one_datetime_rule() -> None:
    """``check_time`` refuses naive times (and non-times) with InvalidPoint, keeps aware ones;
    ``Point`` and ``Point.parse`` apply it."""
    with pytest.raises(InvalidPoint, match=RULE):
        check_time(NAIVE)
    with pytest.raises(InvalidPoint, match="must be a datetime"):
        check_time("2025-01-13")
    aware = NAIVE.replace(tzinfo=UTC)
    assert check_time(aware) is aware
    with pytest.raises(InvalidPoint, match=RULE):
        Point(at=NAIVE)
    for text in ("at:2025-01-13T10:30:00", "2025-01-13T10:30"):
        with pytest.raises(InvalidPoint, match=RULE):
            Point.parse(text)
    assert Point.parse("at:2025-01-13T10:30:00+02:00").at == aware.replace(hour=8)


async def test_library_entry_points_refuse_a_naive_time(
    nats_url: str, settings: StreamSettings
) -> None:
    """read_by_time (start and end), state_at and history refuse a naive time alike; an aware
    one reads the events."""
    async with await EventStore.connect(nats_url, producer="t", stream=settings) as s:
        await s.append("agent", "n", NewEvent("Created", {"a": 1}))
        for start, end in ((NAIVE, None), (NAIVE.replace(tzinfo=UTC), NAIVE)):
            with pytest.raises(InvalidPoint, match=RULE):
                [e async for e in s.read_by_time("agent", "n", start, end)]
        since = datetime(2000, 1, 1, tzinfo=UTC)
        assert [e.version async for e in s.read_by_time("agent", "n", since)] == [1]
        tt = TimeTravel(s, EntitiesProjection())
        with pytest.raises(InvalidPoint, match=RULE):
            await tt.state_at("agent", "n", at=NAIVE)
        with pytest.raises(InvalidPoint, match=RULE):
            await tt.history("agent", "n", Point.parse("version:0"), Point(at=NAIVE))
        assert (await tt.state_at("agent", "n", at=datetime.now(UTC))).state == {"a": 1}


async def test_cli_at_without_offset_is_one_error_line(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """`state --at` and `diff --from at:` with an ISO time without offset: exit 1, one line
    naming the rule; with Z they answer."""
    glob = ["--url", nats_url, "--stream", settings.name, "--prefix", settings.prefix]
    glob += ["--db", str(tmp_path / "none.db")]
    async with await EventStore.connect(nats_url, producer="t", stream=settings) as s:
        await s.append("agent", "c", NewEvent("Created", {"a": 1}))
    for args in (
        ["state", "agent", "c", "--at", "2030-01-13T10:30:00"],
        ["diff", "agent", "c", "--from", "at:2030-01-13T10:30:00"],
    ):
        done = await asyncio.to_thread(_run, *glob, *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and RULE in lines[0] and "InvalidPoint" in lines[0]
    ok = await asyncio.to_thread(_run, *glob, "state", "agent", "c", "--at", "2030-01-13T10:30Z")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == {"a": 1}
