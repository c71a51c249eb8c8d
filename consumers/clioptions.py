"""Global options of the cluster: ``--url`` as a list of servers, and ``--replicas``.

Kept beside ``consumers.cliutil`` (which adds them to every command) so that the option
plumbing of clustering lives in one place:

* ``nats_url``: one NATS server URL, or several separated by commas (a cluster's nodes, as
  ``eventstore cluster local`` prints them); each is checked, so a typo in the third URL is a
  usage error before anything connects, not a failover that never happens;
* ``replica_count`` and ``add_replicas_option``: ``--replicas`` / ``EVENTSTORE_REPLICAS``, the
  copies of the stream (and of its clock and lease buckets) that ``ensure`` creates, and the
  fewest it accepts on an existing stream.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlsplit

from eventstore import DEFAULT_URL

__all__ = ["add_replicas_option", "nats_url", "replica_count"]

_URL_SCHEMES = ("nats", "tls", "ws", "wss")
MAX_REPLICAS = 5  # JetStream's limit


def _shown(text: str, limit: int = 60) -> str:
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + "...'"


def _one_url(text: str) -> str:
    bad = argparse.ArgumentTypeError(f"{_shown(text)} is not a NATS server URL like {DEFAULT_URL}")
    value = text.strip()
    if not value or any(ch.isspace() for ch in value):
        raise bad
    invalid_port = argparse.ArgumentTypeError(
        f"{_shown(text)} has an invalid port: use a port 1-65535, like {DEFAULT_URL}"
    )
    try:
        parts = urlsplit(value if "://" in value else f"nats://{value}")
        port = parts.port
    except ValueError:
        raise invalid_port from None
    if parts.scheme not in _URL_SCHEMES or not parts.hostname:
        raise bad
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad
    if port is not None and not 1 <= port <= 65535:
        raise invalid_port
    return value


def nats_url(text: str) -> str:
    """argparse type: a NATS server URL, ``nats://host:port`` (tls, ws, wss; ``host:port``
    alone means nats://), with a port 1-65535 if one is given; or several such URLs separated
    by commas (the nodes of a cluster: nats-py fails over between them)."""
    if "," not in text:
        return _one_url(text)
    urls = [_one_url(part) for part in text.split(",")]
    schemes = {"ws" if u.startswith(("ws://", "wss://")) else "nats" for u in urls}
    if len(schemes) > 1:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} mixes websocket and plain NATS URLs; use one kind for all servers"
        )
    return ",".join(urls)


def replica_count(text: str) -> int:
    """argparse type: a stream replica count, 1 to 5."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {_shown(text)}") from None
    if not 1 <= value <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(
            f"must be 1 to {MAX_REPLICAS} (3 on a three-node cluster), got {value}"
        )
    return value


def add_replicas_option(group: Any, default: Any) -> None:
    """``--replicas`` on the global options ``group``; ``default`` maps the environment's
    value (or None) to the option's default (argparse.SUPPRESS on a sub-command)."""
    group.add_argument(
        "--replicas",
        default=default(os.environ.get("EVENTSTORE_REPLICAS") or "1"),
        type=replica_count,
        help="copies of the stream kept by a JetStream cluster: `ensure` creates the stream "
        "with this many and refuses one with fewer (env EVENTSTORE_REPLICAS, default 1)",
    )
