"""systemd's notify protocol for the worker (``Type=notify``), datagrams written by hand.

``Notifier`` sends one ``AF_UNIX``/``SOCK_DGRAM`` datagram per message to ``$NOTIFY_SOCKET`` (a
path, or ``@name`` for an abstract socket); without ``$NOTIFY_SOCKET`` it does nothing at all.
A failed send is logged once and never raised: the worker folds on whatever systemd thinks.

``supervise(runner, head=...)`` tells systemd how a running worker is doing:

* ``EXTEND_TIMEOUT_USEC=`` while the start-up catch-up runs and commits (a catch-up that stops
  committing stops extending, so the start timeout still catches a wedged start);
* ``READY=1`` once every projection has folded up to ``head``, the log's head when the worker
  started;
* ``STATUS=`` every few seconds: checkpoint, lag (head - checkpoint) and rate (events/s),
  and the projections that failed (``FAILED: name at seq N``);
* ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (only if set, and ``$WATCHDOG_PID`` is unset
  or this process), but only while the fold loop is healthy: a heartbeat is taken on every
  commit and on every tick at which the worker is idle (checkpoint == head); when the last one
  is older than ``$WATCHDOG_USEC`` (a commit that does not return, a log it cannot reach) the
  pings stop and systemd restarts the worker;
* ``STOPPING=1`` from ``Supervision.stopping()``, which the worker calls on SIGTERM before it
  drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

from eventstore import cancel_and_wait, get_logger
from projections import CommitInfo, Runner

__all__ = ["Notifier", "Supervision", "supervise", "watchdog_seconds"]

log = get_logger("consumers.notify")

STATUS_EVERY = 2.0  # seconds between STATUS= lines
EXTEND = 30.0  # seconds each EXTEND_TIMEOUT_USEC= grants; sent while a commit is this recent
HEAD_TIMEOUT = 5.0  # seconds one look at the log's head may take


class Notifier:
    """Sends notify messages to ``address`` (``$NOTIFY_SOCKET``'s value); ``None``: a no-op."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._target: bytes | None = None
        self._sock: socket.socket | None = None
        self._failed = False
        if self.address is not None:
            if self.address.startswith("@"):
                self._target = b"\0" + os.fsencode(self.address[1:])
            elif self.address.startswith("/"):
                self._target = os.fsencode(self.address)
            else:
                self._fail(ValueError("NOTIFY_SOCKET must be an absolute path or @name"))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether ``$NOTIFY_SOCKET`` was set (even if sending to it has failed since)."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram; ``False`` if nothing was sent."""
        if self._target is None:
            return False
        data = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full socket buffer drops a note, never waits
            self._sock.sendto(data, self._target)
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.warning(
                "systemd notify failed, the worker goes on without it (logged once)",
                notify_socket=self.address,
                error=f"{type(exc).__name__}: {exc}",
            )

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def watchdog_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, if it is set for this process (``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Supervision:
    """What a running worker tells systemd (see the module docstring)."""

    def __init__(
        self,
        notifier: Notifier,
        runner: Runner,
        *,
        head: int,
        watchdog: float | None = None,
        status_every: float = STATUS_EVERY,
    ) -> None:
        self.notifier = notifier
        self.runner = runner
        self.start_head = head
        self.watchdog = watchdog
        self.status_every = status_every
        self.tick = min(status_every, watchdog / 2) if watchdog else status_every
        self.ready = False
        self.beat = time.monotonic()  # the heartbeat: last commit, or last tick found idle
        self._task: asyncio.Task[None] | None = None
        self._rate_at = (self.beat, runner.checkpoint)

    def start(self) -> None:
        """Start the notes (nothing at all without ``$NOTIFY_SOCKET``)."""
        if not self.notifier.enabled:
            return
        self.runner.on_commit.append(self.committed)
        if not self._check_ready():
            self._note(self.start_head, extend=True)
        self._task = asyncio.create_task(self._run())

    def committed(self, info: CommitInfo) -> None:
        """``on_commit``: the fold loop made progress."""
        self.beat = time.monotonic()
        self._check_ready()

    def stopping(self) -> None:
        """SIGTERM: tell systemd the worker is draining, and stop the other notes."""
        if not self.notifier.enabled:
            return
        self._cancel()
        self.notifier.send(
            STOPPING=1,
            STATUS=f"stopping: committing the batch in hand (checkpoint {self.runner.checkpoint})",
        )

    async def aclose(self) -> None:
        task = self._cancel()
        if task is not None:
            await cancel_and_wait(task)
        with contextlib.suppress(ValueError):
            self.runner.on_commit.remove(self.committed)
        self.notifier.close()

    def _cancel(self) -> asyncio.Task[None] | None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    def _check_ready(self) -> bool:
        checkpoint = self.runner.checkpoint
        if not self.ready and checkpoint >= self.start_head:
            self.ready = True
            self.notifier.send(
                READY=1,
                STATUS=f"caught up with the log at checkpoint {checkpoint}, following it; "
                "serving queries and the change feed",
            )
            log.info("told systemd: ready", checkpoint=checkpoint)
        return self.ready

    async def _run(self) -> None:
        next_status = time.monotonic() + self.status_every
        while True:
            await asyncio.sleep(self.tick)
            head = await self._head()
            now = time.monotonic()
            if head is not None and self.runner.checkpoint >= head:
                self.beat = now  # idle and healthy
            if self.watchdog and now - self.beat < self.watchdog:  # progress or idle, lately
                self.notifier.send(WATCHDOG=1)
            status = now >= next_status
            if status:
                next_status = now + self.status_every
            if status or not self.ready:
                self._note(head, extend=not self.ready and now - self.beat < EXTEND)

    def _note(self, head: int | None, *, extend: bool) -> None:
        """A STATUS line (and an EXTEND_TIMEOUT_USEC while catching up and committing)."""
        now, checkpoint = time.monotonic(), self.runner.checkpoint
        then, before = self._rate_at
        rate = (checkpoint - before) / (now - then) if now > then else 0.0
        self._rate_at = (now, checkpoint)
        lag = "unknown (log unreachable)" if head is None else str(max(0, head - checkpoint))
        state = "following the log" if self.ready else f"catching up to {self.start_head}"
        text = f"{state}: checkpoint {checkpoint}, lag {lag}, {rate:.0f} events/s"
        if failed := self.runner.failures:
            text += f"; FAILED: {', '.join(f'{n} at seq {f.seq}' for n, f in failed.items())}"
        if extend:
            self.notifier.send(EXTEND_TIMEOUT_USEC=int(EXTEND * 1_000_000), STATUS=text)
        else:
            self.notifier.send(STATUS=text)

    async def _head(self) -> int | None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                return await self.runner.store.head()
        except Exception:  # an unreachable log: not healthy, no lag to report
            return None


@contextlib.asynccontextmanager
async def supervise(
    runner: Runner, *, head: int, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Supervision]:
    """Notes to systemd for ``runner`` while the block runs (a no-op without
    ``$NOTIFY_SOCKET``); ``head`` is the log's head at start (``READY=1`` once folded)."""
    supervision = Supervision(
        Notifier.from_environment(environ), runner, head=head, watchdog=watchdog_seconds(environ)
    )
    supervision.start()
    try:
        yield supervision
    finally:
        await supervision.aclose()


def _one_line(text: str) -> str:
    return " ".join(text.split())
