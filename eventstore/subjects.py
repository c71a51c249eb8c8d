"""Aggregate ids in NATS subjects: reversible escaping, so any id maps to exactly one token.

A subject token cannot hold ``.`` (separator), ``*`` / ``>`` (wildcards), whitespace or control
characters. Those bytes, and the escape character ``%`` itself, are written as ``%XX`` (upper
case hex of each UTF-8 byte); everything else, non-ASCII letters included, stays readable.
Decoding accepts only the canonical form, so two different tokens never decode to one id.

A prefix is one or more such tokens, but never starting with ``_ES``: ``_ES.>`` carries what
must stay outside every stream (producer presence, ``eventstore.presence``).
"""

from __future__ import annotations

import re

from eventstore.errors import InvalidEvent
from eventstore.events import RULES_ID, RULES_TYPE, validate_aggregate_type

__all__ = [
    "DEFAULT_PREFIX",
    "RESERVED_TOKEN",
    "aggregate_subject",
    "decode_id",
    "encode_id",
    "filter_subject",
    "parse_subject",
    "rules_subject",
    "validate_prefix",
]

DEFAULT_PREFIX = "events"
RESERVED_TOKEN = "_ES"  # first token of the subjects kept outside every stream
MAX_ID_BYTES = 256
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_ESCAPE_RE = re.compile(r"%([0-9A-F]{2})")


# Any character ``_needs_escape`` says yes to (``\s`` is exactly ``str.isspace``): one C scan
# tells that an id needs no escaping at all, the common case.
_NEEDS_ESCAPE_RE = re.compile(r"[.*>%\s\x00-\x1f\x7f-\x9f\u200b\u200c\u200d\u2028\u2029\ufeff]")


def _needs_escape(ch: str) -> bool:
    return (
        ch in ".*>%"
        or ch.isspace()
        or ord(ch) < 0x20
        or 0x7F <= ord(ch) <= 0x9F
        or (ch in "\u200b\u200c\u200d\u2028\u2029\ufeff")
    )


def encode_id(aggregate_id: str) -> str:
    """Encode an aggregate id (1-256 UTF-8 bytes) as one subject token."""
    if not isinstance(aggregate_id, str):
        raise InvalidEvent(f"aggregate id must be a string, got {type(aggregate_id).__name__}")
    if (
        aggregate_id.isascii()  # then its UTF-8 bytes are its characters
        and 0 < len(aggregate_id) <= MAX_ID_BYTES
        and _NEEDS_ESCAPE_RE.search(aggregate_id) is None
    ):
        return aggregate_id
    try:
        raw = aggregate_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent(f"aggregate id {aggregate_id!r} is not valid UTF-8: {exc}") from exc
    if not raw:
        raise InvalidEvent("aggregate id must not be empty")
    if len(raw) > MAX_ID_BYTES:
        raise InvalidEvent(f"aggregate id is {len(raw)} UTF-8 bytes; the limit is {MAX_ID_BYTES}")
    out: list[str] = []
    for ch in aggregate_id:
        if _needs_escape(ch):
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def decode_id(token: str) -> str:
    """Invert :func:`encode_id`; a token that is not a canonical encoding is an error."""

    def unescape(text: str) -> str:
        data = bytearray()
        pos = 0
        for m in _ESCAPE_RE.finditer(text):
            data += text[pos : m.start()].encode("utf-8")
            data.append(int(m.group(1), 16))
            pos = m.end()
        data += text[pos:].encode("utf-8")
        return data.decode("utf-8")

    try:
        value = unescape(token)
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"subject token {token!r} does not decode to UTF-8") from exc
    if not token or encode_id(value) != token:
        raise InvalidEvent(f"subject token {token!r} is not a canonical aggregate id encoding")
    return value


def validate_prefix(prefix: str) -> str:
    if not _PREFIX_RE.fullmatch(prefix):
        raise InvalidEvent(
            f"subject prefix {prefix!r} is invalid: use dot-separated tokens of "
            "letters, digits, _ and -"
        )
    if prefix.split(".")[0] == RESERVED_TOKEN:
        raise InvalidEvent(
            f"subject prefix {prefix!r} is reserved: {RESERVED_TOKEN}.> carries producer "
            "presence, which a stream must never capture; choose another prefix, e.g. events"
        )
    return prefix


def aggregate_subject(prefix: str, aggregate_type: str, aggregate_id: str) -> str:
    """``<prefix>.<aggregate_type>.<encoded id>`` (the reserved rules aggregate included:
    reading it is allowed, appending to it is refused by the store)."""
    if aggregate_type == RULES_TYPE and aggregate_id == RULES_ID:
        return rules_subject(prefix)
    validate_aggregate_type(aggregate_type)
    return f"{prefix}.{aggregate_type}.{encode_id(aggregate_id)}"


def filter_subject(prefix: str, aggregate_type: str | None = None) -> str:
    """The wildcard subject of one aggregate type, or of the whole log."""
    if aggregate_type is None:
        return f"{prefix}.>"
    validate_aggregate_type(aggregate_type)
    return f"{prefix}.{aggregate_type}.*"


def parse_subject(prefix: str, subject: str) -> tuple[str, str]:
    """Return ``(aggregate_type, aggregate_id)`` of an event subject under ``prefix``."""
    head = prefix + "."
    if not subject.startswith(head):
        raise InvalidEvent(f"subject {subject!r} is not under prefix {prefix!r}")
    rest = subject[len(head) :].split(".")
    if len(rest) != 2:
        raise InvalidEvent(f"subject {subject!r} is not <prefix>.<type>.<id>")
    if rest == [RULES_TYPE, RULES_ID]:
        return RULES_TYPE, RULES_ID
    return validate_aggregate_type(rest[0]), decode_id(rest[1])


def rules_subject(prefix: str) -> str:
    """``<prefix>._rules.current``: the subject of the rules stored with the log."""
    return f"{prefix}.{RULES_TYPE}.{RULES_ID}"
