"""Where a process logs is decided once, in ``configure_logging``: a service on stdout (what
journald collects), every other command on stderr (its stdout is its output)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from eventstore import configure_logging


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
