"""Python's cyclic garbage collector while a runner catches up.

A catch-up holds a batch of up to ``batch_size`` messages, their decoded events, the messages
read ahead and the cached states (up to ``cache_size``) at once: tens of thousands of
container objects that outlive the collector's youngest generation. The collector counts the
container objects allocated minus those freed since its last collection; with its default
threshold (700) it scanned them again and again, about 5.7 µs per event of a 200k catch-up
(20% of the runner's event-loop time), to find no garbage: the fold keeps no cycles. At
50,000 the read-ahead alone still passed it every few thousand messages, each collection
scanning every message alive (about 2 µs per event). While a runner of this process catches
up (from the start of its reading to the batch reaching its target), the youngest generation
is collected only once ``CATCH_UP_THRESHOLD`` more container objects are alive than at its last
collection (the older generations' thresholds unchanged), and the thresholds the process had
are restored when the last catch-up ends. It changes when garbage cycles are found, never
whether: the memory a cycle holds is freed a little later (a projection making cycles gets a
collection every half a million container objects they hold).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["CATCH_UP_THRESHOLD", "catching_up"]

CATCH_UP_THRESHOLD = 500_000  # container objects alive (net) between youngest-generation runs

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
