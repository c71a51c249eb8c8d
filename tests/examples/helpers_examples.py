"""Running an example as a user runs it, for the example tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from eventstore import StreamSettings

ROOT = Path(__file__).resolve().parents[2]


def run_example(
    name: str,
    url: str,
    *,
    settings: StreamSettings | None = None,
    workdir: Path | None = None,
    timeout: float = 240,
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``python -m examples.NAME --url URL`` (with ``--stream``/``--prefix`` of ``settings``
    and ``--dir workdir`` when given), no EVENTSTORE_ variables of ours leaking in: the
    finished process and its last stdout line as JSON (None without output)."""
    args = ["--url", url]
    if settings is not None:
        args += ["--stream", settings.name, "--prefix", settings.prefix]
    if workdir is not None:
        args += ["--dir", str(workdir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    proc = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    return proc, json.loads(lines[-1]) if lines else None
