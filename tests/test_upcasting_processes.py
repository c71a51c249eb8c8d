"""Upcasters in other processes: the CLI and a real worker load the modules of the config's
``[upcasters]`` table; ``publish --schema N`` writes an old schema on purpose."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

from helpers_projections import scalar, start_worker, stored_states, tail
from test_cli import cli

from eventstore import EventStore, NewEvent, StreamSettings, decode_message


def plugin(tmp_path: Path, body: str | None = None) -> tuple[str, Path]:
    """A module registering ``<Type>`` schema 1 -> 2 (``title`` became ``name``) and a config
    file naming it; returns (event type, config path)."""
    suffix = uuid.uuid4().hex[:8]
    module, event_type = f"up_plugin_{suffix}", f"Plug{suffix}"
    (tmp_path / f"{module}.py").write_text(
        body
        if body is not None
        else "from eventstore import upcaster\n\n\n"
        f"@upcaster({event_type!r}, 1)\n"
        "def v1(data):\n"
        "    return {'name': data['title']}\n"
    )
    config = tmp_path / "eventstore.toml"
    config.write_text(f'[upcasters]\nmodules = ["{module}"]\n')
    return event_type, config


async def stored_schemas(store: EventStore, agg_id: str) -> list[tuple[int, dict[str, str]]]:
    """What the log holds, not upcast (``decode_message`` decodes the stored form)."""
    out = []
    async for batch in store.raw_aggregate("doc", agg_id):
        for m in batch:
            ev = decode_message(store.settings.prefix, m)
            out.append((ev.schema, ev.data))
    return out


async def test_publish_writes_the_current_schema_or_the_one_given_and_history_upcasts(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """With the config's ``[upcasters]``, ``publish`` writes schema 2 unless ``--schema 1``
    says otherwise, ``history`` shows both at schema 2 and ``export`` the stored form; a
    module that cannot be imported and ``--schema 0`` are one line on stderr."""
    event_type, config = plugin(tmp_path)
    env = {"PYTHONPATH": str(tmp_path)}
    old = cli(nats_url, settings, "--config", str(config), "publish", "doc", "p", event_type,
              "--data", '{"title": "t"}', "--schema", "1", **env)  # fmt: skip
    assert old.returncode == 0, old.stderr
    new = cli(nats_url, settings, "--config", str(config), "publish", "doc", "p", event_type,
              "--data", '{"name": "u"}', **env)  # fmt: skip
    assert new.returncode == 0, new.stderr
    assert await stored_schemas(store, "p") == [(1, {"title": "t"}), (2, {"name": "u"})]

    hist = cli(nats_url, settings, "--config", str(config), "history", "doc", "p", **env)
    assert hist.returncode == 0, hist.stderr
    lines = [json.loads(line) for line in hist.stdout.splitlines()]
    assert [(e["schema"], e["data"]) for e in lines] == [(2, {"name": "t"}), (2, {"name": "u"})]
    exported = cli(nats_url, settings, "--config", str(config), "export", "doc", "p", **env)
    assert exported.returncode == 0, exported.stderr
    stored = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["data"] for e in stored] == [{"title": "t"}, {"name": "u"}]

    bad = cli(nats_url, settings, "publish", "doc", "p", event_type, "--schema", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (tmp_path / "broken.toml").write_text('[upcasters]\nmodules = ["no_such_module_here"]\n')
    broken = cli(nats_url, settings, "--config", str(tmp_path / "broken.toml"), "history",
                 "doc", "p")  # fmt: skip
    assert broken.returncode == 1
    assert broken.stderr.count("\n") == 1 and "no_such_module_here" in broken.stderr


async def test_a_worker_process_folds_with_the_upcasters_of_its_config(
    store: EventStore, nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A real worker started with ``[upcasters]`` in its config folds schema-1 and schema-2
    events of one type to the state of an all-schema-2 history, and stops cleanly."""
    event_type, config = plugin(tmp_path)
    for i in range(5):  # this process has no upcaster for the type: the schemas are explicit
        await store.append("doc", "old", [NewEvent(event_type, {"title": f"n{i}"}, schema=1)])
        await store.append("doc", "old", [NewEvent(event_type, {"name": f"m{i}"}, schema=2)])
        await store.append("doc", "new", [NewEvent(event_type, {"name": f"n{i}"}, schema=2)])
        await store.append("doc", "new", [NewEvent(event_type, {"name": f"m{i}"}, schema=2)])
    head = await store.reader.last_seq()
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    proc = start_worker(
        nats_url, settings, db, log, "--config", str(config), env={"PYTHONPATH": str(tmp_path)}
    )
    try:
        deadline = time.monotonic() + 60
        while _checkpoint(db) < head:
            assert proc.poll() is None, tail(log)
            assert time.monotonic() < deadline, tail(log)
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, tail(log)
    states = stored_states(db)
    assert states[("doc", "old")]["state"] == states[("doc", "new")]["state"] == {"name": "m4"}
    assert scalar(db, "SELECT count(*) FROM quarantine") == 0


def _checkpoint(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return int(scalar(db, "SELECT checkpoint FROM projections WHERE name = 'entities'") or 0)
    except Exception:  # the tables may not exist yet
        return 0
