"""The commit benchmark runs end to end at its ``--quick`` size and returns its figures (no
performance assertion: these machines are too noisy for that)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # bench/ is not an installed package; run from the checkout
    sys.path.insert(0, ROOT)

from bench import commit  # noqa: E402


@pytest.mark.slow
async def test_commit_quick_reports_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    """Both commit paths run their rounds and the ratio of their medians is reported."""
    figures = await commit.run(quick=True)
    for key in ("one_p50_ms", "one_p99_ms", "many_p50_ms", "many_p99_ms", "p50_ratio"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert '"p50_ratio"' in capsys.readouterr().out.strip().splitlines()[-1]
