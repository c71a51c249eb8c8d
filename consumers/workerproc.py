"""A projection worker as a child process: what an application (or an example) starts when
it wants the real thing beside it, not a worker inside its own event loop.

``WorkerProcess`` writes a config file into a directory of its own (``[projections] load``
and the snapshot tuning), starts ``python -m consumers.cli worker`` (exactly ``eventstore
worker``) on it with the stream, the database and the reactors, and logs the child's JSON
lines into ``worker.log`` beside it. ``await ready()`` returns once the child's query service
answers for ``serves`` (so it folds and serves); ``stop()`` sends SIGTERM (the
worker commits the batch in hand and exits 0), ``kill()`` sends SIGKILL (a crash: the
checkpoint in SQLite makes the next start resume without losing or doubling anything).

Why a child process and not a ``Worker`` task: a worker holds ``<db>.lock`` and signal
handlers, and a crash test must be able to kill it without killing the caller.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from consumers.client import ProjectionClient
from eventstore import ConfigError, EventStoreError, StreamSettings

__all__ = ["WorkerProcess"]

READY_TIMEOUT = 60.0  # seconds; a cold start on a busy 2-core machine takes a few


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class WorkerProcess:
    """One ``eventstore worker`` child: ``start``, ``await ready()``, ``stop`` or ``kill``.

    ``projections`` are names or ``module:object`` specs (the config's ``load`` list; the
    modules must be importable by the child, which inherits ``sys.path`` through
    ``PYTHONPATH``), ``reactors`` ``module:object`` specs; ``serves`` is the projection name
    whose query service ``ready`` asks (default: the first plain name). ``workdir`` holds the
    config, the log and, unless ``db`` says otherwise, ``<name>.db``.
    """

    def __init__(
        self,
        url: str,
        stream: StreamSettings,
        workdir: str | Path,
        *,
        projections: Sequence[str] = ("entities",),
        reactors: Sequence[str] = (),
        db: str | Path | None = None,
        snapshot_every: int = 100,
        name: str = "worker",
        serves: str | None = None,
    ) -> None:
        if not projections:
            raise ConfigError("a worker process needs at least one projection")
        plain = [p for p in projections if ":" not in p]
        if serves is None and not plain:
            raise ConfigError("name the projection whose service says it is ready: serves=")
        self.serves = serves if serves is not None else plain[0]
        self.url = url
        self.stream = stream
        self.workdir = Path(workdir)
        self.projections = list(projections)
        self.reactors = list(reactors)
        self.db = Path(db) if db is not None else self.workdir / f"{name}.db"
        self.config = self.workdir / f"{name}.toml"
        self.log = self.workdir / f"{name}.log"
        self.snapshot_every = snapshot_every
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> WorkerProcess:
        """Write the config and start the child (a second start after a stop or kill starts a
        new child on the same database: it resumes from the checkpoint)."""
        if self.running:
            raise EventStoreError(f"worker process {self.pid} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        load = ", ".join(_toml_string(p) for p in self.projections)
        self.config.write_text(
            f"[projections]\nload = [{load}]\nsnapshot_every = {int(self.snapshot_every)}\n"
        )
        command = [sys.executable, "-m", "consumers.cli", "worker", "--url", self.url,
                   "--stream", self.stream.name, "--prefix", self.stream.prefix,
                   "--db", str(self.db), "--config", str(self.config)]  # fmt: skip
        for r in self.reactors:
            command += ["--reactor", r]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTSTORE_", "NOTIFY_"))}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.setdefault("EVENTSTORE_LOG_LEVEL", "info")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the child serves ``serves``; ``EventStoreError`` (with the end
        of its log) if it exits or does not answer within ``timeout`` seconds. (Workers of
        one stream answer as one queue group: with another worker of the stream running,
        the answer may be that one's.)"""
        deadline = time.monotonic() + timeout
        async with await ProjectionClient.connect(self.url, stream=self.stream.name) as client:
            while True:
                if not self.running:
                    raise EventStoreError(f"worker exited before it was ready: {self.tail()}")
                try:
                    await client.status(projection=self.serves)
                    return
                except EventStoreError:  # no worker answers yet
                    if time.monotonic() > deadline:
                        raise EventStoreError(
                            f"worker not serving after {timeout:g}s: {self.tail()}"
                        ) from None
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL if it does not exit in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self._reap(timeout)

    async def kill(self) -> int:
        """SIGKILL: a crash, mid-batch or not."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return await self._reap(10.0)

    async def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        proc = self.proc
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
            await asyncio.sleep(0.05)
        return proc.returncode

    def tail(self, size: int = 2000) -> str:
        """The end of the child's log (for error messages)."""
        if not self.log.exists():
            return "(no log)"
        return " ".join(self.log.read_text(errors="replace")[-size:].split())

    async def __aenter__(self) -> WorkerProcess:
        if not self.running:
            self.start()
        await self.ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
