"""One server per store directory, and a nats-server child that dies with its parent.

``StoreLock`` is the exclusive ``flock`` on ``<store_dir>/eventstore.lock``, inherited by the
nats-server child and naming its holder; ``spawner`` forks every nats-server from one daemon
thread so that ``PR_SET_PDEATHSIG`` (``death_signal``) fires only when the process ends. See
``eventstore.server`` for the guarantees they give.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from eventstore.errors import ServerError

__all__ = ["LOCK_NAME", "ORPHAN_GRACE", "StoreLock", "death_signal", "spawner"]

LOCK_NAME = "eventstore.lock"
# How long a start waits for a nats-server whose eventstore process is gone (it has been sent
# its death signal and is shutting down) before calling the store directory taken.
ORPHAN_GRACE = 3.0


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


def death_signal(parent: int) -> Callable[[], None] | None:
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


spawner = _Spawner()


# -- one server per store directory ------------------------------------------------------------


class StoreLock:
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
            raise ServerError(
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
                    raise ServerError(self._in_use(holder, orphaned)) from None
                time.sleep(0.05)
            except OSError as exc:
                os.close(fd)
                raise ServerError(
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
