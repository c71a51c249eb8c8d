"""The embedded server as a process: one server per store directory, its nats-server dies with
it, it restarts at once on its port after a crash, a store directory it cannot use is one clear
line, and a full disk is named as such instead of an anonymous timeout.

Real processes only: ``eventstore server`` / ``up`` subprocesses, their nats-server children,
SIGKILL and SIGSTOP, a real tmpfs that fills up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import nats
import pytest
from helpers_process import freeze

from eventstore import AppendTimeout, EmbeddedServer, EventStore, EventStoreError, NewEvent
from eventstore.server import LOCK_NAME, check_port, free_port

SCRIPT = Path(sys.executable).parent / "eventstore"
BASE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "consumers.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    return env


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: it holds no port and no file)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (forked from any of its threads)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tcp_states(port: int) -> set[str]:
    """The kernel's TCP states (hex codes of /proc/net/tcp) of sockets bound to local ``port``."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            states.add(fields[3])
    return states


def _wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    got = err.strip().splitlines()
    assert len(got) == 1, err
    return got[0]


class Running:
    """An ``eventstore server`` (or ``up``) subprocess; its stdout is read in a thread."""

    def __init__(self, command: str, port: int, store_dir: Path, *extra: str) -> None:
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [*BASE, command, "--port", str(port), "--store-dir", str(store_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self.nats_pids: list[int] = []

    def _pump(self, pipe: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in iter(pipe.readline, ""):
                self._seen.append(line)
                self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, text: str = "listening on", timeout: float = 30.0) -> None:
        """Wait for the line saying it serves; remember its nats-server child."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} line within {timeout}s") from None
            if line is None:
                raise AssertionError(f"exited {self.proc.wait()}: {self.stderr()}")
            if text in line:
                break
        self.nats_pids = _children(self.proc.pid)
        assert len(self.nats_pids) == 1, self.nats_pids

    @property
    def nats_pid(self) -> int:
        return self.nats_pids[0]

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def logs(self) -> str:
        """What it printed and logged once it exited (a service logs on stdout)."""
        if self.proc.poll() is None:
            return ""
        while self._lines.get(timeout=10) is not None:  # the pump has read everything
            pass
        return "".join(self._seen) + self.stderr()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.nats_pids:  # never leak a nats-server, whatever the test did
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def running(command: str, port: int, store_dir: Path, *extra: str) -> Iterator[Running]:
    r = Running(command, port, store_dir, *extra)
    try:
        yield r
    finally:
        r.close()


def run_briefly(command: str, port: int, store_dir: Path, *extra: str) -> tuple[int, str]:
    """Run a server command that must refuse to start: (exit code, stderr).

    One that starts anyway is stopped (SIGTERM, which stops its nats-server too) and fails the
    test.
    """
    proc = subprocess.Popen(
        [*BASE, command, "--port", str(port), "--store-dir", str(store_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        raise AssertionError(f"`{command}` was not refused, it ran: {out} {err}") from None
    return proc.returncode, err


async def _append(url: str, n: int, producer: str = "p") -> list[str]:
    async with await EventStore.connect(url, producer=producer) as store:
        ids: list[str] = []
        for i in range(n):
            ids.extend((await store.append("agent", "a1", NewEvent("Step", {"i": i}))).ids)
        return ids


async def _stored_ids(store_dir: Path, port: int) -> list[str]:
    with EmbeddedServer(store_dir, port=port) as server:
        async with await EventStore.connect(server.url, producer="check") as store:
            return [e.id async for e in store.read_all()]


# -- item 1: one server per store directory -----------------------------------------------------


async def test_a_second_server_on_the_same_store_dir_is_refused(tmp_path: Path) -> None:
    """A second `server` or `up` on a store directory in use, on any port, and a second
    EmbeddedServer, are refused with one line naming the holder; the first's events survive."""
    store_dir, port = tmp_path / "nats", free_port()
    with running("server", port, store_dir) as first:
        first.wait_ready()
        acked = await _append(first.url, 3)
        attempts = [
            ("server", free_port(), ()),
            ("server", port, ()),
            ("up", free_port(), ("--db", str(tmp_path / "up.db"))),
        ]
        for command, other, extra in attempts:
            code, err = await asyncio.to_thread(run_briefly, command, other, store_dir, *extra)
            line = _one_error_line(err)
            assert code == 1, line
            assert "in use" in line and str(store_dir) in line, line
            assert f"pid {first.proc.pid}" in line and first.url in line, line
            if other != port:
                assert not _listening(other), f"{command} started something on {other}"
        assert not (tmp_path / "up.db").exists()
        with pytest.raises(EventStoreError, match="in use by another eventstore server"):
            EmbeddedServer(store_dir, port=free_port()).start()
        acked += await _append(first.url, 1, producer="q")  # the first one still serves
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(20) == 0
    assert await _stored_ids(store_dir, port) == acked


async def test_a_stale_lock_of_a_killed_server_does_not_block_a_restart(tmp_path: Path) -> None:
    """After a SIGKILL of `eventstore server` its lock file stays with a dead pid in it; a
    restart on the same directory and port starts at once and has every acknowledged event."""
    store_dir, port = tmp_path / "nats", free_port()
    with running("server", port, store_dir) as first:
        first.wait_ready()
        acked = await _append(first.url, 5)
        first.proc.kill()
        first.proc.wait()
    holder = json.loads((store_dir / LOCK_NAME).read_text())
    assert holder["pid"] == first.proc.pid and not _alive(holder["pid"])
    with running("server", port, store_dir) as second:  # no wait for the old one to go
        second.wait_ready(timeout=20)
        async with await EventStore.connect(second.url, producer="check") as store:
            assert [e.id async for e in store.read_all()] == acked


async def test_the_lock_lasts_while_an_orphaned_nats_server_uses_the_store(
    tmp_path: Path,
) -> None:
    """A nats-server that outlives its eventstore process (here: stopped, so its death signal
    waits) keeps the store locked; once it has gone, the directory can be served again."""
    store_dir, port = tmp_path / "nats", free_port()
    with running("server", port, store_dir) as first:
        first.wait_ready()
        orphan = first.nats_pid
        freeze(orphan)  # stopped before its death signal comes
        first.proc.kill()
        first.proc.wait()
        assert _alive(orphan)
        code, err = await asyncio.to_thread(run_briefly, "server", free_port(), store_dir)
        line = _one_error_line(err)
        assert code == 1 and "in use" in line and f"nats-server pid {orphan}" in line, line
        os.kill(orphan, signal.SIGCONT)  # now it gets its pending death signal and exits
        _wait_until(lambda: not _alive(orphan), 15, "the orphaned nats-server exited")
    with running("server", port, store_dir) as again:
        again.wait_ready(timeout=20)


# -- item 20: the nats-server child dies with its parent ---------------------------------------


def test_sigkill_of_eventstore_server_takes_its_nats_server_down(tmp_path: Path) -> None:
    """SIGKILL of `eventstore server` ends its nats-server within seconds and frees the port."""
    port = free_port()
    with running("server", port, tmp_path / "nats") as srv:
        srv.wait_ready()
        child = srv.nats_pid
        srv.proc.kill()
        srv.proc.wait()
        _wait_until(lambda: not _alive(child), 10, f"nats-server {child} exited")
        assert not _listening(port)


def test_a_server_started_from_a_short_lived_thread_keeps_running(tmp_path: Path) -> None:
    """The death signal follows the process, not the thread that called start(): a server
    started from a thread that has ended (as asyncio.to_thread's may) still runs."""
    server = EmbeddedServer(tmp_path / "nats", port=free_port())
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    try:
        time.sleep(0.5)
        assert server.proc is not None and server.proc.poll() is None
        assert _listening(server.port)
    finally:
        server.stop()


# -- item 7: restart on the port at once after a crash -----------------------------------------


def test_the_port_check_ignores_connections_in_time_wait() -> None:
    """A port whose last connections linger in TIME_WAIT is free for a new server."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    _wait_until(lambda: "06" in _tcp_states(port), 5, "a TIME_WAIT socket on the port")
    check_port("127.0.0.1", port)
    with socket.socket() as busy:  # a listening server still makes the port busy
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(EventStoreError, match=f"port {port} .* already in use"):
            check_port("127.0.0.1", port)


async def test_server_restarts_on_its_port_right_after_a_crash(tmp_path: Path) -> None:
    """nats-server SIGKILLed with a client connected leaves the port in TIME_WAIT/FIN_WAIT;
    `eventstore server` starts again on that port at once."""
    store_dir, port = tmp_path / "nats", free_port()
    with running("server", port, store_dir) as first:
        first.wait_ready()
        nc = await nats.connect(first.url, allow_reconnect=False)
        await nc.publish("hello", b"x")
        await nc.flush()
        os.kill(first.nats_pid, signal.SIGKILL)
        assert await asyncio.to_thread(first.proc.wait, 20) == 1
        await nc.close()
    lingering = {"04", "05", "06", "0B"}  # FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING
    assert _tcp_states(port) & lingering, _tcp_states(port)
    with running("server", port, store_dir) as second:
        second.wait_ready(timeout=20)


# -- item 14b: a store directory that cannot be used -------------------------------------------


def _read_only_mount(path: Path) -> bool:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_a_store_dir_that_cannot_be_used_is_one_clear_line(tmp_path: Path) -> None:
    """`server`/`up --store-dir` naming a file, a path under a file or a read-only place exit 1
    with one line naming the directory; EmbeddedServer.start raises EventStoreError."""
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    log_is_dir = tmp_path / "logdir"
    (log_is_dir / "nats-server.log").mkdir(parents=True)
    cases = [a_file, a_file / "sub", log_is_dir]
    read_only = tmp_path / "ro"
    mounted = _read_only_mount(read_only)
    if mounted:
        cases += [read_only, read_only / "sub"]
    try:
        for path in cases:
            with pytest.raises(EventStoreError, match="store directory"):
                EmbeddedServer(path, port=free_port()).start()
            for command, extra in (("server", ()), ("up", ("--db", str(tmp_path / "u.db")))):
                port = free_port()
                code, err = run_briefly(command, port, path, *extra)
                line = _one_error_line(err)
                assert code == 1 and "store directory" in line and str(path) in line, line
                assert not _listening(port)
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=True)
    assert a_file.read_text() == "not a directory"


# -- item 6: a full disk on the server ----------------------------------------------------------


def _mount_small_disk(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()})")


async def test_a_full_disk_is_named_and_recovered_by_a_restart(tmp_path: Path) -> None:
    """On a full disk an append fails naming the server's store and what to do (not a bare
    timeout), `eventstore server` logs it, `status` shows it; after freeing space and a
    restart every acknowledged event is there and appends work again."""
    disk, port = tmp_path / "disk", free_port()
    _mount_small_disk(disk, "3m")
    store_dir, db = disk / "nats", tmp_path / "p.db"
    try:
        with running("up", port, store_dir, "--db", str(db)) as up:
            up.wait_ready("eventstore up:")
            acked: list[str] = []
            async with await EventStore.connect(
                up.url, producer="filler", append_timeout=3
            ) as store:
                started = time.monotonic()
                pad = {"pad": "x" * 20_000}
                with pytest.raises(AppendTimeout) as failed:
                    for i in range(10_000):
                        r = await store.append("agent", f"a{i % 5}", NewEvent("Big", pad))
                        acked.extend(r.ids)
                assert time.monotonic() - started < 30
            message = str(failed.value)
            assert "cannot be written" in message and "free disk space" in message, message
            assert "restart the server" in message, message
            status = await asyncio.to_thread(
                subprocess.run,
                [*BASE, "--url", up.url, "status", "--db", str(db)],
                capture_output=True, text=True, timeout=30, env=_env(),
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            server = [json.loads(status.stdout)["server"]]
            assert server[0]["server"] == up.url and server[0]["store"] == "write error"
            assert "no space left on device" in server[0]["detail"], server[0]
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(30) == 0
            logged = up.logs()
            assert "no space left on device" in logged and "free disk space" in logged, logged
        assert len(acked) > 20
        remount = ["mount", "-o", "remount,size=64m", str(disk)]  # space is back
        await asyncio.to_thread(subprocess.run, remount, check=True)
        with running("server", port, store_dir) as again:
            again.wait_ready()
            async with await EventStore.connect(again.url, producer="after") as store:
                await store.append("agent", "later", NewEvent("Works"))
                ids = [e.id async for e in store.read_all()]
        assert ids[: len(acked)] == acked and len(ids) == len(acked) + 1
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(disk)], check=False)


async def test_a_full_storage_limit_says_what_to_do(tmp_path: Path) -> None:
    """When JetStream's max_file_store is reached, the refused append says so and what to do."""
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 1MB\njetstream { max_file_store: 1MB, sync_interval: always }\n")
    with EmbeddedServer(tmp_path / "nats", port=free_port(), config=conf) as server:
        async with await EventStore.connect(server.url, producer="filler") as store:
            pad = {"pad": "x" * 20_000}
            with pytest.raises(EventStoreError) as refused:
                for i in range(1000):
                    await store.append("agent", f"a{i % 5}", NewEvent("Big", pad))
        message = str(refused.value)
        assert "insufficient resources" in message and "max_file_store" in message, message
        assert "free disk space or raise the limit" in message, message
