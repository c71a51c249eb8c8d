"""The public face of ``projections``: exactly the ``__all__`` listed here, every name of it
resolving."""

from __future__ import annotations

import types

import projections

EXPORTED = [
    "BUILTIN_PROJECTIONS",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SCHEMA_VERSION",
    "AggregateState",
    "Change",
    "CommitInfo",
    "ConflictContext",
    "ConflictRecord",
    "DatabaseLock",
    "DatabaseLocked",
    "Diff",
    "EntitiesProjection",
    "Folder",
    "ForeignDatabase",
    "FunctionResolver",
    "HistoryEntry",
    "InvalidRequest",
    "LastWriterWins",
    "Loaded",
    "LogOrder",
    "Mismatch",
    "PastState",
    "Point",
    "Projection",
    "ProjectionCounts",
    "ProjectionDB",
    "ProjectionError",
    "ProjectionFailure",
    "ProjectionInfo",
    "ProjectionStatus",
    "ProjectionsConfig",
    "QuarantineRecord",
    "RebuildResult",
    "Repository",
    "Resolution",
    "Resolver",
    "Runner",
    "RunnerSettings",
    "Scalar",
    "SnapshotPolicy",
    "SourcePriority",
    "StatePage",
    "StateRecord",
    "Statement",
    "StatusReport",
    "TimeTravel",
    "UnknownProjection",
    "Updated",
    "VerifyReport",
    "check_database",
    "check_stream_name",
    "current_state",
    "import_object",
    "list_aggregates",
    "list_conflicts",
    "list_quarantine",
    "load_config",
    "load_projection",
    "load_projections",
    "make_without_arguments",
    "merge_patch",
    "needs_origin",
    "projection_checkpoint",
    "projection_counts",
    "projection_status",
    "query_states",
    "read_state",
    "rebuild",
    "recorded_origin",
    "resolver_from_spec",
    "states_between",
    "status_report",
    "verify",
]


def test_all_is_exactly_the_public_face() -> None:
    """``projections.__all__`` is exactly this list (sorted the RUF022 way)."""
    assert projections.__all__ == EXPORTED


def test_every_public_member_is_exported() -> None:
    """Every name ``import projections`` binds (but its submodules) is in ``__all__`` and
    resolves: nothing is public by accident."""
    public = {
        name
        for name, value in vars(projections).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(projections.__all__)


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
        assert not re.search(r"^[ \t]+(from projections|import projections)", text, re.M), name


def test_every_statement_on_projection_rows_is_the_recorders() -> None:
    """SQL lives in ``recorder`` (rows), its parts ``commit`` (the batch's transaction),
    ``snapshots`` (snapshot statements), ``eventcopy`` and ``eventruns`` (the copy of the events
    and its runs), ``listing``
    (read-only pages of states), ``db`` (pragmas, migrations) and ``schema`` (tables)."""
    import re

    sql = re.compile(r"""f?["'](SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|PRAGMA|BEGIN)\b""")
    for name, text in _modules().items():
        allowed = (
            "recorder.py",
            "commit.py",
            "snapshots.py",
            "eventcopy.py",
            "eventruns.py",
            "listing.py",
            "db.py",
            "schema.py",
        )
        if name not in allowed:
            assert not sql.search(text), f"{name}: {sql.search(text)}"


def test_no_projections_module_is_above_450_lines() -> None:
    """Modules stay small enough to read whole."""
    for name, text in _modules().items():
        assert len(text.splitlines()) <= 450, name
