"""What JSON carries: the values an event's ``data`` and ``metadata`` may hold, checked before
anything is written, and the wire limits every reader applies to a body (integers that fit
64 bits, at most ``MAX_NESTING`` nested objects and arrays, decided before decoding).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

from eventstore.errors import InvalidEvent
from eventstore.validate import MAX_INT

__all__ = [
    "MAX_INT",
    "MAX_NESTING",
    "TOO_DEEP",
    "check_json",
    "is_utf8",
    "nesting_exceeds",
    "show",
    "type_name",
]

# Wire limits: every integer of the envelope fits SQLite's INTEGER (and any 64-bit JSON
# reader), and a body nests at most MAX_NESTING objects/arrays, decided before decoding (the
# decoders' own recursion limit depends on the caller's stack depth, so it would not give
# every reader the same answer). A body past either limit is not an event. MAX_INT is
# eventstore.validate's, the bound every layer holds integers to.
MAX_NESTING = 256
TOO_DEEP = f"nested deeper than {MAX_NESTING} levels of objects and arrays"
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_STEP = tuple(1 if c in b"[{" else -1 for c in range(256))


def nesting_exceeds(body: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether a JSON text nests objects and arrays deeper than ``limit`` (brackets inside
    strings do not count). Linear in the body, and two ``count`` calls for most bodies.

    A text shorter than ``2 * limit + 2`` bytes is never too deep: valid JSON that short
    cannot nest deeper (each level takes two brackets), and invalid JSON is refused by the
    decoder anyway, however deep it looks."""
    if len(body) < 2 * limit + 2 or body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def type_name(value: object) -> str:
    return type(value).__name__


# -- what JSON carries ---------------------------------------------------------------------------

_MIN_INT = -(2**63)
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HINTS = {
    "bytes": "encode it into a string (e.g. base64)",
    "bytearray": "encode it into a string (e.g. base64)",
    "memoryview": "encode it into a string (e.g. base64)",
    "datetime": "pass an RFC 3339 string (value.isoformat())",
    "date": "pass an ISO 8601 string (value.isoformat())",
    "time": "pass an ISO 8601 string (value.isoformat())",
    "timedelta": "pass a number of seconds or an ISO 8601 duration string",
    "Decimal": "pass a string (exact) or a float",
    "set": "pass a list (sorted, so that the event is the same every time)",
    "frozenset": "pass a list (sorted, so that the event is the same every time)",
    "tuple": "pass a list (it is read back as one)",
    "UUID": "pass str(value)",
}


class _NotJson(Exception):
    """A value JSON cannot carry; ``path`` is filled in on the way out (innermost first)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str | int] = []


def is_utf8(text: str) -> bool:
    """Whether a str can be written as UTF-8 (no lone surrogates); O(1) for ASCII."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def show(value: object) -> str:
    """A short, safe description of a value for an error message."""
    if type(value) in (str, int, float, bool) or value is None:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return type_name(value)


def _check(value: object, depth: int) -> None:
    t = type(value)
    if t is str:
        if not is_utf8(value):  # type: ignore[arg-type]
            raise _NotJson("string is not valid UTF-8 (it holds a lone surrogate)")
    elif t is int:
        if not _MIN_INT <= value <= MAX_INT:  # type: ignore[operator]
            raise _NotJson(
                f"{value} is outside the 64-bit integer range that JSON readers accept "
                "(-2**63 to 2**63-1); pass it as a string"
            )
    elif t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            name = "NaN" if value != value else ("inf" if value > 0 else "-inf")  # type: ignore[operator]
            raise _NotJson(
                f"{name} is not JSON (JSON has no NaN or infinity); pass null or a string"
            )
    elif value is None or t is bool:
        pass
    elif isinstance(value, dict):
        if depth >= MAX_NESTING - 1:
            raise _NotJson(f"nested deeper than {MAX_NESTING - 1} levels")
        for k, v in dict.items(value):
            if type(k) is not str:
                raise _NotJson(
                    f"key {show(k)} ({type_name(k)}) is not a string; JSON object keys are strings"
                )
            if not is_utf8(k):
                raise _NotJson(f"key {k!r} is not valid UTF-8 (it holds a lone surrogate)")
            try:
                _check(v, depth + 1)
            except _NotJson as exc:
                exc.path.append(k)
                raise
    elif isinstance(value, list):
        if depth >= MAX_NESTING - 1:
            raise _NotJson(f"nested deeper than {MAX_NESTING - 1} levels")
        for i, v in enumerate(list.__iter__(value)):
            try:
                _check(v, depth + 1)
            except _NotJson as exc:
                exc.path.append(i)
                raise
    else:
        name = type_name(value)
        hint = _HINTS.get(name, "use dict, list, str, int, float, bool or None")
        raise _NotJson(f"{name} is not JSON; {hint}")


def _ok_dict(d: dict[Any, Any], depth: int) -> bool:
    """The fast check of ``_check`` (exact builtin types only, no path): True if all is JSON."""
    if depth >= MAX_NESTING - 1:
        return False
    for k, v in d.items():
        if type(k) is not str or not (k.isascii() or is_utf8(k)):
            return False
        t = type(v)
        if t is str:
            if not (v.isascii() or is_utf8(v)):
                return False
        elif t is int:
            if not _MIN_INT <= v <= MAX_INT:
                return False
        elif t is float:
            if v - v != 0.0:  # NaN or an infinity
                return False
        elif t is dict:
            if not _ok_dict(v, depth + 1):
                return False
        elif t is list:
            if not _ok_list(v, depth + 1):
                return False
        elif v is not None and t is not bool:
            return False
    return True


def _ok_list(items: list[Any], depth: int) -> bool:
    if depth >= MAX_NESTING - 1:
        return False
    for v in items:
        t = type(v)
        if t is str:
            if not (v.isascii() or is_utf8(v)):
                return False
        elif t is int:
            if not _MIN_INT <= v <= MAX_INT:
                return False
        elif t is float:
            if v - v != 0.0:
                return False
        elif t is dict:
            if not _ok_dict(v, depth + 1):
                return False
        elif t is list:
            if not _ok_list(v, depth + 1):
                return False
        elif v is not None and t is not bool:
            return False
    return True


def check_json(value: object, root: str) -> None:
    """Check that ``value`` is a JSON object that encodes and decodes to exactly itself.

    One fast walk (a second, slower one only to name what is wrong); raises ``InvalidEvent``
    naming the first offending path, e.g. ``data.score: NaN is not JSON ...`` (see
    ``NewEvent`` for the rule).
    """
    if type(value) is dict:
        if not value or _ok_dict(value, 0):
            return
    elif not isinstance(value, dict):
        raise InvalidEvent(f"event {root} must be a JSON object (a dict), got {type_name(value)}")
    try:
        _check(value, 0)
    except _NotJson as exc:
        path = root
        for part in reversed(exc.path):
            if type(part) is int:
                path += f"[{part}]"
            elif _KEY_RE.fullmatch(part):  # type: ignore[arg-type]
                path += f".{part}"
            else:
                path += f"[{part!r}]"
        raise InvalidEvent(f"event {path}: {exc.what}") from None
