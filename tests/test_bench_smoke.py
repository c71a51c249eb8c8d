"""The benchmarks run end to end at their ``--quick`` sizes and return their figures (no
performance assertions: these machines are too noisy for that)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # bench/ is not an installed package; run from the checkout
    sys.path.insert(0, ROOT)

from bench import (  # noqa: E402
    audit,
    catchup,
    catchup_pieces,
    commit,
    compare_eventsourcing,
    copylayout,
    groupcommit,
    live,
    serving,
    timetravel,
    timetravel_pieces,
    writemodel,
)
from projections import recorder, runner, slot  # noqa: E402


def assert_positive(figures: dict[str, Any], keys: list[str]) -> None:
    missing = [k for k in keys if k not in figures]
    assert not missing, f"missing figures {missing} in {sorted(figures)}"
    for k in keys:
        value = figures[k]
        assert isinstance(value, int | float) and value > 0, f"{k} = {value!r}"


@pytest.mark.slow
async def test_catchup_quick_reports_rates_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    """The catch-up benchmark folds its stream completely and reports rates and ratios."""
    figures = await catchup.run(quick=True)
    assert_positive(
        figures,
        [
            "events",
            "aggregates",
            "raw_drain_events_per_s",
            "catchup_events_per_s",
            "catchup_ratio",
            "catchup_snap100_events_per_s",
            "catchup_snap100_ratio",
            "snapshots_written",
        ],
    )
    assert '"catchup_ratio"' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_timetravel_quick_reports_latency_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    """The time-travel benchmark reports latencies and ratios for its three history lengths."""
    figures = await timetravel.run(quick=True)
    keys = ["snapshots"]
    for n in figures["histories"]:
        k = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        keys += [
            f"median_ms_{k}",
            f"p95_ms_{k}",
            f"ratio_median_{k}",
            f"ratio_p95_{k}",
            f"brute_ms_{k}",
            f"brute_ratio_{k}",
            f"current_ms_{k}",
        ]
    assert len(figures["histories"]) == 3
    assert_positive(figures, keys)
    assert '"ratio_median_' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_compare_eventsourcing_quick_reports_both_sides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The comparison writes and reads on both sides and reports ratios against eventsourcing."""
    figures = await compare_eventsourcing.run(quick=True)
    assert_positive(
        figures,
        [
            "es_single_events_per_s",
            "es_save100_events_per_s",
            "ours_single_events_per_s",
            "ours_append_many_events_per_s",
            "write_ratio_ours_single",
            "write_ratio_ours_append_many",
            "es_get_ms",
            "es_get_version_ms",
            "ours_current_ms",
            "ours_state_at_ms",
            "read_ratio_current_vs_es_get",
            "read_ratio_state_at_vs_es_get_version",
        ],
    )
    assert "synchronous=" in figures["eventsourcing_sqlite"]
    assert '"write_ratio_ours_single"' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_live_quick_reports_latencies(capsys: pytest.CaptureFixture[str]) -> None:
    """The live benchmark waits for every append in the projection and reports latencies."""
    figures = await live.run(quick=True)
    assert_positive(
        figures,
        ["events", "raw_median_ms", "raw_p99_ms", "live_median_ms", "live_p99_ms",
         "live_median_ratio"],
    )  # fmt: skip
    assert figures["live_p99_ms"] >= figures["live_median_ms"]
    assert '"live_median_ms"' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_audit_quick_measures_both_sizes_in_child_processes() -> None:
    """The audit benchmark exports and imports both sizes (counts checked) and reports rates,
    ratios against raw nats-py and the peak-RSS growth from the small size to the big one."""
    figures = await audit.run(quick=True, sizes=(1000, 5000), repeat=1)
    assert_positive(
        figures,
        ["export_5000_per_s", "export_5000_ratio", "import_5000_per_s", "import_5000_ratio",
         "export_5000_rss_kb", "export_rss_growth", "import_rss_growth"],
    )  # fmt: skip


@pytest.mark.slow
async def test_writemodel_tiny_reports_updates_beside_appends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The write-model benchmark runs every cell (1, 4, 16 writers; one and distinct
    aggregates) with updates and raw appends, and reports rates and ratios."""
    figures = await writemodel.run(quick=True, n=16)
    keys = []
    for w in writemodel.WRITERS:
        for where in ("one", "distinct"):
            keys += [f"update_{w}_{where}_per_s", f"append_{w}_{where}_per_s", f"ratio_{w}_{where}"]
    assert_positive(figures, keys)
    assert figures["conflicts_1_one"] == 0
    assert '"ratio_16_one"' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_serving_tiny_reports_watch_latency_beside_raw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The serving benchmark, tiny: latencies of the watch and of raw NATS, the query round
    trips and both catch-up times, all measured."""
    figures = await serving.run(quick=True, n=50, behind=200)
    keys = [f"{k}_{p}_ms" for k in ("ours", "raw", "ours_max", "raw_max") for p in ("p50", "p99")]
    keys += ["ours_max_events_per_s", "raw_max_events_per_s", "query_p50_ms", "query_p99_ms"]
    keys += ["raw_request_p50_ms", "raw_request_p99_ms", "catchup_buffered_s", "catchup_resync_s"]
    keys += ["catchup_latest_s"]
    assert_positive(figures, keys)
    assert '"catchup_resync_s"' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_groupcommit_quick_reports_its_cells(capsys: pytest.CaptureFixture[str]) -> None:
    """The group-commit benchmark runs cold, warm and contended appends beside raw atomic
    batches and raw publish_async, and reports their ratios."""
    figures = await groupcommit.run(quick=True)
    keys = ["raw_new_events_per_s", "raw_known_events_per_s", "raw_shared_events_per_s"]
    keys += ["raw_async_events_per_s"]
    for cell in ("cold", "warm", "contended"):
        keys += [f"{cell}_events_per_s", f"{cell}_ratio", f"{cell}_vs_publish_async"]
    assert_positive(figures, keys)
    assert '"contended_ratio"' in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.slow
async def test_commit_quick_reports_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    """Both commit paths run their rounds and the ratio of their medians is reported."""
    figures = await commit.run(quick=True)
    for key in ("one_p50_ms", "one_p99_ms", "many_p50_ms", "many_p99_ms", "p50_ratio"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert '"p50_ratio"' in capsys.readouterr().out.strip().splitlines()[-1]


async def test_copylayout_tiny_measures_the_three_layouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each layout inserts the same rows; its per-row times and ratio to the rows alone are
    reported, and the last line is the JSON of the figures."""
    figures = await copylayout.run(events=4000, aggregates=50, rounds=1)
    for layout in ("rows", "index", "runs"):
        assert len(figures[f"{layout}_wall_us"]) == 1 and figures[f"{layout}_wall_us"][0] > 0
        assert figures[f"{layout}_ratio"] > 0
    assert figures["rows_ratio"] == 1.0
    assert '"runs_ratio"' in capsys.readouterr().out.strip().splitlines()[-1]


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
