"""The least a client of one stream needs to be allowed, as nats-server permission blocks.

Three roles. A **producer** appends (and reads heads and histories for it): it publishes events
on the stream's subjects, keeps its clock reservations in the stream's clock bucket and holds
its name on the presence subjects ``_ES.PRODUCER.<stream>.>`` (answering requests there). A
**reader** (a projection worker, the query commands, ``tail``) creates ordered consumers and
uses direct gets, asks the query service (``_ES.Q.<stream>.>``, discovery on ``$SRV.>``) and
follows the change feed (``_ES.CHANGES.<stream>.>``), and may publish nothing to the log (it
connects with ``presence=False``). A **worker** is a reader that also serves: it answers the
query service's requests and ``$SRV`` discovery and publishes the change feed, which a reader
may not (so no reader can forge a notification).
Neither may delete, purge or edit the stream, its messages or its consumers' configuration
beyond its own ephemeral ones: nothing here grants ``$JS.API.STREAM.DELETE``, ``PURGE``,
``MSG.DELETE`` or ``UPDATE``.

The lists are what the test suite runs the library with (``tests/test_permissions.py``), not
a guess: dropping any one subject from them fails that test (``$JS.FC`` is the flow-control
reply a long read needs).
"""

from __future__ import annotations

from typing import Any

from eventstore.clockstore import bucket_name
from eventstore.streams import StreamSettings
from eventstore.subjects import RESERVED_TOKEN, rules_subject

__all__ = [
    "ROLES",
    "permissions",
    "producer_permissions",
    "reader_permissions",
    "worker_permissions",
]

# The serving subjects (consumers.protocol): query endpoints and the change feed.
_QUERY, _FEED = f"{RESERVED_TOKEN}.Q", f"{RESERVED_TOKEN}.CHANGES"

ROLES = ("producer", "reader", "worker")


def _reading(stream: str) -> list[str]:
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
    ]


def producer_permissions(settings: StreamSettings) -> dict[str, Any]:
    """A producer: append events, read what an append must know, reserve its clocks (in the
    stream's clock bucket, which the first producer creates)."""
    stream, kv = settings.name, bucket_name(settings.name)
    presence = f"{RESERVED_TOKEN}.PRODUCER.{stream}.>"
    publish = [
        *_reading(stream),
        f"{settings.prefix}.>",
        f"$JS.API.STREAM.INFO.KV_{kv}",
        f"$JS.API.STREAM.CREATE.KV_{kv}",
        f"$JS.API.STREAM.MSG.GET.KV_{kv}",
        f"$KV.{kv}.>",
        presence,
    ]
    # Presence (eventstore.presence): ask for the name, hold it, answer whoever asks.
    return {
        "publish": {"allow": publish},
        "subscribe": _subscribe(settings, presence),
        "allow_responses": True,
    }


def _subscribe(settings: StreamSettings, *extra: str) -> dict[str, list[str]]:
    """Replies, and the rules subject: every store follows the rules stored with the log."""
    return {"allow": ["_INBOX.>", rules_subject(settings.prefix), *extra]}


def reader_permissions(settings: StreamSettings) -> dict[str, Any]:
    """A reader: ordered consumers of its own and direct gets; no publishing to the log."""
    stream = settings.name
    publish = [
        *_reading(stream),
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.FC.{stream}.>",  # flow-control replies of the ordered consumers
        f"{_QUERY}.{stream}.>",  # requests to the query service
        "$SRV.>",  # finding it (PING, INFO, STATS)
    ]
    return {
        "publish": {"allow": publish},
        "subscribe": _subscribe(settings, f"{_FEED}.{stream}.>"),
    }


def worker_permissions(settings: StreamSettings) -> dict[str, Any]:
    """A projection worker: a reader that serves its projections (answers the query service's
    requests and discovery, publishes the change feed)."""
    block = reader_permissions(settings)
    stream = settings.name
    block["publish"]["allow"].append(f"{_FEED}.{stream}.>")
    block["subscribe"]["allow"] += [f"{_QUERY}.{stream}.>", "$SRV.>"]
    block["allow_responses"] = True
    return block


def permissions(role: str, settings: StreamSettings) -> dict[str, Any]:
    """The permission block of ``role`` (one of ``ROLES``) for ``settings``' stream."""
    if role == "producer":
        return producer_permissions(settings)
    if role == "reader":
        return reader_permissions(settings)
    if role == "worker":
        return worker_permissions(settings)
    raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
