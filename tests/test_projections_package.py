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


def _modules() -> dict[str, str]:
    import pathlib

    root = pathlib.Path(projections.__file__).parent
    return {path.name: path.read_text() for path in sorted(root.glob("*.py"))}


def test_projections_use_only_the_eventstore_facade() -> None:
    """Modules of ``projections`` import ``eventstore`` itself, never one of its modules, and
    no import hides inside a function (an import circle dodged)."""
    import re

    for name, text in _modules().items():
        assert not re.search(r"^\s*(from|import) eventstore\.", text, re.M), name
        assert not re.search(r"^\s+(from projections|import projections)", text, re.M), name


def test_every_statement_on_projection_rows_is_the_recorders() -> None:
    """SQL lives in ``recorder`` (rows), ``db`` (pragmas, migrations) and ``schema`` (tables)."""
    import re

    sql = re.compile(r"""f?["'](SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|PRAGMA|BEGIN)\b""")
    for name, text in _modules().items():
        if name not in ("recorder.py", "db.py", "schema.py"):
            assert not sql.search(text), f"{name}: {sql.search(text)}"


def test_no_projections_module_is_above_450_lines() -> None:
    """Modules stay small enough to read whole."""
    for name, text in _modules().items():
        assert len(text.splitlines()) <= 450, name
