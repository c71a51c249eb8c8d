"""consumers: long-running consumers of the log and of projections, and the ``eventstore`` CLI.

Imports are lazy: ``import consumers`` loads nothing else, so ``python -m consumers.cli`` and
the console script start without importing modules twice, and a worker pays only for what it
uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumers.cli import main
    from consumers.client import ProjectionClient
    from consumers.demo import Demo, demo_environment, publish_lifecycles, run_demo
    from consumers.liveview import LiveView
    from consumers.protocol import (
        Heartbeat,
        HistoryReply,
        Notification,
        PageReply,
        RangeReply,
        StateReply,
        StatusReply,
    )
    from consumers.reactors import Reactor, ReactorRunner
    from consumers.reconcilers import Reconciler
    from consumers.serve import embedded_server, serve_until
    from consumers.watching import Watcher
    from consumers.worker import Worker
    from consumers.workerprocess import WorkerProcess

__all__ = [
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

_WHERE = {
    "Demo": "consumers.demo",
    "Heartbeat": "consumers.protocol",
    "HistoryReply": "consumers.protocol",
    "LiveView": "consumers.liveview",
    "Notification": "consumers.protocol",
    "PageReply": "consumers.protocol",
    "ProjectionClient": "consumers.client",
    "RangeReply": "consumers.protocol",
    "StateReply": "consumers.protocol",
    "StatusReply": "consumers.protocol",
    "demo_environment": "consumers.demo",
    "embedded_server": "consumers.serve",
    "main": "consumers.cli",
    "Reactor": "consumers.reactors",
    "ReactorRunner": "consumers.reactors",
    "Reconciler": "consumers.reconcilers",
    "publish_lifecycles": "consumers.demo",
    "run_demo": "consumers.demo",
    "serve_until": "consumers.serve",
    "Watcher": "consumers.watching",
    "Worker": "consumers.worker",
    "WorkerProcess": "consumers.workerprocess",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'consumers' has no attribute {name!r}")
