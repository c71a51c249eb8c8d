"""A projection worker in a child process, started and stopped from Python.

An application that runs on the product (the examples, a script, an integration test) needs
the real thing beside it: an ``eventstore worker`` process folding the log, serving queries and
the change feed, stopped with SIGTERM like systemd stops it. A child process and not a
``Worker`` task, because a worker holds ``<db>.lock`` and signal handlers, and a crash demo
must be able to SIGKILL it without killing the caller.

``WorkerProcess`` writes the worker's TOML config into a directory of the caller's (``[projections]
load`` and the ``settings``), starts ``python -m consumers.cli_worker`` (the same ``Worker`` as
``eventstore worker``) with its log in that directory, and returns from ``start`` once that
worker (its database, not another worker of the stream) answers queries and every projection
it runs has folded the log as far as its head was then: what the caller appended before is
visible. A worker that dies first is a ``ProjectionError`` carrying its last log line, never a
hang. A second ``start`` after ``stop`` or ``kill`` starts a new child on the same database: it
resumes from the checkpoint.

    async with WorkerProcess(url, stream="TAI", directory=tmp, projections=["entities"]) as w:
        ...                        # w.db: the SQLite file; w.kill(): SIGKILL, for crash demos
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from consumers.client import ProjectionClient
from eventstore import (
    ConfigError,
    EventStoreError,
    ProjectionError,
    StreamSettings,
    get_logger,
)

__all__ = ["WorkerProcess"]

log = get_logger("consumers.workerprocess")

READY_TIMEOUT = 60.0  # seconds; a cold start on a busy 2-core machine takes a few
POLL = 0.05  # seconds between two looks at a worker that does not answer yet
_KEY = re.compile(r"[A-Za-z0-9_-]+")

TomlValue = int | float | str | bool | Sequence[str]


def _toml(value: TomlValue) -> str:
    """A TOML literal of the small set of values a worker config holds (JSON spells them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    return json.dumps(list(value))


class WorkerProcess:
    """One ``eventstore worker`` child process (see the module doc).

    ``stream`` is a stream name (with ``prefix``, default ``events``) or the ``StreamSettings``
    of a store. ``projections`` is the config's ``load`` list, loaded as given: names
    (``entities``) or ``module:object`` specs importable by the child (it gets our
    ``sys.path``, ``pythonpath`` first). ``serves`` names the projection whose query service
    ``start`` asks first (default: the first plain name). ``settings`` are further keys of
    ``[projections]`` (``snapshot_every``, ...). ``directory`` holds ``<name>.toml``,
    ``<name>.log`` and, unless ``db`` says otherwise, ``<name>.db``.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str | StreamSettings,
        directory: str | Path,
        prefix: str | None = None,
        projections: Sequence[str] = ("entities",),
        reactors: Sequence[str] = (),
        settings: Mapping[str, TomlValue] | None = None,
        metrics_port: int | None = None,
        pythonpath: Sequence[str | Path] = (),
        db: str | Path | None = None,
        name: str = "worker",
        serves: str | None = None,
        creds: str | Path | None = None,
        tls_ca: str | Path | None = None,
    ) -> None:
        if isinstance(stream, StreamSettings):
            if prefix is not None and prefix != stream.prefix:
                raise ConfigError(f"prefix {prefix!r} is not the stream's ({stream.prefix!r})")
            self.stream = stream
        else:
            self.stream = StreamSettings(name=stream, prefix=prefix or "events")
        if not projections:
            raise ConfigError("a worker process needs at least one projection")
        plain = [p for p in projections if ":" not in p]
        if serves is None and not plain:
            raise ConfigError("name the projection whose service says it is ready: serves=")
        self.settings = dict(settings or {})
        bad = [k for k in self.settings if k == "load" or not _KEY.fullmatch(k)]
        if bad:
            raise ConfigError(f"settings: {bad[0]!r} is not a worker config key to set here")
        self.url = url
        self.directory = Path(directory)
        self.name = name
        self.projections = list(projections)
        self.reactors = list(reactors)
        self.serves = serves if serves is not None else plain[0]
        self.metrics_port = metrics_port
        self.pythonpath = [str(p) for p in pythonpath]
        self.db = Path(db) if db is not None else self.directory / f"{name}.db"
        self.config = self.directory / f"{name}.toml"
        self.log = self.directory / f"{name}.log"
        self.creds = str(creds) if creds is not None else None  # a secured server (issue 14)
        self.tls_ca = str(tls_ca) if tls_ca is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    # -- what it is -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's pid (the last one's after it exited); None before the first start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last child (-9: SIGKILL); None while it runs or never ran."""
        return self._process.poll() if self._process is not None else None

    def tail(self, size: int = 2000) -> str:
        """The end of the child's log on one line (for error messages)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " ".join(text[-size:].split()) or "(empty log)"

    def last_line(self) -> str:
        """The last line the worker wrote (its error, when it died)."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    # -- the child --------------------------------------------------------------------------

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "consumers.cli_worker", "--url", self.url,
                   "--stream", self.stream.name, "--prefix", self.stream.prefix,
                   "--db", str(self.db), "--config", str(self.config)]  # fmt: skip
        for reactor in self.reactors:
            command += ["--reactor", reactor]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        if self.creds is not None:
            command += ["--creds", self.creds]
        if self.tls_ca is not None:
            command += ["--tls-ca", self.tls_ca]
        return command

    def _write_config(self) -> None:
        lines = ["[projections]", f"load = {_toml(self.projections)}"]
        lines += [f"{key} = {_toml(value)}" for key, value in sorted(self.settings.items())]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _environment(self) -> dict[str, str]:
        """Ours minus what would point the child elsewhere (EVENTSTORE_*, systemd's socket),
        with our ``sys.path``: the child imports what we import."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EVENTSTORE_", "NOTIFY_", "WATCHDOG_"))
        }
        paths = dict.fromkeys([*self.pythonpath, *filter(None, sys.path)])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    async def start(self, timeout: float = READY_TIMEOUT) -> WorkerProcess:
        """Start the child; return once it serves and has folded the log up to its head.
        ``ProjectionError`` if it exits first (with its last log line), if a projection of
        it failed, or after ``timeout`` seconds; the child is killed then."""
        if self.running:
            raise ProjectionError(f"worker {self.name} is already running (pid {self.pid})")
        self._process = self._spawn()
        try:
            await asyncio.wait_for(self._until_caught_up(), timeout)
        except TimeoutError:
            self.kill()
            raise ProjectionError(
                f"worker {self.name} did not catch up within {timeout:g} s: {self.last_line()}"
                f" (its log: {self.log})"
            ) from None
        except BaseException:
            self.kill()
            raise
        log.info("worker started", worker=self.name, pid=self.pid)
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log.open("ab") as out:
            return subprocess.Popen(
                self._command(), env=self._environment(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _ours(self, db: str) -> bool:
        """Whether a status reply comes from this worker: the database it names is ours."""
        return Path(db).resolve() == self.db.resolve()

    def _alive(self) -> None:
        if not self.running:
            raise ProjectionError(
                f"worker {self.name} exited with {self.returncode} before serving: "
                f"{self.last_line()}"
            )

    async def _until_caught_up(self) -> None:
        """Ask until our worker (by its database: workers of one stream answer as one queue
        group) answers, then wait for each of its projections to reach the head it saw."""
        head: int | None = None
        async with await ProjectionClient.connect(
            self.url,
            stream=self.stream.name,
            projection=self.serves,
            creds=self.creds,
            tls_ca=self.tls_ca,
        ) as client:
            while True:
                self._alive()
                try:
                    status = await client.status()
                except EventStoreError:  # not serving yet
                    await asyncio.sleep(POLL)
                    continue
                if not self._ours(status.db):  # another worker of the stream
                    await asyncio.sleep(POLL)
                    continue
                if status.failed:
                    name, why = sorted(status.failed.items())[0]
                    raise ProjectionError(f"worker {self.name}: projection {name} failed: {why}")
                head = status.head if head is None else head
                behind = [p for p, seq in sorted(status.projections.items()) if seq < head]
                if not behind:
                    return
                with contextlib.suppress(EventStoreError):  # bounded: a death is seen
                    await client.wait_for(head, projection=behind[0], timeout=5.0)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the worker commits the batch in hand and exits 0), then its exit code;
        SIGKILL after ``timeout`` seconds. 0 if it never started."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time: killed", worker=self.name)
                self.kill()
        return process.wait()

    def kill(self) -> int:
        """SIGKILL, as a crash: nothing is drained, the checkpoint in SQLite stays. Returns
        the exit code (-9 if it was running; 0 if it never started)."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.kill()
        return process.wait()

    async def __aenter__(self) -> WorkerProcess:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
