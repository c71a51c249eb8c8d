"""Parsing NATS message headers at the cost of a dict lookup per header name.

Every event in the log carries four headers (``Nats-Msg-Id``, the expected subject
sequence and the batch id and sequence), and nats-py parses them for every message it
delivers. Its parser checks each header name for whitespace one character at a time in a
Python generator: about 4.5 µs per event message, the largest single cost of a projection
catching up. Header names repeat from message to message, so this parser checks each
distinct name once and remembers the verdict; it returns exactly what nats-py's
``Client._parse_header_lines`` returns for any input (a property test holds it to that).

``eventstore.jetstream.install_parsers`` puts it on one client instance (the store's own
connection), never on the class: other clients in the same process keep nats-py's behaviour.
It also keeps that client alive
through a message whose subject is not UTF-8 (any client writing the NATS protocol by hand
can publish one, and JetStream stores it): nats-py's own decoding raises inside its read
loop, the message is never delivered and a reader stops at it for good; here its subject
arrives with the bytes escaped and `` (not UTF-8)`` appended, a string no NATS subject can be
(subjects hold no spaces), so it never names an aggregate and is quarantined.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

__all__ = ["HeaderBlock", "parse_header_lines", "printable_subject"]


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


def printable_subject(raw: bytes) -> bytes:
    """A subject nats-py can decode: ``raw`` itself when it is UTF-8, else its bytes escaped
    (``\\xff``) with `` (not UTF-8)`` appended."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return (raw.decode("utf-8", "backslashreplace") + " (not UTF-8)").encode()
    return raw


class HeaderBlock(Mapping[str, str]):
    """A message's headers kept as the bytes that came off the wire (after nats-py's
    ``NATS/1.0`` line) and parsed on first use: a projection catching up reads no header of
    its events, and parsing them was a tenth of its time per event."""

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._parsed: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = parse_header_lines(self._raw)
        return parsed

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"HeaderBlock({self._dict()!r})"
