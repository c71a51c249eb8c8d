"""The audit trail as JSON Lines: export the log, import it into a (fresh or the same) stream.

``export_events(store, out)`` writes one event per line, the envelope plus the log's ``seq``
and ``recorded_at``, oldest first, reading batches from an ordered consumer and writing each
before the next is read: memory stays flat however long the log is. Filters: a sequence to
start at, a recorded-time window, one aggregate type or one aggregate. A message that is not
a valid event is not part of the trail: it is skipped and reported (``on_malformed``).

``import_events(store, source)`` stores such a file's events exactly as they are (same ids,
versions, Lamport times, vector clocks, ``occurred_at``); the log gives them their new ``seq``
and ``recorded_at``. It is idempotent: an event whose aggregate already holds its version is
skipped (its clock must be the stored one's, else the stream has another history and the
import stops), so importing a file twice stores nothing the second time, whatever the dedup
window. Events go out in atomic batches, each aggregate's first message carrying the
server-checked expected-last-subject-sequence, so a batch is stored whole or not at all. A
damaged line stops the import with its line number: every event before it is stored, nothing
from it on. Afterwards each producer's clock reservation is raised above the imported values,
so a producer appending to the new stream never reuses a Lamport time or counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import BinaryIO, cast

import msgspec
import structlog

from eventstore.clockstore import ProducerClock
from eventstore.errors import InvalidEvent, Retryable, ServerError
from eventstore.events import TOO_DEEP, Envelope, encode_envelope, nesting_exceeds
from eventstore.heads import Head, HeadCache, HeadReader
from eventstore.jetstream import (
    BATCH_INCOMPLETE,
    DUPLICATE_ID,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_CONSTANT,
    Ack,
    Refusal,
    request,
    translate,
)
from eventstore.publishing import publish_batch
from eventstore.reader import (
    Malformed,
    OnMalformed,
    StoredMessage,
    decode_message,
    report_malformed,
)
from eventstore.store import EventStore
from eventstore.subjects import aggregate_subject, filter_subject, rules_subject
from eventstore.validate import check_int

__all__ = ["ExportReport", "ImportReport", "Progress", "export_events", "import_events"]

log = structlog.get_logger("eventstore.audit")

# (done, total): sequences for an export, bytes read for an import.
Progress = Callable[[int, int], None]

IMPORT_BATCH = 500  # events per atomic batch (the server's limit is 1000)
_BATCH_BYTES = 4 << 20
# Messages an export buffers before the server waits for it (plus one flow-control window in
# the client, ``eventstore.flowcontrol``): what bounds its memory behind a slow writer.
_BACKLOG = 2000
_ATTEMPTS = 20
_MAX_PRODUCERS = 100_000  # clock maxima kept per producer (a few bytes each)
_encoder = msgspec.json.Encoder()
_line = msgspec.json.Decoder(Envelope)  # ignores the export's seq and recorded_at
Message = tuple[str, bytes, dict[str, str]]
_RETRY_CODES = (WRONG_LAST_SEQUENCE, DUPLICATE_ID, WRONG_LAST_SEQUENCE_CONSTANT, *BATCH_INCOMPLETE)


class ExportReport(msgspec.Struct, frozen=True, kw_only=True):
    events: int  # lines written
    last_seq: int  # the last stream sequence read (0: none)
    skipped: int  # messages that are not valid events


class ImportReport(msgspec.Struct, frozen=True, kw_only=True):
    lines: int  # lines read (blank ones included)
    imported: int  # events stored now
    skipped: int  # events the stream already held


async def export_events(
    store: EventStore,
    out: BinaryIO,
    *,
    from_seq: int = 1,
    since: datetime | None = None,
    until: datetime | None = None,
    aggregate_type: str | None = None,
    aggregate_id: str | None = None,
    progress: Progress | None = None,
    on_malformed: OnMalformed | None = None,
) -> ExportReport:
    """Write the log's events (up to its head now) to ``out`` as JSON Lines; see the module."""
    check_int(from_seq, "from_seq")
    if aggregate_id is not None and aggregate_type is None:
        raise InvalidEvent("exporting one aggregate id needs its aggregate type")
    prefix = store.settings.prefix
    if aggregate_type is not None and aggregate_id is not None:
        subject = aggregate_subject(prefix, aggregate_type, aggregate_id)
    else:
        subject = filter_subject(prefix, aggregate_type)
    head = await store.head()
    events = skipped = last = 0
    reading = cast(AsyncGenerator[list[StoredMessage], None], store.reader.batches(
        subject, start_seq=max(1, from_seq), start_time=since, stop_seq=head,
        contiguous=subject == filter_subject(prefix) and since is None, backlog=_BACKLOG,
    ))  # fmt: skip
    async with contextlib.aclosing(reading) as batches:
        async for batch in batches:
            lines: list[bytes] = []
            done = False
            for m in batch:
                if until is not None and m.recorded_at > until:
                    done = True
                    break
                last = m.seq
                if m.seq < from_seq:
                    continue
                try:
                    lines.append(_encoder.encode(decode_message(prefix, m)))
                except InvalidEvent as exc:
                    skipped += 1
                    skip = Malformed(m.seq, m.subject, "undecodable", exc.reason, m)
                    report_malformed(on_malformed, skip)
            if lines:
                await asyncio.to_thread(out.write, b"\n".join(lines) + b"\n")
                events += len(lines)
            if progress is not None:
                progress(last, head)
            if done:
                break
    await asyncio.to_thread(out.flush)
    return ExportReport(events=events, last_seq=last, skipped=skipped)


def _parse(line: bytes, number: int, prefix: str) -> tuple[int, str, Envelope]:
    """One line's (number, subject, envelope), or ``InvalidEvent`` naming the line."""
    if nesting_exceeds(line):
        raise InvalidEvent(f"line {number}: {TOO_DEEP}")
    try:
        env = _line.decode(line)
        return number, aggregate_subject(prefix, env.aggregate_type, env.aggregate_id), env
    except (msgspec.DecodeError, RecursionError, InvalidEvent) as exc:
        raise InvalidEvent(f"line {number} is not an event: {exc}") from None


Chunk = list[tuple[int, str, Envelope]]


class _Importer:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.heads = HeadCache(100_000)
        clock = ProducerClock(store.js, store.settings.name, "eventstore-import")  # never used
        self.reader = HeadReader(store.js, store.reader, self.heads, machines=store.machines,
                                 clock=clock)  # fmt: skip
        self.clocks: dict[str, tuple[int, int]] = {}  # producer -> (max lamport, max counter)
        self.imported = self.skipped = 0
        self._batch = f"import-{random.getrandbits(48):012x}"
        self._batches = 0
        self.rules_subject = rules_subject(store.settings.prefix)
        self.rules_imported = False

    def _place(
        self, chunk: Chunk, heads: dict[str, Head]
    ) -> tuple[list[Message], list[tuple[str, Envelope]], int, InvalidEvent | None]:
        """The messages to send for ``chunk`` given the stored heads, the events they carry,
        how many the stream holds already, and the error of the first event that cannot be
        placed (nothing from it on is sent)."""
        msgs: list[Message] = []
        placed: list[tuple[str, Envelope]] = []
        versions = {s: h.version for s, h in heads.items()}
        skipped = 0
        for number, subject, env in chunk:
            head, version = heads[subject], versions[subject]
            if env.version <= version:
                if env.version == head.version and (env.lamport, env.vclock) != (
                    head.lamport, head.vclock,
                ):  # fmt: skip
                    return (
                        msgs,
                        placed,
                        skipped,
                        InvalidEvent(
                            f"line {number}: {env.aggregate_type}/{env.aggregate_id} already holds "
                            f"another event at version {env.version} (other clocks): this stream "
                            "has another history; import into a fresh stream"
                        ),
                    )
                skipped += 1
                continue
            if env.version != version + 1:
                return (
                    msgs,
                    placed,
                    skipped,
                    InvalidEvent(
                        f"line {number}: event {env.id} is version {env.version} of "
                        f"{env.aggregate_type}/{env.aggregate_id}, which is at version {version} "
                        "here: import its history from the version after that"
                    ),
                )
            headers = {"Nats-Msg-Id": env.id}
            if version == head.version:  # the aggregate's first message in this batch
                headers["Nats-Expected-Last-Subject-Sequence"] = str(head.seq)
            versions[subject] = env.version
            msgs.append((subject, encode_envelope(env), headers))
            placed.append((subject, env))
        return msgs, placed, skipped, None

    async def commit(self, chunk: Chunk) -> None:
        """Store the chunk's events the stream lacks, in one atomic batch; raise the error of
        an event that cannot be placed after storing those before it."""
        if not chunk:
            return
        subjects = {subject: env.aggregate_type for _, subject, env in chunk}
        self.rules_imported = self.rules_imported or self.rules_subject in subjects
        for _, _, env in chunk:
            self._seen(env)
        backoff = 0.05
        for attempt in range(_ATTEMPTS):
            try:
                heads: dict[str, Head] = {}
                for s, agg_type in subjects.items():
                    cached = self.heads.get(s)
                    fresh = attempt == 0 and self.heads.fresh(s) and cached is not None
                    heads[s] = cached if fresh and cached else await self.reader.fetch(s, agg_type)
                msgs, placed, skipped, error = self._place(chunk, heads)
                answer = await self._send(msgs) if msgs else None
            except Exception as exc:
                err = translate(exc, what="import", url=self.store.url)
                if not isinstance(err, Retryable):
                    raise err from exc
                log.info("import batch not confirmed, checking and retrying", error=str(err))
            else:
                if not isinstance(answer, Refusal):
                    self._stored(placed, answer.first_seq if answer else 0)
                    self.skipped += skipped
                    if error is not None:
                        raise error
                    return
                if answer.code not in _RETRY_CODES:
                    raise ServerError(f"the server refused the import: {answer.description}")
            for s in subjects:  # another writer, or our own batch stored after all: look again
                self.heads.mark_stale(s)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)
        raise ServerError(f"the import could not store a batch in {_ATTEMPTS} attempts")

    async def _send(self, msgs: list[Message]) -> Ack | Refusal:
        nc = self.store.nc
        self._batches += 1

        async def ask(s: str, b: bytes, h: dict[str, str], t: float, _: frozenset[str]) -> bytes:
            return await request(nc, s, b, h, t)

        return await publish_batch(nc, msgs, f"{self._batch}-{self._batches}", 5.0, ask)

    def _stored(self, placed: list[tuple[str, Envelope]], first_seq: int) -> None:
        for i, (subject, env) in enumerate(placed):
            head = Head(first_seq + i, env.version, dict(env.vclock), env.lamport, None)
            self.heads.remember(subject, head)
        self.imported += len(placed)

    def _seen(self, env: Envelope) -> None:
        """Remember the producer's highest clock values (stored now or already)."""
        top = self.clocks.get(env.producer)
        if top is None and len(self.clocks) >= _MAX_PRODUCERS:
            return
        lamport, counter = top or (0, 0)
        own = env.vclock.get(env.producer, 0)
        self.clocks[env.producer] = (max(lamport, env.lamport), max(counter, own))

    async def reserve_clocks(self) -> None:
        """Raise each imported producer's clock reservation above what it had published."""
        for producer, (lamport, counter) in self.clocks.items():
            clock = ProducerClock(self.store.js, self.store.settings.name, producer, block=1,
                                  replicas=self.store.settings.replicas)  # fmt: skip
            clock.lamport, clock.counter = lamport, counter
            await clock.reserve(0)


async def import_events(
    store: EventStore, source: BinaryIO, *, size: int = 0, progress: Progress | None = None
) -> ImportReport:
    """Store the events of a JSON Lines export read from ``source``; see the module.
    ``size`` (the file's size, if known) is the total handed to ``progress``."""
    importer = _Importer(store)
    prefix = store.settings.prefix
    number = done = chunk_bytes = 0
    chunk: Chunk = []
    try:
        while line := await asyncio.to_thread(source.readline):
            number += 1
            done += len(line)
            if not line.strip():
                continue
            try:
                chunk.append(_parse(line, number, prefix))
            except InvalidEvent:
                await importer.commit(chunk)  # everything before the damaged line
                raise
            chunk_bytes += len(line)
            if len(chunk) >= IMPORT_BATCH or chunk_bytes >= _BATCH_BYTES:
                await importer.commit(chunk)
                chunk, chunk_bytes = [], 0
                if progress is not None:
                    progress(done, size)
        await importer.commit(chunk)
        if progress is not None:
            progress(done, size)
        if importer.rules_imported:  # this connection folds and checks with them at once
            await store.refresh_rules()
    except BaseException:
        with contextlib.suppress(Exception):  # what was stored keeps its clocks safe
            await importer.reserve_clocks()
        raise
    await importer.reserve_clocks()
    return ImportReport(lines=number, imported=importer.imported, skipped=importer.skipped)
