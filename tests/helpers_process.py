"""Stopping a process for real: ``freeze(pid)`` returns once every thread of it is stopped.

``kill(pid, SIGSTOP)`` returns as soon as the signal is queued. One thread takes it and then
stops the others, and on a busy machine the others go on for a while: a nats-server answered
requests up to 5-15 ms after its SIGSTOP here (200 tries, 2 cores, 3 busy loops), which once
made a CI run fail, and a signal sent in that window (the death signal of a parent that was
killed right after) is handled before the stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["freeze"]


def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and wait until all its threads are stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = set()
        for t in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                states.add((t / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states <= {"T", "t"}:
            return
        assert time.monotonic() < deadline, f"threads of {pid} not stopped: {states}"
        time.sleep(0.005)
