"""Helpers shared by the CLI commands: producer names, JSON options, the package's face."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import consumers
from consumers.cliutil import CliParser, json_object, sanitize_producer
from eventstore.events import PRODUCER_RE


def test_public_names_are_sorted_and_resolve() -> None:
    """``consumers.__all__`` is sorted and every name in it can be imported."""
    assert consumers.__all__ == sorted(consumers.__all__)
    for name in consumers.__all__:
        assert getattr(consumers, name) is not None


def test_importing_the_package_loads_no_command_module() -> None:
    """``import consumers`` stays light: it imports neither the CLI nor the library."""
    code = (
        "import sys, consumers; print(sorted(m for m in sys.modules "
        "if m.startswith(('consumers.', 'eventstore', 'nats'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@given(st.text(max_size=300))
def test_sanitized_producer_is_always_valid(name: str) -> None:
    """Any text, a hostname with odd characters included, becomes a valid producer name."""
    assert PRODUCER_RE.fullmatch(sanitize_producer(name))


def test_sanitize_keeps_a_valid_hostname() -> None:
    """A hostname that is already a valid producer name is kept as it is."""
    assert sanitize_producer("cli-build-01.example.com") == "cli-build-01.example.com"
    assert sanitize_producer("cli-my host/é") == "cli-my-host-"


def test_json_object_accepts_objects_only() -> None:
    """``--data``/``--metadata`` parse a JSON object and refuse anything else clearly."""
    assert json_object('{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(argparse.ArgumentTypeError, match="not valid JSON"):
        json_object("{a}")
    with pytest.raises(argparse.ArgumentTypeError, match="must be a JSON object"):
        json_object('"text"')


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad argument exits 2 with one line on stderr that points at --help."""
    parser = CliParser(prog="eventstore")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--n", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n" in err[0] and "--help" in err[0]
