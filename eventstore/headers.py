"""Parsing NATS message headers at the cost of a dict lookup per header name.

Every event in the log carries four headers (``Nats-Msg-Id``, the expected subject
sequence and the batch id and sequence), and nats-py parses them for every message it
delivers. Its parser checks each header name for whitespace one character at a time in a
Python generator: about 4.5 µs per event message, the largest single cost of a projection
catching up. Header names repeat from message to message, so this parser checks each
distinct name once and remembers the verdict; it returns exactly what nats-py's
``Client._parse_header_lines`` returns for any input (a property test holds it to that).

``install`` puts it on one client instance (the store's own connection), never on the class:
other clients in the same process keep nats-py's behaviour.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["install", "parse_header_lines"]

log = structlog.get_logger("eventstore.headers")

_CRLF = b"\r\n"
_MAX_NAMES = 4096  # distinct names remembered; beyond that each is checked every time

_names: dict[bytes, str | None] = {}


def _name(raw: bytes) -> str | None:
    """The header name as nats-py accepts it, or None when nats-py would skip the line."""
    try:
        key = raw.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    if any(c.isspace() for c in key):
        return None
    return key


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines (CRLF separated) to a dict, as nats-py parses them."""
    out: dict[str, str] = {}
    names = _names
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = names[name]
        except KeyError:
            key = _name(name)
            if len(names) < _MAX_NAMES:
                names[name] = key
        if key is None:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def install(client: Any) -> bool:
    """Use ``parse_header_lines`` on this nats-py client; False if its nats-py has no such
    hook (a newer release that parses differently keeps its own parser)."""
    original = getattr(type(client), "_parse_header_lines", None)
    if original is None or not callable(original):
        log.debug("nats-py has no _parse_header_lines: keeping its header parser")
        return False
    client._parse_header_lines = parse_header_lines
    return True
