"""Where a process logs is decided once, in ``configure_logging``: a service on stdout (what
journald collects), every other command on stderr (its stdout is its output)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers_projections import ROOT, scalar, start_worker

from eventstore import EventStore, NewEvent, StreamSettings, configure_logging, get_logger


def scalar_or_zero(db: Path) -> int:
    """The entities checkpoint of a worker's file, 0 before it exists."""
    try:
        return int(scalar(db, "SELECT checkpoint FROM projections WHERE name = 'entities'") or 0)
    except Exception:  # not created yet
        return 0


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    configure_logging("warning", json=False)  # what conftest sets for the session


@pytest.mark.parametrize("service", [True, False])
def test_a_service_logs_on_stdout_a_command_on_stderr(
    service: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logs go to exactly one stream, as JSON lines off a terminal, with the context bound."""
    configure_logging("info", service=service)
    structlog.get_logger("t").bind(projection="entities").info("hello", seq=3)
    out, err = capsys.readouterr()
    logged, other = (out, err) if service else (err, out)
    assert other == ""
    line = json.loads(logged)
    assert (line["event"], line["projection"], line["seq"]) == ("hello", "entities", 3)


# -- as a library: silent by default, controlled by stdlib logging ------------------------------

LIBRARY_APP = """
import asyncio, logging, sys
from eventstore import EventStore, NewEvent, StreamSettings
from projections import EntitiesProjection, ProjectionDB, Runner

URL, STREAM, PREFIX, DB, MODE = sys.argv[1:6]
if MODE == "debug":
    logging.basicConfig(level=logging.DEBUG)

async def main():
    settings = StreamSettings(name=STREAM, prefix=PREFIX)
    async with await EventStore.connect(URL, producer="app", stream=settings) as store:
        await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
        async with await ProjectionDB.open(DB) as db:
            await Runner(store, db, [EntitiesProjection()]).catch_up()

asyncio.run(main())
"""


def _library_app(
    tmp_path: Path, nats_url: str, settings: StreamSettings, mode: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(LIBRARY_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    args = [nats_url, settings.name, settings.prefix, str(tmp_path / "app.db"), mode]
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env | {"EVENTSTORE_LOG_LEVEL": "debug"},  # a service's setting: no effect here
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_library_prints_nothing_by_default(
    tmp_path: Path, nats_url: str, settings: StreamSettings
) -> None:
    """Connect (creating the stream), append, fold a batch: not one line on stdout or stderr."""
    done = _library_app(tmp_path, nats_url, settings, "quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_stdlib_logging_configuration_shows_the_library_records(
    tmp_path: Path, nats_url: str, settings: StreamSettings
) -> None:
    """``logging.basicConfig(level=DEBUG)`` is enough to see them, on stderr with its format."""
    done = _library_app(tmp_path, nats_url, settings, "debug")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    committed = [ln for ln in done.stderr.splitlines() if "batch committed" in ln]
    assert committed and committed[0].startswith("DEBUG:projections.runner:batch committed")
    assert "first=1 last=1 messages=1" in committed[0]
    assert "INFO:eventstore.streams:stream created" in done.stderr


def test_an_application_structlog_setup_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    """An application's own structlog configuration neither prints nor swallows our records:
    they still reach stdlib logging, with their fields on the record."""
    seen: list[Any] = []

    def keep(_: Any, __: str, event_dict: Any) -> str:
        seen.append(event_dict)
        return ""

    structlog.configure(processors=[keep], logger_factory=structlog.ReturnLoggerFactory())
    try:
        with caplog.at_level(logging.INFO, logger="projections"):
            get_logger("projections.runner").bind(projection="p").info("folded", seq=7)
            structlog.get_logger("app").info("the application's own")
    finally:
        structlog.reset_defaults()
    assert [e["event"] for e in seen] == ["the application's own"]
    [record] = [r for r in caplog.records if r.name == "projections.runner"]
    assert vars(record)["event_dict"] == {"projection": "p", "seq": 7, "event": "folded"}
    assert record.getMessage() == "folded projection=p seq=7"


async def test_a_worker_honours_eventstore_log_level(
    tmp_path: Path, nats_url: str, settings: StreamSettings, store: EventStore
) -> None:
    """``EVENTSTORE_LOG_LEVEL=error``: the worker process prints no info line; by default it
    does (its "worker ready")."""
    await store.append("agent", "a1", [NewEvent("Created", {"n": 1})])
    outputs = {}
    for level in ("error", None):
        db, log = tmp_path / f"{level}.db", tmp_path / f"{level}.log"
        proc = start_worker(
            nats_url, settings, db, log, env={"EVENTSTORE_LOG_LEVEL": level} if level else None
        )
        try:
            deadline = time.monotonic() + 30
            while scalar_or_zero(db) < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
        outputs[level] = [json.loads(line) for line in log.read_text().splitlines()]
    assert outputs["error"] == []
    assert "worker ready" in [line["event"] for line in outputs[None]]
    assert {line["level"] for line in outputs[None]} == {"info"}
