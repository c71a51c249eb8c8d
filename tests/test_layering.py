"""The facade is the only door: a package imports a lower package only through its
``__init__`` (``from eventstore import EventStore``, never ``from eventstore.store import
...``), never a higher one, and inside itself anything.

Checked by reading the source (the AST of every module, ``TYPE_CHECKING`` and function-local
imports included), so an import that only runs on some path is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The packages bottom-up, and for each the lower packages it may import (their __init__ only).
RULES: dict[str, tuple[str, ...]] = {
    "eventstore": (),
    "projections": ("eventstore",),
    "consumers": ("eventstore", "projections"),
}
# The packages this test holds to the facade rule (eventstore is the bottom layer).
CHECKED = ["consumers", "projections"]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``; relative imports are resolved."""
    package = path.parent.name
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, f"{package}.{node.module or ''}".rstrip(".")))
            elif node.module is not None:
                found.append((node.lineno, node.module))
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    """Every import in ``root/package`` that breaks its rule, as ``file:line: module``."""
    ours = set(RULES)
    allowed = RULES[package]
    out: list[str] = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top not in ours or top == package:
                continue  # the standard library, a third-party package, or itself
            if top not in allowed:
                out.append(f"{path.relative_to(root)}:{line}: {module} (not below {package})")
            elif module != top:
                out.append(f"{path.relative_to(root)}:{line}: {module} (use `from {top} import`)")
    return out


@pytest.mark.parametrize("package", CHECKED)
def test_a_package_imports_lower_packages_only_through_their_facade(package: str) -> None:
    """No module of the package imports a submodule of a lower package, or a higher package."""
    assert violations(package) == []


def test_the_check_catches_every_form_of_a_forbidden_import(tmp_path: Path) -> None:
    """The reader sees through the forms an import can take (``from x.y import``, ``import
    x.y``, inside a function, under ``TYPE_CHECKING``) and lets the facade and the package's
    own modules through."""
    module = tmp_path / "projections" / "m.py"
    module.parent.mkdir()
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import msgspec\n"
        "import eventstore\n"
        "from eventstore import EventStore\n"
        "from projections.db import ProjectionDB\n"
        "from . import fold\n"
        "import eventstore.store\n"
        "if TYPE_CHECKING:\n"
        "    from eventstore.reader import StoredMessage\n"
        "def f():\n"
        "    from consumers.cli import main\n"
    )
    assert violations("projections", tmp_path) == [
        "projections/m.py:7: eventstore.store (use `from eventstore import`)",
        "projections/m.py:9: eventstore.reader (use `from eventstore import`)",
        "projections/m.py:11: consumers.cli (not below projections)",
    ]


def _module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of our packages it imports at module level (facades excluded:
    ``from eventstore import X`` is the door, not a dependency on one module)."""
    graph: dict[str, set[str]] = {}
    for package in RULES:
        for path in sorted((root / package).glob("*.py")):
            if path.stem == "__init__":
                continue
            tree = ast.parse(path.read_text(), str(path))
            deps: set[str] = set()
            for node in tree.body:
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and not node.level
                    and node.module.split(".")[0] in RULES
                    and "." in node.module
                ):
                    deps.add(node.module)
            graph[f"{package}.{path.stem}"] = deps
    return graph


def test_no_import_circle_between_modules() -> None:
    """No module of ours imports, through others, back to itself."""
    graph = _module_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_function_local_imports_of_our_packages() -> None:
    """Imports of our packages sit at module level, where a circle would show, never inside a
    function where one could hide."""
    found = []
    for package in RULES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.ImportFrom)
                        and inner.module
                        and inner.module.split(".")[0] in RULES
                    ):
                        found.append(f"{package}/{path.name}:{inner.lineno}: {inner.module}")
    assert found == []
