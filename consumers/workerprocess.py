"""A projection worker in a child process, started and stopped from Python.

An application that runs on the product (the examples, a script, an integration test) needs
the real thing beside it: an ``eventstore worker`` process folding the log, serving queries and
the change feed, stopped with SIGTERM like systemd stops it. ``WorkerProcess`` writes the
worker's TOML config into a directory of the caller's, starts ``python -m
consumers.cli_worker`` (the same ``Worker`` as ``eventstore worker``) with its log in that
directory, and returns from ``start`` once the worker answers queries and has folded the log
as far as its head was when it answered, so what the caller appended before is visible. A
worker that dies first is a ``ProjectionError`` carrying the last line it wrote, never a hang.

    async with WorkerProcess(url, stream="TAI", directory=tmp, projections=["m:Docs"]) as w:
        ...                        # w.db: the SQLite file; w.kill(): SIGKILL, for crash demos
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from consumers.client import ProjectionClient
from eventstore import EventStoreError, ProjectionError, get_logger

__all__ = ["WorkerProcess"]

log = get_logger("consumers.workerprocess")

TomlValue = int | float | str | bool | Sequence[str]


def _toml(value: TomlValue) -> str:
    """A TOML literal of the small set of values a worker config holds (JSON spells them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    return json.dumps(list(value))


class WorkerProcess:
    """One ``eventstore worker`` child process (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        directory: Path,
        prefix: str = "events",
        name: str = "worker",
        projections: Sequence[str] = (),
        reactors: Sequence[str] = (),
        settings: Mapping[str, TomlValue] | None = None,
        metrics_port: int | None = None,
        pythonpath: Sequence[Path] = (),
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = prefix
        self.directory = Path(directory)
        self.name = name
        self.projections = list(projections)
        self.reactors = list(reactors)
        self.settings = dict(settings or {})
        self.metrics_port = metrics_port
        self.pythonpath = [str(p) for p in pythonpath]
        self.db = self.directory / f"{name}.db"
        self.config = self.directory / f"{name}.toml"
        self.log = self.directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "consumers.cli_worker", "--url", self.url,
                   "--stream", self.stream, "--prefix", self.prefix, "--db", str(self.db),
                   "--config", str(self.config)]  # fmt: skip
        for reactor in self.reactors:
            command += ["--reactor", reactor]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        return command

    def _write_config(self) -> None:
        load = ["entities", *self.projections]
        lines = ["[projections]", f"load = {_toml(load)}"]
        lines += [f"{key} = {_toml(value)}" for key, value in sorted(self.settings.items())]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _environment(self) -> dict[str, str]:
        """Ours minus what would point the child elsewhere (EVENTSTORE_*, systemd's socket)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EVENTSTORE_", "NOTIFY_", "WATCHDOG_"))
        }
        paths = [*self.pythonpath, *filter(None, [env.get("PYTHONPATH")])]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ProjectionError(f"worker {self.name} is not started")
        return self.process.pid

    def last_line(self) -> str:
        """The last line the worker wrote (its error, when it died)."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log.open("ab") as out:
            return subprocess.Popen(
                self._command(), env=self._environment(), stdout=out, stderr=subprocess.STDOUT
            )

    async def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start the process; return once it serves and has folded the log up to its head."""
        self.process = self._spawn()
        try:
            await asyncio.wait_for(self._until_caught_up(), timeout)
        except TimeoutError:
            self.kill()
            raise ProjectionError(
                f"worker {self.name} did not catch up within {timeout:.0f} s; its log: {self.log}"
            ) from None
        except BaseException:
            self.kill()
            raise
        log.info("worker started", worker=self.name, pid=self.process.pid)
        return self

    async def _until_caught_up(self) -> None:
        assert self.process is not None
        async with await ProjectionClient.connect(self.url, stream=self.stream) as client:
            while True:
                if self.process.poll() is not None:
                    raise ProjectionError(
                        f"worker {self.name} exited with {self.process.returncode} before "
                        f"serving: {self.last_line()}"
                    )
                try:
                    status = await client.status()
                except EventStoreError:  # not serving yet
                    await asyncio.sleep(0.05)
                    continue
                await client.wait_for(status.head, timeout=30.0)
                return

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (it commits the batch in hand), then its exit code; SIGKILL after
        ``timeout`` seconds."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time: killed", worker=self.name)
                self.kill()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is drained, the checkpoint in SQLite stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def __aenter__(self) -> WorkerProcess:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
