"""What a batch's answer means for its appends: stored, refused, or to be tried again.

A stored batch settles every request and leaves its heads in the cache. A refused one stored
nothing (the server checks each aggregate's expected last sequence, and a batch is all or
nothing): its heads are marked stale, and the committer's next round asks the leader for them
(``HeadReader.lookup`` with ``refresh``) before it tries again with the same event ids.
"""

from __future__ import annotations

import asyncio

from eventstore.duplicates import Reconciler
from eventstore.errors import EventStoreError, InvalidEvent, ServerError
from eventstore.events import AppendResult
from eventstore.heads import Head, HeadCache
from eventstore.jetstream import (
    BATCH_INCOMPLETE,
    DUPLICATE_ID,
    MAXIMUM_MESSAGE_SIZE,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_CONSTANT,
    Refusal,
    refusal_hint,
)
from eventstore.logging import get_logger
from eventstore.pending import Pending

__all__ = ["Outcomes"]

log = get_logger("eventstore.producer")


class Outcomes:
    """Settles the requests of one batch from the server's answer."""

    def __init__(self, heads: HeadCache, reconciler: Reconciler) -> None:
        self._heads = heads
        self._reconciler = reconciler

    def success(self, ready: list[Pending], first_seq: int) -> None:
        """Settle every request of a stored batch and remember the heads it made."""
        seq = first_seq
        remember = self._heads.remember
        for p in ready:
            envelopes = p.envelopes
            n = len(envelopes)
            first, last = seq, seq + n - 1
            seq += n
            env = envelopes[-1]
            # The head shares the envelope's clock (neither is ever changed); the caller's
            # result gets a copy of its own.
            remember(p.subject, Head(last, env.version, env.vclock, env.lamport, p.state_after))
            if not p.future.done():
                ids = (env.id,) if n == 1 else tuple([e.id for e in envelopes])
                p.future.set_result(AppendResult.of(first, env, last, ids, duplicate=False))

    async def refusal(self, ready: list[Pending], rej: Refusal) -> None:
        """A refused batch stored nothing: mark its heads stale (the next round refreshes them
        from the leader), settle what an earlier unanswered attempt did store, fail what
        cannot be stored at all."""
        if rej.code in (WRONG_LAST_SEQUENCE, DUPLICATE_ID, WRONG_LAST_SEQUENCE_CONSTANT):
            # Wrong last sequence or duplicate id: perhaps our own earlier attempt was stored.
            checked = await self._reconciler.recognise_own(ready)
            for p in ready:
                self._heads.mark_stale(p.subject)
                if p.future.done() or rej.code == WRONG_LAST_SEQUENCE or not checked:
                    continue
                p.rejections += 1
                if p.rejections >= 3:
                    # The id is stored somewhere we did not send it: another aggregate or an
                    # unrelated writer used it. Ids must be unique across the whole stream.
                    p.future.set_exception(
                        InvalidEvent(
                            f"the server already holds an event with one of the ids "
                            f"{[e.id for e in p.envelopes]}, but not as this append on "
                            f"{p.subject}; event ids must be unique in the stream"
                        )
                    )
            return
        if "incomplete" in rej.description.lower() or rej.code in BATCH_INCOMPLETE:
            # Part of the batch was lost on the way (a reconnect): nothing was stored.
            log.info("atomic batch arrived incomplete, resending", error=rej.description)
            await asyncio.sleep(0.05)
            return
        if rej.code == MAXIMUM_MESSAGE_SIZE or "maximum" in rej.description.lower():
            err: EventStoreError = InvalidEvent(f"the server refused the events: {rej.description}")
        else:
            hint = refusal_hint(rej.code)  # a full store says what to do
            err = ServerError(f"the server refused the append: {rej.description}{hint}")
        for p in ready:
            p.fail(err)
