"""Guessing that an aggregate the committer has never seen is new, instead of asking.

A cold batch (appends to aggregates missing from the head cache) used to wait for a batched
lookup of their heads before it could be prepared: one round trip per batch, 8-15 ms while
the batch before it was being stored and synced (``python -m bench.groupcommit``, cold cell).
Most such appends create aggregates (fresh ids), and no head is trusted anyway: each
aggregate's first message in a batch expects its subject's last sequence, 0 for a guessed
new one, so an aggregate that does exist gets the whole batch refused (nothing stored), its
heads are refreshed from the server and the batch goes again with the same event ids.

The guess is made only while it pays. A refused batch that held a guessed head stops it;
lookups that find (nearly) every unknown aggregate new start it again. A producer restarted
on existing aggregates thus pays one refused batch, then learns heads as before (or never
guesses: ``EventStore.connect(guess_new=False)``). The clock values of a refused batch are
skipped, as after any refusal: gaps, never a reuse (a producer's clocks only increase).

Only a group with several unknown aggregates is guessed, where the alternative was a batched
lookup: one append to one unknown aggregate (``eventstore publish``, most often to one that
exists) asks the leader as before, so a one-shot process still leaves no clock gap. Appends
with an expected version above 0 never rest on a guess (the version must come from the log).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NewGuess"]

_WINDOW = 64  # unknown aggregates looked up before the guess is judged again
_ON = 0.9  # ... of which at least this fraction new turns it on
_MAX_GUESSED = 100_000  # guessed heads awaiting their batch's answer, at most


class NewGuess:
    """Whether to take unknown aggregates for new, and which heads rest on that guess."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # ``EventStore.connect(guess_new=False)``: never guess
        self.on = enabled
        self._guessed: set[str] = set()
        self._looked = 0
        self._new = 0

    def guessed(self, subjects: Iterable[str]) -> None:
        """These heads were taken for new without asking."""
        if len(self._guessed) > _MAX_GUESSED:
            self._guessed.clear()  # answers lost with their batches: forget, never grow
        self._guessed.update(subjects)

    def looked_up(self, total: int, new: int) -> None:
        """``total`` unknown aggregates were looked up and ``new`` of them had no event."""
        self._looked += total
        self._new += new
        if self._looked >= _WINDOW:
            self.on = self.enabled and self._new >= _ON * self._looked
            self._looked = self._new = 0

    def settled(self, subjects: Iterable[str], *, refused: bool) -> None:
        """A batch on ``subjects`` was answered: stored, or ``refused`` (a guess may have been
        wrong: stop guessing until lookups show new aggregates again)."""
        guessed = self._guessed
        if not guessed:
            return
        hit = False
        for s in subjects:
            if s in guessed:
                guessed.discard(s)
                hit = True
        if refused and hit:
            self.on = False
            self._looked = self._new = 0
