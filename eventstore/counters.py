"""What a producer counts about its own appends, for whoever exports metrics.

The log layer knows nothing of Prometheus: the committer only increments these plain integers,
and a collector in the layer above (``consumers.metrics``) reads them when it is scraped.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AppendCounters"]


@dataclass(slots=True)
class AppendCounters:
    """Monotonic counts since the store connected."""

    retries: int = 0  # a batch sent again (after a timeout, a stale head, a lost ack)
    conflicts: int = 0  # appends failed with VersionConflict (an expected version did not hold)
