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

Appending (producers, and workers for their reactors) also takes leases: the stream's lease
bucket ``KV_LEASES_<stream>`` (``eventstore.leases``). A producer may be limited to a subject
pattern (``producer_permissions(settings, "task.*")``: events on ``<prefix>.task.*`` only). No
role may publish on the reserved rules aggregate ``<prefix>._rules.>``: only an administrator
(a user without restrictions, ``admin`` of ``eventstore auth init``) changes the rules.

The lists are what the test suite runs the library with (``tests/test_permissions.py``), not
a guess: dropping any one subject from them fails that test (``$JS.FC`` is the flow-control
reply a long read needs).
"""

from __future__ import annotations

from typing import Any

from eventstore.clockstore import bucket_name
from eventstore.errors import ConfigError
from eventstore.events import RULES_TYPE
from eventstore.leases import lease_bucket
from eventstore.streams import StreamSettings
from eventstore.subjects import RESERVED_TOKEN, rules_subject

__all__ = [
    "ROLES",
    "event_pattern",
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


def event_pattern(pattern: str = ">") -> str:
    """A producer's subject pattern after the prefix, checked: ``>`` (everything), ``TYPE``
    (every id of that type: ``TYPE.*``) or ``TYPE.ID``, each token a NATS token or wildcard;
    ``ConfigError`` otherwise. ``TYPE.>`` and ``*.ID`` work too."""
    text = pattern.strip()
    tokens = text.split(".")
    bad = (
        not text
        or len(tokens) > 2
        or any(not t or any(c.isspace() for c in t) for t in tokens)
        or any(("*" in t or ">" in t) and t not in ("*", ">") for t in tokens)
        or ">" in tokens[:-1]
        or tokens[0] == RULES_TYPE
    )
    if bad:
        raise ConfigError(
            f"producer pattern {pattern!r} is not TYPE or TYPE.ID (NATS wildcards * and > "
            "allowed, e.g. task, task.*, task.t-1, >); the rules aggregate is reserved"
        )
    return text if len(tokens) == 2 or text == ">" else f"{text}.*"


def _appending(settings: StreamSettings, pattern: str) -> tuple[list[str], list[str]]:
    """What an append publishes (events on the pattern, clock reservations, leases) and what
    it never may (the rules aggregate)."""
    kv, leases = bucket_name(settings.name), lease_bucket(settings.name)
    allow = [f"{settings.prefix}.{event_pattern(pattern)}"]
    for bucket in (kv, leases):  # clocks, then leases: created by the first who needs them
        allow += [
            f"$JS.API.STREAM.INFO.KV_{bucket}",
            f"$JS.API.STREAM.CREATE.KV_{bucket}",
            f"$JS.API.STREAM.MSG.GET.KV_{bucket}",
            f"$KV.{bucket}.>",
        ]
    return allow, [f"{settings.prefix}.{RULES_TYPE}.>"]


def producer_permissions(settings: StreamSettings, pattern: str = ">") -> dict[str, Any]:
    """A producer: append events (on ``<prefix>.<pattern>`` only), read what an append must
    know, reserve its clocks and take leases (in the stream's buckets, which the first
    producer creates); never the rules."""
    stream = settings.name
    presence = f"{RESERVED_TOKEN}.PRODUCER.{stream}.>"
    allow, deny = _appending(settings, pattern)
    publish = [*_reading(stream), *allow, presence]
    # Presence (eventstore.presence): ask for the name, hold it, answer whoever asks.
    return {
        "publish": {"allow": publish, "deny": deny},
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
    requests and discovery, publishes the change feed) and runs reactors (which append under
    a lease: events, clocks and leases as a producer has them, never the rules)."""
    block = reader_permissions(settings)
    stream = settings.name
    allow, deny = _appending(settings, ">")
    block["publish"]["allow"] += [f"{_FEED}.{stream}.>", *allow]
    block["publish"]["deny"] = deny
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
