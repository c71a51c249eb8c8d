"""The public face of ``projections``: a sorted ``__all__`` whose every name resolves."""

from __future__ import annotations

import projections


def _ruff_order(name: str) -> tuple[int, str]:
    # Constants first, then classes, then functions: ruff's RUF022 ("isort-style") order.
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_public_names_are_sorted_and_resolve() -> None:
    """``projections.__all__`` is sorted (RUF022) and every name in it can be imported."""
    assert projections.__all__ == sorted(projections.__all__, key=_ruff_order)
    assert len(set(projections.__all__)) == len(projections.__all__)
    for name in projections.__all__:
        assert getattr(projections, name) is not None


def test_the_projections_layer_imports_nothing_above_it() -> None:
    """``projections`` depends on ``eventstore`` only, never on ``consumers``."""
    import subprocess
    import sys

    code = (
        "import sys, projections; "
        "print(sorted(m for m in sys.modules if m.startswith('consumers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
