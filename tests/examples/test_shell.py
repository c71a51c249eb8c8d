"""examples/_shell.py, the shell the five examples share: the checks and their exit code, the
command line, the final JSON line and the one stderr line of a failure (no server needed: the
runs here are stories that check or fail without one)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventstore import EventStoreError, NotConnected, StreamSettings
from examples._shell import Checks, Context, parser, run_example

STREAM = StreamSettings(name="DEMO", prefix="demo")


def test_checks_print_each_claim_and_their_and_is_the_outcome(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each claim is one ``[ok]``/``[FAILED]`` line (a failure with its detail); a claim that
    failed once keeps the whole outcome failed, even if checked again and held."""
    checks = Checks()
    assert checks.check("first", True, "unused detail")
    assert not checks.check("second", False, "got 3")
    assert checks.check("second", True)
    out = capsys.readouterr().out.splitlines()
    assert out == ["  [ok] first", "  [FAILED] second: got 3", "  [ok] second"]
    assert (checks.passed, checks.failed, checks.ok) == (2, ["second"], False)
    assert checks.results == {"first": True, "second": True}
    assert Checks().ok  # nothing claimed, nothing failed


def test_the_stream_options_come_only_with_a_stream_of_its_own() -> None:
    """``--stream``/``--prefix``/``--dir`` exist only for an example that takes a stream of
    its own; ``--url`` always, defaulting to ``EVENTSTORE_URL``."""
    own = parser("demo", None, STREAM, own_stream=True).parse_args(["--stream", "X"])
    assert (own.stream, own.prefix, own.dir) == ("X", None, None)
    with pytest.raises(SystemExit):
        parser("demo", None, STREAM, own_stream=False).parse_args(["--stream", "X"])


def test_run_example_prints_the_figures_last_and_exits_on_the_checks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The story's figures with the checks (``counts`` or ``claims``) are the last line; the
    exit code is 0 only if every check held; ``--stream`` gives the stream, lower-case prefix."""
    monkeypatch.setenv("EVENTSTORE_URL", "nats://example:1")
    seen: list[Context] = []

    async def story(ctx: Context) -> dict[str, Any]:
        seen.append(ctx)
        ctx.checks.check("holds", True)
        ctx.checks.check("breaks", ctx.settings.name != "BAD")
        return {"example": "demo"}

    assert run_example("demo", None, story, [], stream=STREAM) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last == {"example": "demo", "checks_passed": 2, "failed": [], "ok": True}
    assert seen[-1].url == "nats://example:1" and seen[-1].workdir.name.startswith("demo-")

    code = run_example(
        "demo", None, story, ["--stream", "BAD"], stream=STREAM, own_stream=True, report="claims"
    )
    assert code == 1
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last == {"example": "demo", "checks": {"holds": True, "breaks": False}, "ok": False}
    assert seen[-1].settings == StreamSettings(name="BAD", prefix="bad")


@pytest.mark.parametrize(
    "error",
    [NotConnected("nats://x:1", "connection refused"), EventStoreError("two\nlines"), OSError(5)],
)
def test_a_failure_is_one_stderr_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    """Whatever the story raises of ours (or of the OS) is one line on stderr naming its
    class, exit 1, and no JSON line."""

    async def story(ctx: Context) -> dict[str, Any]:
        raise error

    assert run_example("demo", None, story, [], stream=STREAM) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"examples.demo: {type(error).__name__}: ")
