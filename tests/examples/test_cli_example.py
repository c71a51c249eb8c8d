"""``eventstore example NAME [--keep]``: a private embedded server, the example run against it,
its exit code; and the examples use the public API only."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from eventstore import EmbeddedServer, EventStore, StreamSettings, free_port

ROOT = Path(__file__).resolve().parents[2]
OURS = ("eventstore", "projections", "consumers")
EXAMPLES = ["awa_network", "mistersmith", "paddler", "tai_state", "vrooli"]


def eventstore(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *args],
        cwd="/", capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_example_runs_on_its_own_server_and_keeps_its_files_when_asked() -> None:
    """``example paddler --keep`` (from another directory: the installed package) starts its
    own server, exits 0 with the example's JSON line last, and leaves the server's store
    where the stderr line says: served again, it holds the example's whole log."""
    proc = eventstore("example", "paddler", "--keep")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["example"] == "paddler" and figures["ok"] is True
    assert "nats-server on nats://127.0.0.1:" in proc.stdout.splitlines()[0]
    found = re.search(r"kept (\S+)", proc.stderr)
    assert found is not None, proc.stderr
    kept = Path(found.group(1))
    try:
        assert (kept / "nats").is_dir()
        server = EmbeddedServer(kept / "nats", port=free_port())
        server.start()
        try:
            asyncio.run(stored_requests(server.url))
        finally:
            server.stop()
    finally:
        shutil.rmtree(kept)


async def stored_requests(url: str) -> None:
    settings = StreamSettings(name="PADDLER", prefix="paddler")
    async with await EventStore.connect(url, producer="t", stream=settings) as store:
        r1 = [e.type async for e in store.read("request", "r1")]
    assert r1[0] == "Queued" and r1[-1] == "GenerationDone"


def test_an_example_without_a_server_is_one_line_and_exit_1() -> None:
    """Nothing at the URL: each example says so in one stderr line and exits 1."""
    assert sorted(p.parent.name for p in (ROOT / "examples").glob("*/__main__.py")) == EXAMPLES
    for name in EXAMPLES:
        proc = subprocess.run(
            [sys.executable, "-m", f"examples.{name}", "--url", f"nats://127.0.0.1:{free_port()}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and "NotConnected" in proc.stderr


def test_an_unknown_example_is_one_line_and_exit_2() -> None:
    """A name that is no example is a usage error naming the examples there are."""
    proc = eventstore("example", "nope", timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "unknown example 'nope'" in proc.stderr and "awa_network" in proc.stderr


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_examples_use_only_the_public_api() -> None:
    """Every module of every example imports our packages only through their ``__init__``
    (``from eventstore import ...``), and none opens SQLite itself (no private tables)."""
    bad = []
    for path in sorted((ROOT / "examples").rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if (top in OURS and module != top) or top in ("sqlite3", "aiosqlite"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert bad == []
