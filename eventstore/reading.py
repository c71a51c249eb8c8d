"""Reading the log through an ``EventStore``: one aggregate by version, seq or time, the
whole log, following it live, and the undecoded batches projection runners and time travel
fold.

A mixin of ``EventStore`` (which holds the connection and the reader); kept apart so that the
store's own module is about connecting and appending. Every decoded event read here is shown
to the producer's Lamport clock (``_observe``): a producer that read something writes after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from eventstore.errors import InvalidEvent
from eventstore.events import Event
from eventstore.producer import Committer
from eventstore.reader import LogReader, OnMalformed, StoredMessage
from eventstore.streams import StreamSettings
from eventstore.subjects import aggregate_subject, filter_subject
from eventstore.validate import check_int, check_optional_int, check_time

__all__ = ["LogReading"]


class LogReading:
    """The read methods of ``EventStore``."""

    reader: LogReader
    settings: StreamSettings
    _committer: Committer | None

    def subject(self, aggregate_type: str, aggregate_id: str) -> str:
        return aggregate_subject(self.settings.prefix, aggregate_type, aggregate_id)

    def _observe(self, ev: Event) -> Event:
        if self._committer is not None:
            self._committer.clock.observe(ev.lamport)
        return ev

    async def read(
        self,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        *,
        on_malformed: OnMalformed | None = None,
    ) -> AsyncIterator[Event]:
        """One aggregate's events by version range (inclusive), oldest first.

        The history is the one projections fold (``eventstore.versions``): a message that is
        not a valid event, or a valid event whose version takes no place (a raw client's
        duplicate or skipped version), is skipped and handed to ``on_malformed`` as a
        ``Malformed`` (kind ``undecodable``, ``duplicate`` or ``gap``; without a callback, a
        logged warning), and reading goes on. Raise from the callback to stop instead.
        """
        check_int(from_version, "from_version", minimum=1)
        check_optional_int(to_version, "to_version")
        subject = self.subject(aggregate_type, aggregate_id)
        if to_version is not None and to_version < from_version:
            return
        async for ev in self.reader.history(
            subject, f"{aggregate_type}/{aggregate_id}", from_version, to_version, on_malformed
        ):
            yield self._observe(ev)

    async def read_by_seq(
        self,
        aggregate_type: str,
        aggregate_id: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        on_malformed: OnMalformed | None = None,
    ) -> AsyncIterator[Event]:
        """One aggregate's events whose stream sequence is in ``[from_seq, to_seq]``.

        A message that is not a valid event is skipped and handed to ``on_malformed`` (see
        :meth:`read`; versions are not checked here, the range may start mid-history).
        """
        check_int(from_seq, "from_seq")
        check_optional_int(to_seq, "to_seq")
        subject = self.subject(aggregate_type, aggregate_id)
        async for ev in self.reader.aggregate_events(
            subject, start_seq=max(1, from_seq), stop_seq=to_seq, on_malformed=on_malformed
        ):
            yield self._observe(ev)

    async def read_by_time(
        self,
        aggregate_type: str,
        aggregate_id: str,
        start: datetime,
        end: datetime | None = None,
        *,
        on_malformed: OnMalformed | None = None,
    ) -> AsyncIterator[Event]:
        """One aggregate's events recorded (by the server) in ``[start, end]``; a message that
        is not a valid event is skipped and handed to ``on_malformed`` (as :meth:`read_by_seq`).
        """
        check_time(start, "the start time")  # a naive time is refused, never guessed (validate.py)
        end = None if end is None else check_time(end, "the end time")
        subject = self.subject(aggregate_type, aggregate_id)
        async for ev in self.reader.aggregate_events(
            subject, start_time=start, on_malformed=on_malformed
        ):
            if end is not None and ev.recorded_at is not None and ev.recorded_at > end:
                return
            yield self._observe(ev)

    async def read_all(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        aggregate_type: str | None = None,
        *,
        on_malformed: OnMalformed | None = None,
    ) -> AsyncIterator[Event]:
        """Every event of the log (or of one aggregate type) from ``from_seq``, in log order.

        A message that is not a valid event (on any subject of the log) is skipped and handed
        to ``on_malformed`` (see :meth:`read`); reading goes on.
        """
        check_int(from_seq, "from_seq")
        check_optional_int(to_seq, "to_seq")
        subject = filter_subject(self.settings.prefix, aggregate_type)
        stop = to_seq if to_seq is not None else await self.reader.last_seq()
        async for ev in self.reader.events(
            subject,
            start_seq=from_seq,
            stop_seq=stop,
            contiguous=aggregate_type is None,
            on_malformed=on_malformed,
        ):
            yield self._observe(ev)

    async def follow(
        self,
        from_seq: int | None = None,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        *,
        on_malformed: OnMalformed | None = None,
    ) -> AsyncIterator[Event]:
        """Follow the log live from ``from_seq`` (default: only new events), forever.

        Never skips or repeats an event, across reconnects and server restarts. A message that
        is not a valid event is skipped and handed to ``on_malformed`` (see :meth:`read`);
        following goes on.
        """
        check_optional_int(from_seq, "from_seq")
        if aggregate_id is not None:
            if aggregate_type is None:
                raise InvalidEvent("following one aggregate id needs its aggregate type")
            subject = self.subject(aggregate_type, aggregate_id)
        else:
            subject = filter_subject(self.settings.prefix, aggregate_type)
        start = from_seq if from_seq is not None else await self.reader.last_seq() + 1
        async for ev in self.reader.events(
            subject,
            start_seq=start,
            follow=True,
            contiguous=subject.endswith(">"),
            on_malformed=on_malformed,
        ):
            yield self._observe(ev)

    async def raw(
        self, from_seq: int = 1, *, follow: bool = False, stop_seq: int | None = None
    ) -> AsyncIterator[list[StoredMessage]]:
        """Batches of undecoded messages of the whole log: for projection runners."""
        check_int(from_seq, "from_seq")
        check_optional_int(stop_seq, "stop_seq")
        async for batch in self.reader.batches(
            filter_subject(self.settings.prefix),
            start_seq=from_seq,
            stop_seq=stop_seq,
            follow=follow,
            contiguous=True,
        ):
            yield batch

    async def raw_aggregate(
        self,
        aggregate_type: str,
        aggregate_id: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        batch: int = 256,
    ) -> AsyncIterator[list[StoredMessage]]:
        """Batches of one aggregate's undecoded messages, for readers that must see malformed
        ones too (time travel replays them into quarantine exactly as the runner did).

        Uses batched direct gets: no consumer, and nothing more is sent once the caller stops
        reading, so a replay of a few events costs the same on a long history as on a short one.
        """
        check_int(from_seq, "from_seq")
        check_optional_int(to_seq, "to_seq")
        check_int(batch, "batch")
        subject = self.subject(aggregate_type, aggregate_id)
        async for got in self.reader.direct_batches(
            subject, start_seq=max(1, from_seq), stop_seq=to_seq, batch=max(1, batch)
        ):
            yield got
