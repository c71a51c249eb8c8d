"""``eventstore state`` without a database and ``eventstore query``, as a user runs them: real
processes in a directory with no database, against a real worker process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_serving import running_worker, small_log, sqlite_states

from eventstore import EventStore

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    env["PYTHONPATH"] = str(ROOT)
    return env


async def cli(store: EventStore, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    g = ["--url", store.url, "--stream", store.settings.name, "--prefix", store.settings.prefix]
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumers.cli", *args, *g],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=cwd,
    )


def lines(run: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


async def test_state_without_a_database_asks_the_query_service(
    store: EventStore, tmp_path: Path
) -> None:
    """In a directory without any database, `state` (now and at past points) prints exactly
    what `state --db` prints on the worker's file; with no worker it says so in one line."""
    head = await small_log(store)
    db, log, elsewhere = tmp_path / "w.db", tmp_path / "w.log", tmp_path / "empty"
    elsewhere.mkdir()
    async with running_worker(store, db, log):
        rows = sqlite_states(db)
        past = [[], ["--version", "1"], ["--seq", "3"], ["--seq", str(head)]]
        for t, i in [("agent", "a1"), ("task", "t0"), ("agent", "a.dot/x y")]:
            for point in past:
                remote, local = await asyncio.gather(
                    cli(store, elsewhere, "state", t, i, *point),
                    cli(store, elsewhere, "state", t, i, *point, "--db", str(db)),
                )
                assert lines(remote) == lines(local), (t, i, point)
            now = lines(await cli(store, elsewhere, "state", t, i))[0]
            assert (now["version"], now["state"]) == (rows[t, i]["version"], rows[t, i]["state"])
        missing = await cli(store, elsewhere, "state", "agent", "nobody")
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1
        assert "AggregateNotFound: agent/nobody" in missing.stderr
    assert list(elsewhere.iterdir()) == []  # nothing was created here
    nobody = await cli(store, elsewhere, "state", "agent", "a1")
    assert nobody.returncode == 1 and nobody.stderr.count("\n") == 1, nobody.stderr
    assert "no worker serves projection entities on stream" in nobody.stderr


async def test_query_lists_states_from_the_service_and_from_the_file(
    store: EventStore, tmp_path: Path
) -> None:
    """`query PROJECTION` prints one object per aggregate, the same from the service and from
    --db; --where reads JSON values (n=3 the number, n="3" the string), --type, --limit."""
    await small_log(store)
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log):
        rows = sqlite_states(db)
        remote, local = await asyncio.gather(
            cli(store, tmp_path, "query", "entities"),
            cli(store, tmp_path, "query", "entities", "--db", str(db)),
        )
        assert lines(remote) == lines(local)
        assert {(r["aggregate_type"], r["aggregate_id"]) for r in lines(remote)} == set(rows)
        first = lines(remote)[0]
        assert set(first) == {"projection", "aggregate_type", "aggregate_id", "version", "seq",
                              "state"}  # fmt: skip
        number = lines(await cli(store, tmp_path, "query", "entities", "--where", "n=3"))
        text = lines(await cli(store, tmp_path, "query", "entities", "--where", 'n="3"'))
        assert {r["aggregate_id"] for r in text} == {"a1"}
        assert {r["aggregate_id"] for r in number} == {"a2", "a3", "t0", "t1", "t2", "t3", "t4"}
        tags = lines(await cli(store, tmp_path, "query", "entities", "--where", "tag=t1"))
        assert {r["aggregate_id"] for r in tags} == {"a1", "a3", "a5"}
        two = await cli(store, tmp_path, "query", "entities", "--type", "task", "--limit", "2")
        assert [r["aggregate_id"] for r in lines(two)] == ["t0", "t1"]
        bad = await cli(store, tmp_path, "query", "entities", "--where", "nofield")
        assert bad.returncode == 2 and "FIELD=VALUE" in bad.stderr
        unknown = await cli(store, tmp_path, "query", "nope", "--db", str(db))
        assert unknown.returncode == 1 and "UnknownProjection" in unknown.stderr
