"""Recognising an append's own stored copy: the idempotence of retries.

nats-server 2.15 checks the expected sequence *before* deduplication, so a retry of an append
that was in fact stored comes back as "wrong last sequence" (or, for an atomic batch, as a
duplicate id); an append whose ack was lost may be stored too. Trusting neither answer, the
committer looks at what is stored right after each head an attempt expected: if that is its
own events, in order, the append is reported as a duplicate, not stored again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nats.js import JetStreamContext

from eventstore.errors import InvalidEvent
from eventstore.events import AppendResult, Event, decode_event, utcnow
from eventstore.heads import HeadCache
from eventstore.jetstream import StoredMessage, msg_at, next_msg, translating
from eventstore.pending import Pending
from eventstore.reader import LogReader, decode_message
from eventstore.versions import next_version

__all__ = ["Reconciler", "find_ids"]


class Reconciler:
    """Settles requests whose events the server already holds."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        heads: HeadCache,
        *,
        url: str,
        transient: Callable[[BaseException], bool],
    ) -> None:
        self._js = js
        self.stream = stream
        self._heads = heads
        self.url = url
        self._transient = transient

    async def settle_duplicate(self, p: Pending, seq: int) -> None:
        """The server already had this (single) event: report the stored copy if it is this
        append's, stored right after a head an attempt expected (so at the version it was
        given); any other copy of the id (a raw client's, outside the history) is refused."""
        self._heads.mark_stale(p.subject)
        with translating(what=f"message at seq {seq}", url=self.url, timeout=5.0):
            msg = await msg_at(self._js, self.stream, seq)
        try:
            ev: Event | None = decode_event(msg.data or b"", seq=seq) if msg else None
        except InvalidEvent:
            ev = None
        own = p.envelopes[0].id
        where = msg.subject if msg is not None else "no subject"
        if (
            msg is None
            or msg.subject != p.subject
            or ev is None
            or ev.id != own
            or not await self._stored_by_attempt(p, seq)
        ):
            p.fail(
                InvalidEvent(
                    f"event id {own} is already used by the message at seq {seq} on "
                    f"{where}, which is not this append at its place in the history; "
                    "event ids must be unique in the stream"
                )
            )
            return
        if not p.future.done():
            p.future.set_result(AppendResult.of(seq, ev, seq, (ev.id,), duplicate=True))

    async def _stored_by_attempt(self, p: Pending, seq: int) -> bool:
        """Whether ``seq`` is where one of ``p``'s attempts would have been stored."""
        for base, offset in p.tried:
            found = await self.stored_after(p.subject, base, offset + 1)
            if len(found) > offset and found[offset][0] == seq:
                return True
        return False

    async def recognise_own(self, ready: list[Pending]) -> bool:
        """Settle as duplicates the requests whose events are stored where an earlier attempt
        put them (after the head it expected, past the events batched before them). Only the
        attempts that went unanswered (``Pending.unsure``) are looked at: a refused batch
        stored nothing, so a request never left unanswered costs no request at all.

        Returns False when the server could not be asked (the check is then retried later).
        """
        for p in ready:
            if p.future.done() or not p.envelopes or not p.unsure:
                continue
            ours = [e.id for e in p.envelopes]
            stored: list[tuple[int, str, Event]] = []
            try:
                for base, offset in sorted(p.unsure):
                    found = await self.stored_after(p.subject, base, offset + p.size)
                    stored = found[offset:]
                    if stored and stored[0][1] == ours[0]:
                        break
            except Exception as exc:
                if self._transient(exc):
                    return False  # not reachable now; the next round retries
                raise
            if not stored or stored[0][1] != ours[0]:
                continue
            if [i for _, i, _ in stored] != ours:
                p.fail(
                    InvalidEvent(
                        f"events {ours} were only partly found on {p.subject}; "
                        "a retry must resend exactly the same events"
                    )
                )
                continue
            last_seq, _, last_ev = stored[-1]
            self._heads.mark_stale(p.subject)
            p.future.set_result(
                AppendResult.of(stored[0][0], last_ev, last_seq, tuple(ours), duplicate=True)
            )
        return True

    async def stored_after(
        self, subject: str, after_seq: int, n: int
    ) -> list[tuple[int, str, Event]]:
        """Up to ``n`` valid events of the subject after ``after_seq``: (seq, id, event)."""
        out: list[tuple[int, str, Event]] = []
        seq = after_seq + 1
        for _ in range(n):
            with translating(what=f"messages of {subject}", url=self.url, timeout=5.0):
                msg = await next_msg(self._js, self.stream, subject, seq)
            if msg is None:
                break
            try:
                ev = decode_event(msg.data or b"", seq=int(msg.seq or 0))
            except InvalidEvent:
                break
            out.append((int(msg.seq or 0), ev.id, ev))
            seq = int(msg.seq or 0) + 1
        return out


async def _consistent(reader: LogReader, subject: str) -> AsyncIterator[list[StoredMessage]]:
    """Every message of the subject up to its last one as the stream's leader knows it.

    Direct gets may be answered by a replica that lags (DESIGN.md): whether an append is
    already stored decides a write, so what the direct read did not reach is read from the
    leader. Without this a retry after a failover, answered by a lagging replica, misses its
    own stored event and then fails with ``VersionConflict`` against itself.
    """
    seen = 0
    async for batch in reader.direct_batches(subject):
        seen = batch[-1].seq
        yield batch
    last = await reader.last_seq(subject)  # the leader's get
    while seen < last:
        with translating(what=f"messages of {subject}", url=reader.url, timeout=5.0):
            msg = await next_msg(reader.js, reader.stream, subject, seen + 1)
        if msg is None:
            return
        seen = int(msg.seq or 0)
        at = msg.time or utcnow()
        yield [StoredMessage(seen, msg.subject or subject, msg.data or b"", at, msg.headers)]


async def find_ids(reader: LogReader, subject: str, ids: list[str]) -> AppendResult | None:
    """The stored copy of a retried append: its ids at their places in the history.

    A copy of an id that takes no place (a raw client's stale or gap event, which the
    projection quarantines) is no proof the append is stored: such an id is refused.
    """
    wanted = set(ids)
    found: dict[str, Event] = {}
    outside: dict[str, int] = {}  # id -> seq of a copy that takes no version
    version = 0
    async for batch in _consistent(reader, subject):
        for m in batch:
            taken = next_version(version, m.data)
            if taken is not None:
                version = taken
            msg_id = (m.headers or {}).get("Nats-Msg-Id")
            if msg_id is not None and msg_id not in wanted:
                continue
            try:
                ev = decode_message(reader.prefix, m)
            except InvalidEvent:
                continue
            if ev.id not in wanted:
                continue
            if taken is None:
                outside.setdefault(ev.id, m.seq)
            else:
                found[ev.id] = ev
    if lost := sorted(set(outside) - set(found)):
        raise InvalidEvent(
            f"event id {lost[0]} is already stored on {subject} at seq {outside[lost[0]]}, "
            "but that message takes no place in the aggregate's history (a duplicate or "
            "skipped version, quarantined by projections); give this append another id"
        )
    if not found:
        return None
    if len(found) != len(wanted):
        missing = sorted(wanted - found.keys())
        raise InvalidEvent(
            f"events {sorted(found)} are already stored on {subject} but {missing} are "
            "not: a retry must resend exactly the same events"
        )
    evs = [found[i] for i in ids]
    last = evs[-1]
    return AppendResult.of(evs[0].seq, last, last.seq, tuple(ids), duplicate=True)
