"""How the fold's results become rows of a projection database, and rows become them again.

The row shapes match the columns of ``projections.recorder``'s statements, which own the SQL:
a state (``StateCodec``), a snapshot, a conflict and a quarantined message. Encoding is done
where the fold produces them (a snapshot is encoded at once: the fold goes on), so a batch's
commit only binds rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from eventstore import MAX_INT, Event, StoredMessage
from projections.conflicts import touched_paths
from projections.fold import (
    AggregateState,
    LastEvent,
    Rejected,
    loose_body,
    safe_text,
)
from projections.projection import Projection
from projections.records import ConflictRecord, QuarantineRecord
from projections.times import from_us, to_us

__all__ = [
    "SlotBatch",
    "StateCodec",
    "conflict_record",
    "conflict_row",
    "quarantine_record",
    "quarantine_row",
    "snapshot_row",
]

Key = tuple[str, str]


class _Resume(msgspec.Struct, omit_defaults=True):
    """The part of an aggregate's position that nobody queries: kept as one JSON column."""

    machine_state: str | None = None
    last: LastEvent | None = None
    previous: Event | None = None
    fences: dict[str, int] | None = None  # projections.fencing


_encode = msgspec.json.Encoder().encode
_resume_decoder = msgspec.json.Decoder(_Resume)
_clock_decoder = msgspec.json.Decoder(dict[str, int])


class StateCodec:
    """Turns a projection's ``AggregateState`` into a row and back."""

    def __init__(self, projection: Projection[Any]) -> None:
        self.projection = projection
        self.name = projection.name
        self._state = msgspec.json.Decoder(projection.state_type)

    def encode_state(self, state: Any) -> str:
        return _encode(state).decode()

    def decode_state(self, text: str | bytes) -> Any:
        return self._state.decode(text)

    def row(self, agg: AggregateState) -> tuple[Any, ...]:
        """``(projection, <STATE_COLUMNS>)`` for the states table."""
        last = agg.last
        if last is not None and not isinstance(last, LastEvent):
            last = LastEvent(
                last.id, last.seq, last.version, dict(last.vclock), last.lamport, last.producer,
                touched_paths(self.projection.touches, last),
            )  # fmt: skip
        resume = _Resume(agg.machine_state, last, agg.previous, agg.fences or None)
        return (
            self.name,
            agg.aggregate_type,
            agg.aggregate_id,
            agg.version,
            agg.seq,
            _encode(agg.state).decode(),
            _encode(agg.vclock or {}).decode(),
            agg.lamport,
            to_us(agg.recorded_at),
            _encode(resume).decode(),
            None if agg.previous is None else _encode(agg.base).decode(),
            agg.snapshot_version,
        )

    def load(self, row: Sequence[Any]) -> AggregateState:
        """An ``AggregateState`` from the columns ``STATE_COLUMNS`` (in that order)."""
        (
            agg_type,
            agg_id,
            version,
            seq,
            state,
            vclock,
            lamport,
            recorded_us,
            resume,
            base,
            snapshot_version,
        ) = row
        r = _resume_decoder.decode(resume)
        return AggregateState(
            agg_type,
            agg_id,
            self._state.decode(state),
            version=version,
            seq=seq,
            vclock=_clock_decoder.decode(vclock),
            lamport=lamport,
            recorded_at=from_us(recorded_us),
            machine_state=r.machine_state,
            last=r.last,
            previous=r.previous,
            base=self._state.decode(base) if base is not None else None,
            snapshot_version=snapshot_version,
            fences=r.fences,
        )


def snapshot_row(
    codec: StateCodec, agg: AggregateState, code_version: str, taken_us: int
) -> tuple[Any, ...]:
    """A snapshots row for ``agg`` as it is now (encoded at once: the fold goes on)."""
    row = codec.row(agg)
    # states row: projection, type, id, version, seq, state, vclock, lamport, rec, resume, base, sv
    return (*row[:5], code_version, *row[5:11], taken_us)


def conflict_row(c: ConflictRecord) -> tuple[Any, ...]:
    """The conflicts row of a recorded conflict (``CONFLICT_COLUMNS``)."""
    return (
        c.projection,
        c.aggregate_type,
        c.aggregate_id,
        c.seq,
        c.version,
        c.event_id,
        c.event_producer,
        c.event_lamport,
        _encode(c.event_vclock).decode(),
        c.previous_id,
        c.previous_seq,
        c.previous_producer,
        c.previous_lamport,
        _encode(c.previous_vclock).decode(),
        c.resolver,
        c.winner,
        to_us(c.recorded_at),
    )


def quarantine_row(
    projection: str, msg: StoredMessage, key: Key | None, rejected: Rejected
) -> tuple[Any, ...]:
    """The row for a rejected message; version and id are read loosely from the body (when it
    is JSON at all, and only a version SQLite can hold); every text is made storable."""
    version: Any = None
    event_id: Any = None
    body = loose_body(msg.data)
    if isinstance(body, dict):
        v = body.get("version")
        version = v if type(v) is int and -MAX_INT - 1 <= v <= MAX_INT else None
        i = body.get("id")
        event_id = safe_text(i, 256) if isinstance(i, str) else None
    return (
        projection,
        msg.seq,
        safe_text(msg.subject),
        key[0] if key else None,
        key[1] if key else None,
        version,
        event_id,
        rejected.kind,
        safe_text(rejected.reason),
        bytes(msg.data),
        to_us(msg.recorded_at),
    )


@dataclass(eq=False)
class SlotBatch:
    """What one batch produced for one projection, for ``Recorder.commit_batch``."""

    projection: Projection[Any]
    codec: StateCodec
    changed: Mapping[Key, AggregateState] = field(default_factory=dict)
    snapshots: list[tuple[Any, ...]] = field(default_factory=list)
    conflicts: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    writes: bool = True  # the projection keeps read models (it overrides ``write``)
    periodic: bool = False  # take the periodic snapshot of every changed aggregate now


def conflict_record(r: Sequence[Any]) -> ConflictRecord:
    """A ``ConflictRecord`` from a conflicts row (the columns of ``conflict_row``)."""
    return ConflictRecord(
        projection=r[0],
        aggregate_type=r[1],
        aggregate_id=r[2],
        seq=r[3],
        version=r[4],
        event_id=r[5],
        event_producer=r[6],
        event_lamport=r[7],
        event_vclock=_clock_decoder.decode(r[8]),
        previous_id=r[9],
        previous_seq=r[10],
        previous_producer=r[11],
        previous_lamport=r[12],
        previous_vclock=_clock_decoder.decode(r[13]),
        resolver=r[14],
        winner=r[15],
        recorded_at=from_us(r[16]),
    )


def quarantine_record(r: Sequence[Any]) -> QuarantineRecord:
    """A ``QuarantineRecord`` from a quarantine row (projection, seq, subject, kind, reason,
    aggregate_type, aggregate_id, version, event_id, recorded_us, data)."""
    return QuarantineRecord(
        projection=r[0],
        seq=r[1],
        subject=r[2],
        kind=r[3],
        reason=r[4],
        aggregate_type=r[5],
        aggregate_id=r[6],
        version=r[7],
        event_id=r[8],
        recorded_at=from_us(r[9]),
        data=bytes(r[10] or b"").decode(errors="replace"),
    )
