"""``bench.timetravel_pieces`` runs end to end at a small size and reports every piece (no
performance assertions: these machines are too noisy for that)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # bench/ is not an installed package; run from the checkout
    sys.path.insert(0, ROOT)

from bench import timetravel_pieces  # noqa: E402


@pytest.mark.slow
async def test_timetravel_pieces_reports_each_piece(capsys: pytest.CaptureFixture[str]) -> None:
    """Every piece of a state_at is measured at each history length, and the last line of the
    output is the JSON of the figures."""
    figures = await timetravel_pieces.run(events=3000, queries=4)
    for piece in timetravel_pieces.PIECES:
        for key in ("30", "300", "3k"):
            assert figures[f"{piece}_us_{key}"] >= 0, (piece, key)
    assert figures["state_at_us_3k"] > 0 and figures["fold_us_3k"] > 0
    assert '"state_at_us_3k"' in capsys.readouterr().out.strip().splitlines()[-1]
