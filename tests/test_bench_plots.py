"""``bench.plots`` draws what the benchmarks measured: one PNG per benchmark with its ratios
beside the baseline and its absolute figures, median and spread over the runs (no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # bench/ is not an installed package; run from the checkout
    sys.path.insert(0, ROOT)

from bench import plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _runs() -> list[dict[str, dict[str, object]]]:
    return [
        {
            "publish": {
                "single_ratio": r,
                "single_events_per_s": 900 + 10 * i,
                "raw_publish_per_s": 1000,
                "rounds": 1,
                "target_met": True,
            },
            "live": {"live_median_ms": 2.0 + i, "raw_median_ms": 1.0, "events": 10},
            "flags": {"target_met": True, "note": "text only"},
        }
        for i, r in enumerate((0.8, 0.9, 1.1))
    ]


def test_collect_keeps_every_runs_numbers_and_drops_flags() -> None:
    """Each figure becomes its list of values over the runs; booleans and text are dropped."""
    series = plots.collect(_runs())
    assert series["publish"]["single_ratio"] == [0.8, 0.9, 1.1]
    assert series["live"]["raw_median_ms"] == [1.0, 1.0, 1.0]
    assert "target_met" not in series["publish"] and "flags" not in series


def test_only_figures_named_ratio_are_ratios() -> None:
    """``single_ratio`` and ``ratio_4_one`` are ratios; ``operations`` and targets are not."""
    assert plots._is_ratio("single_ratio") and plots._is_ratio("ratio_4_one")
    assert not plots._is_ratio("operations") and not plots._is_ratio("target_ratio")


def test_plot_runs_writes_one_png_per_benchmark_with_something_to_draw(tmp_path: Path) -> None:
    """publish (ratios and rates) and live (latencies) get a PNG; a benchmark without
    ratios or units gets none."""
    written = plots.plot_runs(_runs(), tmp_path / "plots")
    assert sorted(p.name for p in written) == ["live.png", "publish.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
