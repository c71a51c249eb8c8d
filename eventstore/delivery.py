"""Direct delivery: an ordered consumer's data messages go from nats-py's protocol parser
straight to the buffer of the reader that takes them.

nats-py hands every message of a subscription through five steps before its callback sees
it: the headers are parsed into a dict, a ``Msg`` object is built, the reply subject is split
to check the ordered consumer's sequence, the message is queued, and the subscription's task
awaits the callback with it. For a projection catching up that is most of the client's time
per event (a raw drain through nats-py is about 20 µs an event on these machines). A reader
of the log needs none of the ``Msg`` object: it wants the stream sequence, the subject, the
data, the recorded time and the headers.

``install_delivery(client)`` wraps the client instance's ``_process_msg`` (never the class:
other clients in the process keep nats-py's behaviour). A subscription given a sink with
``deliver(sub, sink)`` has each of its messages offered to the sink first: the sink takes a
plain data message whose consumer sequence is the one expected, keeps nats-py's ordered
consumer bookkeeping exactly as nats-py would (expected sequences, activity, flow-control
count, last reply), and returns True. Anything else (a status message: heartbeats, flow
control; a sequence gap, which makes nats-py reset the consumer; a reply subject of another
form; a subject that is not UTF-8) the sink declines and nats-py processes it the usual way,
ending in the subscription's callback. So nats-py's own rules stay in charge of everything but
the common message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

__all__ = ["Sink", "deliver", "install_delivery"]

log = structlog.get_logger(__name__)

# (subject, reply, data, raw headers) -> taken; raw headers are nats-py's bytes (None if none)
Sink = Callable[[bytes, bytes, bytes, "bytes | None"], bool]

_SINKS = "_eventstore_sinks"


def install_delivery(client: Any) -> bool:
    """Offer the data messages of subscriptions given a sink (``deliver``) to that sink first.

    False, and nothing changed, if this nats-py has no such hook."""
    process: Callable[..., Awaitable[None]] | None = getattr(client, "_process_msg", None)
    if process is None or not isinstance(getattr(client, "_subs", None), dict):
        log.debug("nats-py has no _process_msg: every message goes through nats-py")
        return False
    if getattr(client, _SINKS, None) is not None:
        return True
    sinks: dict[Any, Sink] = {}  # by nats-py's Subscription object (hashed by identity)
    setattr(client, _SINKS, sinks)
    stats = client.stats

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        sub = client._subs.get(sid)
        if sub is not None:
            sink = sinks.get(sub)
            if (
                sink is not None
                and (headers is None or headers[8:9] != b" ")  # b"NATS/1.0 100": a status
                and sink(subject, reply, data, headers)
            ):
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(data)
                sub._received += 1
                return
        await process(sid, subject, reply, data, headers)

    client._process_msg = process_msg
    return True


def deliver(sub: Any, sink: Sink | None) -> bool:
    """Give nats-py subscription ``sub`` a sink (None: take it away again). The subscription
    object is nats-py's own, which an ordered consumer keeps across its resets (only the sid
    changes). False if its client has no direct delivery installed."""
    inner = getattr(sub, "_sub", sub)  # nats-py's PushSubscription wraps the Subscription
    sinks: dict[Any, Sink] | None = getattr(getattr(inner, "_conn", None), _SINKS, None)
    if sinks is None:
        return False
    if sink is None:
        sinks.pop(inner, None)
    else:
        sinks[inner] = sink
    return True
