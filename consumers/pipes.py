"""A reader that goes away: ``eventstore tail | head -1``.

A command writing to a pipe whose reader has exited learns it only on its next write
(``BrokenPipeError``, which ``cliutil.run_command`` turns into a quiet exit 0). A follower
with nothing new to print would never write again and so never end: ``reader_gone`` watches
stdout and sets the command's stop event as soon as the pipe's reading end is closed.

Linux reports a pipe whose readers are all gone as an error condition on its writing end,
which the event loop's selector hands to a reader callback on that descriptor. Only pipes are
watched: a terminal's descriptor is readable when the user types, a file never closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import Coroutine, Iterator
from typing import Any

from eventstore import cancel_and_wait

__all__ = ["reader_gone", "silence_stdout", "until_stopped"]


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered for a reader that went away
    cannot raise again when the interpreter flushes it on exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _stdout_pipe() -> int | None:
    try:
        fd = sys.stdout.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (OSError, ValueError):  # no real stdout (closed, or replaced by an object)
        return None


@contextlib.contextmanager
def reader_gone(stop: asyncio.Event) -> Iterator[None]:
    """Within a running event loop: set ``stop`` when stdout is a pipe and its reader has
    closed it (stdout is then silenced, see ``silence_stdout``)."""
    fd = _stdout_pipe()
    if fd is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def closed() -> None:
        loop.remove_reader(fd)
        silence_stdout()
        stop.set()

    try:
        loop.add_reader(fd, closed)
    except (OSError, ValueError, NotImplementedError):  # a loop or descriptor that cannot
        yield
        return
    try:
        yield
    finally:
        loop.remove_reader(fd)


async def until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run ``work`` (a follower: ``tail``, ``watch``) until it ends or ``stop`` is set (a
    signal, or ``reader_gone``); its own error, if it failed, is raised here."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    await cancel_and_wait(task)
    if not task.cancelled():
        task.result()  # raise what stopped it, if it failed
