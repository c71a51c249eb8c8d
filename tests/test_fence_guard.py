"""The server-side fencing guard evaluated in ``bench.fence_guard``: with a real nats-server,
an append whose guard expects a superseded lease grant is refused whole, nothing stored."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # bench/ is not an installed package; run from the checkout
    sys.path.insert(0, ROOT)

from bench import fence_guard  # noqa: E402


async def test_a_superseded_grant_is_refused_with_nothing_stored() -> None:
    """Guarded appends of the current grant are stored; once a new grant is logged, every
    append still guarded by the old one is refused (10071) and stores nothing."""
    figures = await fence_guard.run(n=20)
    assert figures["stale_refused"] == 20
    assert figures["stale_stored"] == 0
    assert figures["guarded_per_s"] > 0 and figures["plain_per_s"] > 0
