"""The lock that keeps a projection database to one writer (a worker, or a rebuild).

``flock`` on ``<db>.lock`` beside the database file: the kernel releases it when the process
dies (SIGKILL included), so a crashed worker never blocks the next one, and a second worker on
the same file is refused (``DatabaseLocked``, naming the holder) instead of folding batches the
first one already committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from eventstore import DatabaseLocked, ProjectionError

__all__ = ["DatabaseLock"]


class DatabaseLock:
    """An exclusive lock on ``<db>.lock``: one writer (worker, rebuild) per database file.

    ``flock`` on a file beside the database, so the kernel releases it when the process dies
    (SIGKILL included) and a crashed worker never blocks the next one. The holder writes who it
    is into the file, for the refusal message. Releasing removes the file; that is safe because
    an acquirer checks that the file it locked is still the one at the path, else tries again.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, role: str = "worker") -> None:
        """Take the lock now or raise ``DatabaseLocked`` naming its holder (never waits)."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent is a regular file, or not writable
            raise ProjectionError(
                f"projection database {self.target}: cannot create its directory "
                f"{self.path.parent} ({exc.strerror or exc}); point --db / EVENTSTORE_DB at a "
                "writable place"
            ) from exc
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ProjectionError(
                    f"cannot create the lock file {self.path} of projection database "
                    f"{self.target}: {exc.strerror or exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DatabaseLocked(str(self.target), holder or "process") from None
            except OSError as exc:
                os.close(fd)
                raise ProjectionError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if not same:  # its holder released and removed it meanwhile: lock the new one
                os.close(fd)
                continue
            since = datetime.now(UTC).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{role} (pid {os.getpid()}, since {since})\n".encode(), 0)
            self._fd = fd
            return
        raise ProjectionError(f"cannot lock {self.path}: it keeps being replaced")

    @contextlib.contextmanager
    def holding(self, role: str) -> Iterator[None]:
        """Hold the lock for a block (``acquire(role)``, then ``release`` whatever happens)."""
        self.acquire(role)
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still holding it: whoever opened it meanwhile tries again
        os.close(fd)
