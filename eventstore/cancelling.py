"""Stopping a background task for certain: cancel it, and cancel it again while it runs on.

On Python 3.11 one ``task.cancel()`` can be lost. ``asyncio.wait_for`` (nats-py's requests
and subscriptions wait through it) returns the inner result and drops the cancellation when
the inner future completes in the same loop iteration as the cancel (fixed in 3.12, gh-86296).
A reading of the log cancelled while its ``store.head()`` request was being answered then
went on following the log, and the worker waiting for it never exited after SIGTERM.

``cancel_and_wait`` cancels, waits a grace period for the task to end (its ``finally``
blocks run undisturbed, closing subscriptions and files), and cancels again if it is still
running, until it ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CANCEL_RETRY", "cancel_and_wait"]

# Seconds a cancelled task gets to end before it is cancelled again: its clean-up (an UNSUB,
# closing a database) takes milliseconds; a lost cancellation costs this much once.
CANCEL_RETRY = 0.5


async def cancel_and_wait(*tasks: asyncio.Future[Any], retry: float = CANCEL_RETRY) -> None:
    """Cancel ``tasks`` and return once every one has ended (cancelled, failed or finished).

    Their outcomes are retrieved and dropped (a caller that wants one reads its task
    afterwards). If the caller itself is cancelled meanwhile, that cancellation propagates at
    once."""
    running = {t for t in tasks if not t.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=retry)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at collection
