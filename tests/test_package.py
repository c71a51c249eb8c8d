"""The public face of the eventstore package."""

from __future__ import annotations

import eventstore


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    return (1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted (constants, classes, functions), and every name in it exists."""
    assert eventstore.__all__ == sorted(eventstore.__all__, key=_isort_key)
    for name in eventstore.__all__:
        assert hasattr(eventstore, name), name


def test_errors_share_one_root() -> None:
    """Every public error class derives from EventStoreError."""
    errors = [
        getattr(eventstore, n)
        for n in eventstore.__all__
        if isinstance(getattr(eventstore, n), type)
        and issubclass(getattr(eventstore, n), Exception)
    ]
    assert len(errors) >= 8
    assert all(issubclass(e, eventstore.EventStoreError) for e in errors)


def test_eventstore_does_not_import_upper_layers() -> None:
    """Dependencies point one way: nothing in eventstore imports projections or consumers."""
    import pathlib

    root = pathlib.Path(eventstore.__file__).parent
    for path in root.glob("*.py"):
        imports = [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip().startswith(("import ", "from "))
        ]
        for line in imports:
            assert not line.split()[1].startswith(
                ("projections", "consumers", "sqlite", "aiosqlite")
            ), f"{path.name}: {line}"
