"""Python's cyclic garbage collector and thread switching while a runner catches up.

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

The GIL's switch interval is lowered for the same span, from 5 ms (Python's default) to
``CATCH_UP_SWITCH``: the batch commits on the database's thread while the event loop folds
the next one, and after each statement (a thousand rows) that thread waits for the GIL until
the busy event loop is made to drop it. At 5 ms a 25,000-message commit waited about as long
as it worked, and the fold then waited for it (1.4-4.1 µs per event of a 100k catch-up with
the copy of the events); at 1 ms 0.9-1.9.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

__all__ = ["CATCH_UP_SWITCH", "CATCH_UP_THRESHOLD", "catching_up"]

CATCH_UP_THRESHOLD = 500_000  # container objects alive (net) between youngest-generation runs
CATCH_UP_SWITCH = 0.001  # seconds: the GIL's switch interval while catching up

_active = 0
_saved: tuple[int, int, int] | None = None
_switch: float | None = None


@contextlib.contextmanager
def catching_up() -> Iterator[None]:
    """Raise the youngest generation's threshold and lower the switch interval for the block
    (nested blocks and several runners share them: the first to enter saves the settings, the
    last to leave restores them)."""
    global _active, _saved, _switch
    if _active == 0:
        _saved = gc.get_threshold()
        if _saved[0] and _saved[0] < CATCH_UP_THRESHOLD:  # 0: collection is off, leave it
            gc.set_threshold(CATCH_UP_THRESHOLD, *_saved[1:])
        _switch = sys.getswitchinterval()
        if _switch > CATCH_UP_SWITCH:
            sys.setswitchinterval(CATCH_UP_SWITCH)
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        if _active == 0:
            if _saved is not None and gc.get_threshold()[0] == CATCH_UP_THRESHOLD:
                gc.set_threshold(*_saved)  # nobody else changed it since
            if _switch is not None and sys.getswitchinterval() == CATCH_UP_SWITCH:
                sys.setswitchinterval(_switch)
            _saved = _switch = None
