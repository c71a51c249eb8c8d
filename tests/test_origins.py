"""A custom projection is readable by its name from a database a real worker folded: the
worker records the ``module:object`` it was loaded from, readers load it from there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import ROOT, scalar, start_worker, tail

from eventstore import ConfigError, EventStore, NewEvent, StreamSettings
from projections import ProjectionDB, load_projection, needs_origin, recorded_origin

SCRIPT = Path(sys.executable).parent / "eventstore"
BASE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "consumers.cli"]

MODULE = """
from projections import Projection

class Orders(Projection):
    name = "orders"
    aggregate_types = frozenset({"order"})

    def initial(self, aggregate_type, aggregate_id):
        return {"total": 0, "lines": 0}

    def apply(self, state, event):
        return {"total": state["total"] + event.data.get("amount", 0),
                "lines": state["lines"] + 1}

orders = Orders()
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env.pop("PYTHONPATH", None)
    return env | {"EVENTSTORE_LOG_LEVEL": "warning"} | extra


def _checkpoint(db: Path) -> int:
    try:  # the file exists a moment before its schema does
        return int(scalar(db, "SELECT min(checkpoint) FROM projections") or 0)
    except sqlite3.OperationalError:
        return 0


def _cli(
    url: str, settings: StreamSettings, db: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    glob = ["--url", url, "--stream", settings.name, "--prefix", settings.prefix, "--db", str(db)]
    return subprocess.run(
        [*BASE, *glob, *args], capture_output=True, text=True, timeout=60, env=_env(**env),
        cwd=ROOT,
    )  # fmt: skip


async def test_a_projection_the_worker_registered_is_read_by_its_name(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A worker runs myapp_orders:orders from a temp dir on its PYTHONPATH; `state`, `diff`,
    `conflicts` and `verify --projection orders` with that PYTHONPATH find it by name; without
    it, one line says where it was registered from and what to do."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "myapp_orders.py").write_text(MODULE)
    db = tmp_path / "o.db"
    async with await EventStore.connect(nats_url, producer="shop", stream=settings) as store:
        await store.append("order", "o1", NewEvent("Line", {"amount": 5}))
        await store.append("order", "o1", NewEvent("Line", {"amount": 7}))
        head = await store.head()
    log = tmp_path / "worker.log"
    worker = start_worker(
        nats_url, settings, db, log, "--projection", "myapp_orders:orders",
        env={"PYTHONPATH": str(app)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _checkpoint(db) < head:
            assert worker.poll() is None and time.monotonic() < deadline, tail(log)
            await asyncio.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0, tail(log)

    async with await ProjectionDB.open(db, readonly=True) as pdb:
        assert await recorded_origin(pdb, "orders") == "myapp_orders:orders"
        assert await recorded_origin(pdb, "entities") is None  # built-ins need no record

    with_path = {"PYTHONPATH": str(app)}
    now = await asyncio.to_thread(
        _cli, nats_url, settings, db, "state", "order", "o1", "--projection", "orders", **with_path
    )
    assert now.returncode == 0, now.stderr
    assert json.loads(now.stdout)["state"] == {"total": 12, "lines": 2}
    past = await asyncio.to_thread(
        _cli, nats_url, settings, db, "state", "order", "o1", "--version", "1",
        "--projection", "orders", **with_path,
    )  # fmt: skip
    assert json.loads(past.stdout)["state"] == {"total": 5, "lines": 1}, past.stderr
    checked = await asyncio.to_thread(
        _cli, nats_url, settings, db, "verify", "--projection", "orders", **with_path
    )
    assert checked.returncode == 0, checked.stderr

    missing = await asyncio.to_thread(
        _cli, nats_url, settings, db, "state", "order", "o1", "--projection", "orders"
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    line = missing.stderr.strip()
    assert "\n" not in line
    assert (
        "projection orders was registered from myapp_orders:orders, which cannot be imported "
        "here (No module named 'myapp_orders'): put it on PYTHONPATH"
    ) in line
    unknown = await asyncio.to_thread(
        _cli, nats_url, settings, db, "state", "order", "o1", "--projection", "invoices"
    )
    assert unknown.returncode == 1 and "unknown projection 'invoices'" in unknown.stderr


def test_load_projection_takes_the_recorded_origin(tmp_path: Path, monkeypatch: Any) -> None:
    """From Python: a plain name needs an origin; the origin must still make that name."""
    (tmp_path / "myapp_orders2.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert needs_origin("orders") and not needs_origin("entities")
    assert not needs_origin("myapp_orders2:orders")
    assert load_projection("orders", origin="myapp_orders2:orders").name == "orders"
    with pytest.raises(ConfigError, match="unknown projection"):
        load_projection("orders")
    with pytest.raises(ConfigError, match="now makes a projection named 'orders'"):
        load_projection("bills", origin="myapp_orders2:orders")
