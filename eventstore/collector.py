"""Python's cyclic garbage collector while this process holds many objects for a moment.

Two paths hold tens of thousands of container objects at once, none of them in a reference
cycle, and the collector's default threshold (700 net allocations) had it scan them again
and again to find no garbage:

- a projection runner catching up (``projections.batches``: a batch of up to ``batch_size``
  messages, their decoded events, the messages read ahead and the cached states): about 5.7
  µs per event of a 200k catch-up, 20% of the runner's event-loop time;
- ``EventStore.append_many`` (each append's request, future, clock dict, envelope and
  headers, held until its batch is answered): 1.6-4 µs per append, and every few thousand
  appends a full collection of every object of the process, 30 ms in a small benchmark
  process (16-18 µs per append of that call), more in an application holding more.

While such a block runs, the youngest generation is collected only once
``BURST_THRESHOLD`` more container objects are alive than at its last collection (the older
generations' thresholds unchanged), and the thresholds the process had are restored when the
last block ends. It changes when garbage cycles are found, never whether: the memory a cycle
holds is freed a little later (code making cycles meanwhile gets a collection every half a
million container objects they hold).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["BURST_THRESHOLD", "collecting_less"]

BURST_THRESHOLD = 500_000  # container objects alive (net) between youngest-generation runs

_active = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def collecting_less() -> Iterator[None]:
    """Raise the youngest generation's threshold for the block (nested and concurrent
    blocks share it: the first to enter saves the thresholds, the last to leave restores
    them)."""
    global _active, _saved
    if _active == 0:
        _saved = gc.get_threshold()
        if _saved[0] and _saved[0] < BURST_THRESHOLD:  # 0: collection is off, leave it
            gc.set_threshold(BURST_THRESHOLD, *_saved[1:])
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        if _active == 0 and _saved is not None:
            if gc.get_threshold()[0] == BURST_THRESHOLD:  # nobody else changed it since
                gc.set_threshold(*_saved)
            _saved = None
