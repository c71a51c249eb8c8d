"""The public face of ``consumers``: exactly the ``__all__`` listed here, each name loaded
lazily from the module that defines it (as httpx's ``tests/test_exported_members.py``)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import consumers

EXPORTED = [
    "Demo",
    "Heartbeat",
    "HistoryReply",
    "LiveView",
    "Notification",
    "PageReply",
    "ProjectionClient",
    "RangeReply",
    "Reactor",
    "ReactorRunner",
    "Reconciler",
    "StateReply",
    "StatusReply",
    "Watcher",
    "Worker",
    "WorkerProcess",
    "demo_environment",
    "embedded_server",
    "main",
    "publish_lifecycles",
    "run_demo",
    "serve_until",
]


def test_all_is_exactly_the_public_face() -> None:
    """``consumers.__all__`` is exactly this list (sorted the RUF022 way)."""
    assert consumers.__all__ == EXPORTED


def test_every_exported_name_resolves_to_its_defining_module() -> None:
    """Each name of ``__all__`` resolves, to the object its own module defines and exports."""
    for name in consumers.__all__:
        value = getattr(consumers, name)
        module = importlib.import_module(value.__module__)
        assert getattr(module, name) is value, name
        assert name in module.__all__, (module.__name__, name)


def test_importing_consumers_loads_nothing_else() -> None:
    """``import consumers`` is lazy: no submodule, no lower package is imported with it."""
    code = (
        "import sys, consumers; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('consumers', 'eventstore', 'projections')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['consumers']"
