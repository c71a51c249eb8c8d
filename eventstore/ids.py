"""UUIDv7 event ids (RFC 9562): time-ordered, so ids sort roughly by creation time.

Python 3.11 has no ``uuid.uuid7``; this one keeps ids strictly increasing within one process
even when several are made in the same millisecond (the 12-bit ``rand_a`` field is a counter).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["is_uuid7", "uuid7"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Random bits from the OS, drawn 4 KiB at a time (one syscall per 512 ids, not one per id);
# a forked child must never reuse its parent's bytes, so it starts with an empty pool.
_pool = b""
_POOL_BYTES = 4096


_at = 0


def _forget_pool() -> None:
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def _random8() -> int:
    """64 random bits (call with ``_lock`` held)."""
    global _pool, _at
    if _at + 8 > len(_pool):
        _pool, _at = os.urandom(_POOL_BYTES), 0
    _at += 8
    return int.from_bytes(_pool[_at - 8 : _at], "big")


def uuid7() -> str:
    """Return a new UUIDv7 as its canonical lowercase string."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = _random8() & 0x7FF  # leave room to count
        _last_ms = ms
        counter = _counter
        rand_b = _random8() & ((1 << 62) - 1)
    ms &= (1 << 48) - 1
    # The canonical form written directly (version 7, variant 0b10): ``str(uuid.UUID(int=...))``
    # costs several times as much.
    return "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031
        ms >> 16,
        ms & 0xFFFF,
        0x7000 | counter,
        0x8000 | rand_b >> 48,
        rand_b & 0xFFFFFFFFFFFF,
    )


def is_uuid7(value: str) -> bool:
    """Tell whether ``value`` is a canonical UUIDv7 string."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 7 and str(parsed) == value
