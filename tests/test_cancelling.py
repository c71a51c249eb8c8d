"""``cancel_and_wait`` ends a task whose first cancellation was lost, as Python 3.11's
``asyncio.wait_for`` loses one when its inner future completes in the same loop iteration
(the SIGTERM hang of the worker: its log reading went on after the cancel)."""

from __future__ import annotations

import asyncio
import sys
import time

from eventstore import cancel_and_wait


async def test_a_cancel_lost_inside_wait_for_is_sent_again() -> None:
    """The race itself: the awaited future completes, then the task is cancelled before it
    runs. On 3.11 ``wait_for`` returns the result and the task runs on (here: waits
    forever, as a reading follows an idle log); ``cancel_and_wait`` still ends it."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()
    passed = asyncio.Event()

    async def reading() -> None:
        await asyncio.wait_for(answer, 10)  # a request of nats-py's, being answered
        passed.set()
        await asyncio.Event().wait()  # following a quiet log: nothing ever comes

    task = asyncio.create_task(reading())
    await asyncio.sleep(0)  # it waits inside wait_for
    answer.set_result(1)
    started = time.monotonic()
    await cancel_and_wait(task, retry=0.05)
    assert task.done() and task.cancelled()
    assert time.monotonic() - started < 2.0
    if sys.version_info < (3, 12):  # the first cancel was lost: the retry ended it
        assert passed.is_set()


async def test_a_task_that_ignores_one_cancel_is_not_waited_for_forever() -> None:
    """Whatever swallowed the cancellation, a plain cancel leaves the task running, and
    ``cancel_and_wait`` ends it after one retry period."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed += 1
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done() and swallowed == 1  # one cancel was not enough
    await cancel_and_wait(task, retry=0.05)
    assert task.cancelled()


async def test_clean_up_gets_its_grace_and_outcomes_are_left_on_the_task() -> None:
    """A task that ends by itself within the grace is cancelled once (its ``finally`` runs
    undisturbed); a failure or result stays readable on the task, never raised here."""
    cleaned: list[str] = []

    async def closes_slowly() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # an UNSUB, a file closed
            cleaned.append("done")

    task = asyncio.create_task(closes_slowly())
    await asyncio.sleep(0)
    await cancel_and_wait(task, retry=1.0)
    assert task.cancelled() and cleaned == ["done"]

    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(failed)
    assert isinstance(failed.exception(), ValueError)


async def test_the_callers_own_cancellation_propagates() -> None:
    """Cancelling the one who waits is not swallowed (``suppress(CancelledError)`` around an
    ``await task`` would swallow it)."""

    quit = False

    async def forever() -> None:
        while not quit:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # never ends

    task = asyncio.create_task(forever())
    waiter = asyncio.create_task(cancel_and_wait(task, retry=0.05))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    waiter.cancel()
    await asyncio.wait({waiter}, timeout=1.0)
    assert waiter.cancelled()
    assert not task.done()
    quit = True
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()
