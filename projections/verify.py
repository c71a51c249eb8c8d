"""Verify: fold the log again from nothing and compare with what the projection database holds.

Nothing stored is trusted: no checkpoint cache, no snapshot, no state. Each projection's part
of the log (up to its checkpoint, read in the same read transaction as the rows compared, so a
running worker does not get in the way) is folded from version 1 with the projection's
``apply``, and every aggregate's version, sequence, state, vector clock and Lamport time is
compared, as well as every stored snapshot of the current code version, the set of quarantined
messages, the recorded conflicts and the local copy of the events (``projections.eventcopy``,
and that its runs list exactly its rows: ``projections.eventruns``).
Every difference is reported; none is repaired (that is ``rebuild``).

Two things fail verification that no rebuild changes, because the log itself holds them:

- a valid event that the fold could not apply (a duplicate or gap version, a refused
  transition, an ``apply`` or a resolver that failed, a state that could not be stored): it
  was acknowledged to whoever published it, and the state does not contain it. So is an
  undecodable message published as an event (its ``Nats-Msg-Id`` header, which producers
  set, is the id its body names: a producer wrote something no reader can decode).
  Quarantined messages that are not events at all are explained by the quarantine.
- a checkpoint past the log's head: the database was folded from another stream, or from a
  stream that was since recreated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from eventstore import EventStore, RuleBook, StoredMessage
from projections.db import ProjectionDB
from projections.eventcopy import copied, copy_differs
from projections.eventruns import run_problems
from projections.fold import (
    AggregateState,
    Folder,
    MessageDecoder,
    Rejected,
    describe_error,
    loose_body,
)
from projections.projection import Projection
from projections.recorder import Recorder
from projections.rows import StateCodec
from projections.rulecheck import rules_problem

__all__ = ["Mismatch", "VerifyReport", "verify"]

Key = tuple[str, str]
_FIELDS = ("version", "seq", "state", "vclock", "lamport")


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    """One difference between the log's fold and the database."""

    projection: str
    what: str
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    expected: Any = None
    actual: Any = None
    detail: str = ""

    def describe(self) -> str:
        where = (
            f" {self.aggregate_type}/{self.aggregate_id}" if self.aggregate_type is not None else ""
        )
        text = f"{self.projection}{where}: {self.what}"
        if self.detail:
            text += f" ({self.detail})"
        return text + f": log gives {self.expected!r}, database has {self.actual!r}"


class VerifyReport(msgspec.Struct, kw_only=True):
    """What was compared and every mismatch found."""

    checkpoints: dict[str, int]
    aggregates: int = 0
    messages: int = 0
    snapshots: int = 0
    mismatches: list[Mismatch] = []

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict[str, Any]:
        """What was compared and how many mismatches were found (the last line of output)."""
        return {
            "ok": self.ok,
            "checkpoints": self.checkpoints,
            "aggregates": self.aggregates,
            "messages": self.messages,
            "snapshots": self.snapshots,
            "mismatches": len(self.mismatches),
        }

    def lines(self) -> list[dict[str, Any]]:
        """One object per mismatch (its description and fields), then the summary."""
        out: list[dict[str, Any]] = [
            {"mismatch": m.describe(), **msgspec.to_builtins(m)} for m in self.mismatches
        ]
        out.append(self.summary())
        return out

    def verdict(self, db: object) -> str | None:
        """What to tell the user when ``db`` failed verification (None when it passed)."""
        if self.ok:
            return None
        return (
            f"{len(self.mismatches)} mismatch(es) between the log and {db}; "
            "`eventstore rebuild` folds it again"
        )


def _view(agg: AggregateState) -> dict[str, Any]:
    return {
        "version": agg.version,
        "seq": agg.seq,
        "state": msgspec.to_builtins(agg.state),
        "vclock": agg.clock(),
        "lamport": agg.lamport,
    }


def _compare(
    out: list[Mismatch],
    name: str,
    key: Key,
    expected: AggregateState,
    actual: AggregateState,
    what: str = "",
) -> None:
    e, a = _view(expected), _view(actual)
    for f in _FIELDS:
        if e[f] != a[f]:
            out.append(
                Mismatch(
                    projection=name,
                    what=f"{what}{f} differs",
                    aggregate_type=key[0],
                    aggregate_id=key[1],
                    expected=e[f],
                    actual=a[f],
                    detail=f"at version {expected.version}",
                )
            )


class _Check:
    """One projection being verified: the independent fold and the stored rows to meet."""

    def __init__(self, projection: Projection[Any], rules: RuleBook) -> None:
        self.projection = projection
        self.codec = StateCodec(projection)
        self.folder = Folder(projection, rules)
        self.checkpoint = 0
        self.aggs: dict[Key, AggregateState] = {}
        self.snapshots: dict[tuple[str, str, int], AggregateState] = {}
        self.quarantined: set[int] = set()
        self.conflicts: dict[int, str] = {}
        self.expected_quarantine: set[int] = set()
        self.expected_conflicts: dict[int, str] = {}
        self.not_applied: list[tuple[int, Key, Rejected]] = []  # valid events quarantined
        self.unreadable: list[Mismatch] = []
        self.copy_from: int | None = None  # the copy of the events holds its messages from here


async def verify(
    store: EventStore,
    db: ProjectionDB,
    projections: Sequence[Projection[Any]],
) -> VerifyReport:
    """Compare each projection in ``db`` with an independent fold of the log, folded with
    the rules stored with the log (a file folded with other rules is a mismatch too)."""
    mismatches: list[Mismatch] = []
    checks: list[_Check] = []
    stored: dict[str, dict[Key, AggregateState]] = {}
    recorder = Recorder(db)
    async with db.snapshot():
        if (problem := await rules_problem(db, store.rules)) is not None:
            recorded, expected, checkpoint = problem
            mismatches.append(
                Mismatch(projection="*", what="folded with other rules", expected=expected,
                         actual=recorded, detail=f"at seq {checkpoint}: rebuild")
            )  # fmt: skip
        infos = {i.name: i for i in await recorder.projections()}
        copy_from = await recorder.copy_starts()
        for p in projections:
            info = infos.get(p.name)
            if info is None:
                mismatches.append(
                    Mismatch(
                        projection=p.name,
                        what="not in the database",
                        detail="start a worker with it, or rebuild",
                    )
                )
                continue
            if info.code_version != p.version:
                mismatches.append(
                    Mismatch(
                        projection=p.name,
                        what="code version differs",
                        expected=p.version,
                        actual=info.code_version,
                        detail="folded by other code: rebuild",
                    )
                )
                continue
            check = _Check(p, store.rules)
            check.checkpoint = info.checkpoint
            check.copy_from = copy_from.get(p.name)
            checks.append(check)
            stored[p.name] = {}
            for r in await recorder.state_rows(p.name):
                agg = _load(check, r, "state")
                if agg is not None:
                    stored[p.name][(r[0], r[1])] = agg
            for r in await recorder.snapshot_rows(p.name, p.version):
                snap = _load(check, r, "snapshot")
                if snap is not None:
                    check.snapshots[(snap.aggregate_type, snap.aggregate_id, snap.version)] = snap
            check.quarantined = await recorder.quarantined_seqs(p.name)
            check.conflicts = await recorder.conflict_winners(p.name)
        report = VerifyReport(checkpoints={c.projection.name: c.checkpoint for c in checks})
        head = await store.head()
        for check in checks:
            if check.checkpoint > head:
                mismatches.append(
                    Mismatch(
                        projection=check.projection.name,
                        what="checkpoint past the log's head",
                        expected=head,
                        actual=check.checkpoint,
                        detail="the database was folded from another stream, or from one that "
                        "was recreated: point --db at this stream's file, or fold it again",
                    )
                )
        top = min(head, max((c.checkpoint for c in checks), default=0))
        if top:
            await _fold_log(store, checks, top, report, mismatches, db)
        copying = [c.projection.name for c in checks if c.copy_from is not None]
        if copying:  # the copy is the file's, shared: its runs are reported once
            for t, i, what, detail in await db.run(run_problems):
                mismatches.append(Mismatch(projection=copying[0], what=what, aggregate_type=t,
                                           aggregate_id=i, detail=detail))  # fmt: skip
    for check in checks:
        name = check.projection.name
        have = stored.get(name, {})
        mismatches.extend(check.unreadable)
        for seq, key, why in check.not_applied:
            mismatches.append(
                Mismatch(
                    projection=name,
                    what="acknowledged event not applied",
                    aggregate_type=key[0],
                    aggregate_id=key[1],
                    expected=seq,
                    actual=f"quarantined ({why.kind})",
                    detail=f"the valid event at seq {seq} is quarantined as {why.kind}: "
                    f"{why.reason}",
                )
            )
        for key, agg in check.aggs.items():
            if agg.version == 0:
                continue
            report.aggregates += 1
            row = have.get(key)
            if row is None:
                mismatches.append(
                    Mismatch(
                        projection=name,
                        what="missing from the database",
                        aggregate_type=key[0],
                        aggregate_id=key[1],
                        expected=agg.version,
                        actual=None,
                    )
                )
                continue
            _compare(mismatches, name, key, agg, row)
        for key, row in have.items():
            if row.version and (key not in check.aggs or check.aggs[key].version == 0):
                mismatches.append(
                    Mismatch(
                        projection=name,
                        what="not in the log",
                        aggregate_type=key[0],
                        aggregate_id=key[1],
                        expected=None,
                        actual=row.version,
                    )
                )
        for snap_key, snap in check.snapshots.items():
            mismatches.append(
                Mismatch(
                    projection=name,
                    what="snapshot of a version the log never reached",
                    aggregate_type=snap_key[0],
                    aggregate_id=snap_key[1],
                    expected=None,
                    actual=snap.version,
                )
            )
        if check.expected_quarantine != check.quarantined:
            mismatches.append(
                Mismatch(
                    projection=name,
                    what="quarantined messages differ",
                    expected=sorted(check.expected_quarantine - check.quarantined),
                    actual=sorted(check.quarantined - check.expected_quarantine),
                    detail="sequences missing / extra",
                )
            )
        if check.expected_conflicts != check.conflicts:
            exp, act = check.expected_conflicts, check.conflicts
            mismatches.append(
                Mismatch(
                    projection=name,
                    what="recorded conflicts differ",
                    expected={s: w for s, w in exp.items() if act.get(s) != w},
                    actual={s: w for s, w in act.items() if exp.get(s) != w},
                    detail="seq: winner",
                )
            )
    report.mismatches = mismatches
    return report


def _written_as_event(msg: StoredMessage) -> bool:
    """Whether an undecodable message was still published as an event: its ``Nats-Msg-Id``
    header (which every eventstore producer sets) is the ``id`` its body names. Garbage from a
    raw client carries no such pair; a producer's own append that readers cannot decode does."""
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    if not msg_id:
        return False
    body = loose_body(msg.data)
    return isinstance(body, dict) and body.get("id") == msg_id


def _load(check: _Check, row: Any, what: str) -> AggregateState | None:
    """A stored row as an ``AggregateState``; a row that cannot be read is a mismatch."""
    try:
        return check.codec.load(row)
    except Exception as exc:  # a damaged row: report it, compare the rest
        check.unreadable.append(
            Mismatch(
                projection=check.projection.name,
                what=f"stored {what} cannot be read",
                aggregate_type=str(row[0]),
                aggregate_id=str(row[1]),
                detail=describe_error(exc),
            )
        )
        return None


async def _fold_log(
    store: EventStore,
    checks: list[_Check],
    top: int,
    report: VerifyReport,
    mismatches: list[Mismatch],
    db: ProjectionDB,
) -> None:
    decoder = MessageDecoder(store.settings.prefix)
    copies = any(c.copy_from is not None for c in checks)
    async for batch in store.raw(1, stop_seq=top):
        rows = await copied(db, batch[0].seq, batch[-1].seq) if copies else {}
        for msg in batch:
            report.messages += 1
            key = decoder.key(msg.subject)
            if key is None and msg.subject == decoder.rules_subject:
                store.rules.learn(msg)  # no aggregate's: the rules change here
                continue
            for check in checks:
                if msg.seq > check.checkpoint:
                    continue
                if key is None:
                    check.expected_quarantine.add(msg.seq)
                    continue
                if not check.projection.follows(key[0]):
                    continue
                kept = check.copy_from is not None and check.copy_from <= msg.seq
                if kept and (why := copy_differs(msg, key, rows.get(msg.seq))) is not None:
                    name, at = check.projection.name, f"at seq {msg.seq}"
                    mismatches.append(Mismatch(projection=name, what=why, aggregate_type=key[0],
                                               aggregate_id=key[1], detail=at))  # fmt: skip
                agg = check.aggs.get(key)
                if agg is None:
                    agg = check.aggs[key] = check.folder.new(key)
                before = agg.version
                out = check.folder.feed(agg, msg, key, decoder)
                if isinstance(out, Rejected):
                    check.expected_quarantine.add(msg.seq)
                    if out.kind == "fenced":  # refused on purpose: a stale lease holder
                        pass
                    elif out.kind != "undecodable" or _written_as_event(msg):
                        check.not_applied.append((msg.seq, key, out))
                elif out is not None:
                    check.expected_conflicts[msg.seq] = out.winner
                if agg.version != before:
                    snap = check.snapshots.pop((key[0], key[1], agg.version), None)
                    if snap is not None:
                        report.snapshots += 1
                        _compare(mismatches, check.projection.name, key, agg, snap, "snapshot ")
