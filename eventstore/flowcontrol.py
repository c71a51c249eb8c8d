"""Flow control that holds: the server pushes an ordered consumer no further than we read.

A JetStream push consumer with flow control stops sending once a window of messages is in
flight, until the client answers the flow-control request that closes the window. nats-py
(2.16) answers it as soon as the message before it has been *received* when the subscription
has a callback (``_JSI.get_js_delivered`` returns ``Subscription.delivered``, counted on
receipt), so for callback subscriptions flow control never holds anything back: a reader
slower than the server buffers the log in the client's pending queue, up to the pending
limits, and its memory grows with the length of the log (an export of one million events
held 290k messages, 150 MB, behind a writer that paused for a second now and then).

``FlowControl.attach(sub)`` makes the answer wait until the message before the request has
been handed over: it has left the pending queue (nats-py's own rule for subscriptions without
a callback) and the reader's buffer holds it within its backlog (``held``: the messages past
the backlog, which ``eventstore.delivery`` puts there without waiting). ``answer()``, awaited
by the callback for each message and by the reader after each take, sends it at once then.
nats-py's own check, a task every 0.25 s that sees only its queue, is cancelled: it would
answer for messages our buffer still holds, and it idles the server once per window. What
is buffered stays within the backlog plus one window, however long the log. (A consumer
stalled that way still gets one window per idle heartbeat: nats-py answers the heartbeat's
stall notice itself.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FlowControl"]


class FlowControl:
    """The flow control of one ordered push subscription (see the module)."""

    def __init__(self, held: Callable[[], int] = lambda: 0) -> None:
        self._held = held  # messages received and not yet handed over, besides nats-py's queue
        self._jsi: Any = None
        self._queue: Any = None
        self._nc: Any = None

    def attach(self, sub: Any) -> None:
        """Hold ``sub``'s flow-control answers until its callback has the messages before
        them; a subscription without JetStream state is left as it is."""
        inner = getattr(sub, "_sub", sub)  # nats-py's PushSubscription wraps the Subscription
        jsi = getattr(inner, "_jsi", None)
        if jsi is None or not hasattr(jsi, "get_js_delivered"):
            return
        self._jsi, self._queue, self._nc = jsi, inner._pending_queue, inner._conn
        jsi.get_js_delivered = self.delivered
        task = getattr(jsi, "_fctask", None)
        if task is not None:  # its own check every 0.25 s sees only nats-py's queue
            task.cancel()
            jsi._fctask = None

    def delivered(self) -> int:
        """Messages handed over so far: received, minus those still in nats-py's queue and
        those the reader's buffer holds past its backlog."""
        return int(self._jsi._fciseq) - int(self._queue.qsize()) - self._held()

    def pending(self) -> bool:
        """Whether a flow-control request is waiting for its answer (``answer`` may send it)."""
        jsi = self._jsi
        return jsi is not None and bool(jsi._fcr)

    async def answer(self) -> None:
        """Send the pending flow-control answer once its window has been handed over."""
        jsi = self._jsi
        if jsi is None or not jsi._fcr or self.delivered() < jsi._fcd:
            return
        reply, jsi._fcr, jsi._fcd = jsi._fcr, None, 0
        await self._nc.publish(reply)
