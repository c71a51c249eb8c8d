"""``bench.catchup_pieces`` runs end to end at a small size, reports every piece of a catch-up
and leaves the code it measured as it found it (no performance assertions: these machines are
too noisy for that)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # bench/ is not an installed package; run from the checkout
    sys.path.insert(0, ROOT)

from bench import catchup_pieces  # noqa: E402
from projections import recorder, runner, slot  # noqa: E402


@pytest.mark.slow
async def test_catchup_pieces_reports_each_piece_and_unwraps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each round has every piece and the commits' batch sizes summing to the events; the
    wrapped functions and the collector's callbacks are the originals afterwards."""
    wrapped = [(slot.Slot, "fold"), (recorder.Recorder, "plan_batch"), (runner, "event_rows")]
    wrapped.append((recorder, "commit"))
    originals = [getattr(owner, name) for owner, name in wrapped]
    callbacks = list(gc.callbacks)
    figures = await catchup_pieces.run(events=2000, aggregates=20, rounds=1)
    (one,) = figures["rounds"]
    for piece in catchup_pieces.PIECES:
        assert one[piece] >= 0, piece
    assert one["fold"] > 0 and one["runner_loop_cpu_us"] > 0
    assert sum(one["batch_sizes"]) == 2000 and one["commits"] == len(one["batch_sizes"])
    assert [getattr(owner, name) for owner, name in wrapped] == originals
    assert gc.callbacks == callbacks
    assert '"rounds"' in capsys.readouterr().out.strip().splitlines()[-1]
