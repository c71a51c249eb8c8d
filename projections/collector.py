"""Python's cyclic garbage collector while a runner catches up.

A catch-up holds a batch of up to ``batch_size`` messages, their decoded events and the cached
states (up to ``cache_size``) at once: tens of thousands of container objects that outlive
the collector's youngest generation, so with its default threshold (a collection every 700
allocations) it scanned them again and again, about 5.7 µs per event of a 200k catch-up
(20% of the runner's event-loop time), to find no garbage: the fold keeps no cycles. While
a runner of this process catches up, the youngest generation is collected every
``CATCH_UP_THRESHOLD`` allocations instead (the older generations' thresholds unchanged), and
the thresholds the process had are restored when the last catch-up ends. It changes when
garbage cycles are found, never whether: the memory a cycle holds is freed a little later.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["CATCH_UP_THRESHOLD", "catching_up"]

CATCH_UP_THRESHOLD = 50_000  # allocations between collections of the youngest generation

_active = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def catching_up() -> Iterator[None]:
    """Raise the youngest generation's threshold for the block (nested blocks and several
    runners share it: the first to enter saves the thresholds, the last to leave restores
    them)."""
    global _active, _saved
    if _active == 0:
        _saved = gc.get_threshold()
        if _saved[0] and _saved[0] < CATCH_UP_THRESHOLD:  # 0: collection is off, leave it
            gc.set_threshold(CATCH_UP_THRESHOLD, *_saved[1:])
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        if _active == 0 and _saved is not None:
            if gc.get_threshold()[0] == CATCH_UP_THRESHOLD:  # nobody else changed it since
                gc.set_threshold(*_saved)
            _saved = None
