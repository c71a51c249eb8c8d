"""Pictures beside numbers: each benchmark's figures as PNG charts (matplotlib, no display).

The benchmarks report figures as ratios against a baseline measured in the same run, plus
the absolute values of both sides (``report`` in ``bench.common``). ``python -m bench
--plot DIR --runs N`` runs every benchmark N times and draws, per benchmark, one PNG with two
panels, each bar the median over the runs and its whisker the min-max spread:

* the ratios (every figure with ``ratio`` as a word of its name, except targets) beside
  the baseline's 1.0;
* the absolute figures by unit (``*_per_s``, ``*_ms``, ``*_s``), ours in blue beside the
  baseline's in grey (a figure whose name says ``raw``, ``es_`` or ``baseline``).

Nothing here times anything: it draws what the benchmarks measured (``DIR/results.json``
keeps every run, so ``--replot DIR`` redraws without running again).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

__all__ = ["collect", "plot_benchmark", "plot_runs"]

Series = dict[str, list[float]]
_UNITS = (("_per_s", "per second (higher is better)"), ("_ms", "milliseconds (lower is better)"),
          ("_s", "seconds (lower is better)"))  # fmt: skip
_BASELINE_WORDS = ("raw", "es_", "baseline", "eventsourcing")
_OURS, _BASE = "#1565c0", "#9e9e9e"


def collect(runs: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Series]:
    """benchmark -> figure -> its value in each run (numbers only; flags and sizes too)."""
    out: dict[str, Series] = {}
    for run in runs:
        for bench, figures in run.items():
            for key, value in figures.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                out.setdefault(bench, {}).setdefault(key, []).append(float(value))
    return out


def _is_ratio(key: str) -> bool:
    """``single_ratio``, ``ratio_4_one``: a word of its own (``operations`` is no ratio)."""
    return "ratio" in key.split("_") and "target" not in key


def _unit(key: str) -> str | None:
    for suffix, label in _UNITS:
        if key.endswith(suffix):
            return label
    return None


def _is_baseline(key: str) -> bool:
    return any(word in key for word in _BASELINE_WORDS)


def _bars(ax: Any, series: Series, keys: list[str], colors: list[str]) -> None:
    med = [statistics.median(series[k]) for k in keys]
    lo = [m - min(series[k]) for m, k in zip(med, keys, strict=True)]
    hi = [max(series[k]) - m for m, k in zip(med, keys, strict=True)]
    ys = range(len(keys))
    ax.barh(ys, med, xerr=[lo, hi], color=colors, capsize=3, ecolor="#333")
    ax.set_yticks(list(ys), keys, fontsize=8)
    ax.invert_yaxis()
    for y, m in zip(ys, med, strict=True):
        label = f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3g}"
        ax.annotate(label, (m, y), xytext=(4, -3), textcoords="offset points", fontsize=7)


def plot_benchmark(name: str, series: Series, out: Path, runs: int) -> Path | None:
    """One benchmark's PNG (None when it reported nothing to draw)."""
    ratios = sorted(k for k in series if _is_ratio(k))
    groups: dict[str, list[str]] = {}
    for key in sorted(series):
        unit = _unit(key)
        if unit is not None and not _is_ratio(key):
            groups.setdefault(unit, []).append(key)
    panels = [("ratio to the baseline measured in the same run", ratios)] if ratios else []
    panels += list(groups.items())
    if not panels:
        return None
    height = sum(0.6 + 0.28 * len(keys) for _, keys in panels) + 0.8
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, height), squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels, strict=True):
        if title.startswith("ratio"):
            _bars(ax, series, keys, [_OURS] * len(keys))
            ax.axvline(1.0, color=_BASE, linestyle="--", linewidth=2, label="baseline = 1")
            ax.legend(fontsize=7, loc="lower right")
        else:
            _bars(ax, series, keys, [_BASE if _is_baseline(k) else _OURS for k in keys])
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"bench.{name}: median of {runs} run(s), whiskers min-max", fontsize=10)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(runs: Sequence[dict[str, dict[str, Any]]], out: Path) -> list[Path]:
    """Every benchmark's PNG in ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, series in collect(runs).items():
        path = plot_benchmark(name, series, out, len(runs))
        if path is not None:
            written.append(path)
    return written
