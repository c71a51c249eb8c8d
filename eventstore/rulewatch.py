"""How an ``EventStore`` keeps the rules stored with the log current, and how it sets them.

At connect the store reads the rules subject (``<prefix>._rules.current``: a filtered read of
a tiny subject, one leader's get per version, read-after-write consistent) into its
``RuleBook``. It stays current by a core NATS
subscription on that subject (a message published to a stream's subject reaches core
subscribers too: each arrival triggers a re-read from the last sequence known) and by a
re-read after every reconnect (what was published while disconnected). The subscription is
subscribed before the first read, so nothing stored in between is missed.

The store's ``machines`` (what its producer checks appends against) follow the book: a
producer connected before a ``rules set`` is held to the new rules as soon as it has seen the
change. An append checked under the old rules an instant before the change may still land
after it; the fold is the final judge (it quarantines such an event as ``transition``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from nats.aio.client import Client

from eventstore.cancelling import cancel_and_wait
from eventstore.errors import EventStoreError, InvalidEvent, PermissionDenied, RequestTimeout
from eventstore.events import RULES_ID, RULES_TYPE, NewEvent, utcnow
from eventstore.jetstream import StoredMessage, next_msg, translating
from eventstore.machines import Machines
from eventstore.pending import Pending, checked_events
from eventstore.producer import Committer
from eventstore.reader import LogReader
from eventstore.rules import RESERVED_HINT, RULES_EVENT, RuleBook, Rules, RuleVersion
from eventstore.subjects import rules_subject

__all__ = ["RulesWatch"]

log = structlog.get_logger("eventstore.rules")


class RulesWatch:
    """Feeds one store's ``RuleBook`` and keeps its ``Machines`` equal to the rules in force."""

    def __init__(self, nc: Client, reader: LogReader, prefix: str, machines: Machines) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._reader = reader
        self.subject = rules_subject(prefix)
        self.book = RuleBook()
        self.machines = machines
        self.book.on_change(lambda v: machines.replace(self.book.machines_of(v)))
        self._lock = asyncio.Lock()
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Subscribe, then read every rules version stored so far. A client the server refuses
        that read still connects (it may read raw events), but the book is ``unreadable``:
        every fold or append that would need the rules raises that refusal."""
        self._sub = await self._nc.subscribe(self.subject, cb=self._arrived)
        try:
            await self.refresh()
        except PermissionDenied as exc:
            self.book.unreadable = exc
            log.warning("the rules stored with the log cannot be read", error=str(exc))

    def refusal(self, aggregate_type: str) -> EventStoreError | None:
        """Why an append to ``aggregate_type`` is refused before anything else: the reserved
        rules aggregate, or rules this store could not read (None: neither)."""
        if aggregate_type == RULES_TYPE:
            return InvalidEvent(f"aggregate type {RULES_TYPE} is reserved: {RESERVED_HINT}")
        return self.book.unreadable

    async def _arrived(self, _msg: Any) -> None:
        self.poke()

    def poke(self) -> None:
        """Read what is new on the rules subject, in the background (a message arrived, or
        the connection came back)."""
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except EventStoreError as exc:  # the next arrival or reconnect reads again
            log.warning("could not read the rules stored with the log", error=str(exc))

    async def refresh(self, until: int | None = None) -> None:
        """Learn every rules message after the last one known (up to ``until``, if given,
        waiting until the read reaches it: what a just-stored version needs)."""
        async with self._lock:
            if until is not None and self.book.last_seq >= until:
                return
            reader, api = self._reader, f"$JS.API.STREAM.MSG.GET.{self._reader.stream}"
            while True:
                try:
                    with translating(what=f"the rules on {self.subject}", url=reader.url,
                                     timeout=5.0):  # fmt: skip
                        got = await next_msg(self._js, reader.stream, self.subject,
                                             self.book.last_seq + 1)  # fmt: skip
                except RequestTimeout as exc:  # unanswered: refused by the server's permissions?
                    if refused := reader._refused(api):
                        raise refused from exc
                    raise
                if got is None:
                    self.book.unreadable = None
                    return
                seq, at = int(got.seq or 0), got.time or utcnow()
                self.book.learn(StoredMessage(seq, self.subject, got.data or b"", at, got.headers))

    async def store(
        self,
        committer: Committer,
        rules: Rules,
        comment: str | None,
        expected_version: int | None,
        timeout: float,
    ) -> RuleVersion:
        """Append ``rules`` as the next version (``EventStore.set_rules``): one ``rules.set``
        event expecting ``expected_version`` (default: the version this book has), read back
        into the book before it returns."""
        rules.check()
        data = rules.to_data() | ({"comment": comment} if comment is not None else {})
        expected = self.book.version if expected_version is None else expected_version
        batch, _ = checked_events(NewEvent(RULES_EVENT, data), expected)
        pending = Pending.new(RULES_TYPE, RULES_ID, self.subject, batch, expected, {}, timeout)
        result = await committer.append(pending)
        await self.refresh(until=result.last_seq)
        stored = self.book.at(result.last_seq)
        if stored is None or stored.seq != result.last_seq:
            raise EventStoreError(f"the rules stored at seq {result.last_seq} cannot be read back")
        return stored

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(*self._tasks)
        if self._sub is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._sub = None
