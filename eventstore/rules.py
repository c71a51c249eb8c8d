"""The rules that give the log its meaning, stored as events in the log itself.

State machines (``[machines]``) and conflict resolvers (``[projections.resolvers]``: projection
name -> resolver spec) change what a log *means*, so they are not per-process configuration:
they live on one reserved aggregate of the log, ``_rules/current`` (subject
``<prefix>._rules.current``; users' aggregate types match ``[a-z][a-z0-9_-]*``, so a leading
``_`` never clashes). Each change is one ``rules.set`` event whose data is the whole rule set
(not a diff) plus an optional comment; its producer and recorded time say who and when.

So the rules version is that aggregate's version (0: no rules ever set), each version has a
stream sequence, and the rules in force at stream sequence S are the latest version stored at
or before S (``RuleBook.at``). Every fold applies to each event the rules in force at that
event's sequence: every process gives the same answer, with no config file. A change applies
from its sequence on; what the log meant before it is not reinterpreted.

Resolver specs are checked syntactically here (``log-order``, ``lww``, ``priority:a,b``,
``module:object``); this layer cannot import projections, so the CLI checks them fully
(importing ``module:object``) before it stores them.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import structlog

from eventstore.config import read_config
from eventstore.errors import ConfigError, EventStoreError, InvalidEvent
from eventstore.events import RULES_ID, RULES_TYPE, STATE_RE, decode_event, validate_aggregate_type
from eventstore.jetstream import StoredMessage
from eventstore.machines import Machines, MachineTable, StateMachine, machine_tables
from eventstore.versions import next_version

__all__ = [
    "RESERVED_HINT",
    "RULES_EVENT",
    "LocalRules",
    "RuleBook",
    "RuleVersion",
    "Rules",
    "check_local_config",
    "read_local_rules",
    "resolver_spec_problem",
]

log = structlog.get_logger("eventstore.rules")

RULES_EVENT = "rules.set"
RESERVED_HINT = (
    "it holds the rules stored with the log; change them with `eventstore rules set FILE` "
    "(EventStore.set_rules)"
)
_NO_DIGEST = "none"  # the digest recorded for "no rules ever set"
_NAMED_RESOLVERS = ("log-order", "log", "lww", "last-writer-wins")
_OBJECT_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_canonical = msgspec.json.Encoder(order="sorted")


def resolver_spec_problem(spec: object) -> str | None:
    """What is wrong with a resolver spec's syntax, or None (``log-order``, ``lww``,
    ``priority:producer1,producer2`` or ``package.module:object``; imports are not tried)."""
    if not isinstance(spec, str):
        return f"a resolver spec is a string, not {type(spec).__name__}"
    text = spec.strip()
    if text in _NAMED_RESOLVERS:
        return None
    if text.startswith("priority:"):
        if not [p for p in text[len("priority:") :].split(",") if p.strip()]:
            return "priority: needs at least one producer name (priority:agent-a,agent-b)"
        return None
    if _OBJECT_SPEC.fullmatch(text):
        return None
    return (
        f"unknown resolver {spec!r}: use log-order, lww, priority:producer1,producer2 or "
        "package.module:object"
    )


class Rules(msgspec.Struct, frozen=True, kw_only=True):
    """One complete rule set: the state machines by aggregate type and the resolver spec by
    projection name. Kept in one canonical form (sorted, transitions unique), so that equal
    rules are equal structs with equal ``digest``."""

    machines: dict[str, MachineTable] = {}
    resolvers: dict[str, str] = {}

    def __post_init__(self) -> None:
        machines = {
            name: MachineTable(t.initial, sorted({(a, b) for a, b in t.transitions}))
            for name, t in sorted(self.machines.items())
        }
        resolvers = {k: v.strip() for k, v in sorted(self.resolvers.items())}
        msgspec.structs.force_setattr(self, "machines", machines)
        msgspec.structs.force_setattr(self, "resolvers", resolvers)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> Rules:
        """The ``[machines]`` and ``[projections.resolvers]`` tables of a parsed TOML file
        (``ConfigError`` naming ``source`` if either is malformed)."""
        tables = machine_tables(data, source)
        projections = data.get("projections", {})
        resolvers = projections.get("resolvers", {}) if isinstance(projections, dict) else {}
        if not isinstance(resolvers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in resolvers.items()
        ):
            raise ConfigError(
                f"{source}: [projections.resolvers] must map projection names to resolver specs "
                '(entities = "lww")'
            )
        rules = cls(machines=tables, resolvers=resolvers)
        rules.check(source)
        return rules

    @classmethod
    def from_toml(cls, path: str | Path) -> Rules:
        """The two rule tables of the TOML file ``path`` (the file's other tables are ignored);
        a missing or broken file is the ``ConfigError`` every config file gets."""
        if not str(path).strip():
            raise ConfigError("a rules file is needed: a TOML file with [machines] tables")
        found = read_config(path)
        assert found is not None
        data, source = found
        return cls.from_mapping(data, source)

    def problems(self) -> list[str]:
        """What makes these rules unusable (bad aggregate types, state names, resolver specs)."""
        out: list[str] = []
        for name, table in self.machines.items():
            try:
                validate_aggregate_type(name)
            except InvalidEvent as exc:
                out.append(f"[machines.{name}]: {exc}")
                continue
            states = {table.initial, *(s for pair in table.transitions for s in pair)}
            bad = sorted(s for s in states if not STATE_RE.fullmatch(s))
            if bad:
                out.append(f"[machines.{name}]: state {bad[0]!r} is not 1-128 printable characters")
        for projection, spec in self.resolvers.items():
            if not projection:
                out.append("[projections.resolvers]: a projection name must not be empty")
            elif problem := resolver_spec_problem(spec):
                out.append(f"[projections.resolvers] {projection}: {problem}")
        return out

    def check(self, source: str = "rules") -> None:
        """``ConfigError`` (one line, naming ``source``) if the rules are unusable."""
        if problems := self.problems():
            raise ConfigError(f"{source}: {problems[0]}")

    def machines_registry(self) -> Machines:
        """These machines as the registry producers and folds check transitions with."""
        return Machines(
            StateMachine(name, t.initial, frozenset(t.transitions))
            for name, t in self.machines.items()
        )

    @property
    def digest(self) -> str:
        """A stable digest of the rules: equal rules, equal digest, in every process."""
        return hashlib.sha256(_canonical.encode(self)).hexdigest()[:16]

    def to_data(self) -> dict[str, Any]:
        """The rules as the JSON object a ``rules.set`` event carries (without its comment)."""
        out: dict[str, Any] = msgspec.json.decode(_canonical.encode(self))  # JSON: no tuples
        return out


class _RulesData(msgspec.Struct, frozen=True, kw_only=True):
    """The data of a ``rules.set`` event."""

    machines: dict[str, MachineTable] = {}
    resolvers: dict[str, str] = {}
    comment: str | None = None


class RuleVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One version of the rules as stored in the log: who set it, when, where, and what."""

    version: int
    seq: int
    recorded_at: datetime | None = None
    producer: str = ""
    comment: str | None = None
    rules: Rules = Rules()

    @property
    def digest(self) -> str:
        return self.rules.digest

    def describe(self) -> str:
        return f"rules version {self.version} (digest {self.digest}, seq {self.seq})"


class RuleBook:
    """Every version of the rules, in log order; ``at(seq)`` is the one in force at a seq.

    ``learn(msg)`` takes the messages of the rules subject in log order (each once; older
    ones are ignored), so the store's loading, its live refresh and a runner reading the
    whole log can all feed one book. A message takes a version by the log's version rule
    (``eventstore.versions``), like any aggregate's; one that is not a valid ``rules.set``
    event of a usable rule set changes nothing (with a warning), in every process alike.
    """

    def __init__(self, versions: Iterable[RuleVersion] = ()) -> None:
        self._versions = sorted(versions, key=lambda v: v.seq)
        self._seqs = [v.seq for v in self._versions]
        self._count = self._versions[-1].version if self._versions else 0
        self.last_seq = self._seqs[-1] if self._seqs else 0
        self.changes = 0  # bumped by every new version: folds notice it
        self._machines: dict[int, Machines] = {}
        self._digests: dict[int, str] = {}
        self._listeners: list[Callable[[RuleVersion], None]] = []
        # Why the rules could not be read (the server refused this client): raised by every
        # question about them, never answered with "no rules".
        self.unreadable: EventStoreError | None = None

    @classmethod
    def fixed(cls, machines: Machines | None = None) -> RuleBook:
        """A book whose one version holds ``machines`` everywhere (for folds in tests and
        tools that bring their own machines)."""
        tables = {
            m.aggregate_type: MachineTable(m.initial, sorted(m.transitions)) for m in machines or ()
        }
        return cls([RuleVersion(version=0, seq=0, rules=Rules(machines=tables))])

    # -- reading ---------------------------------------------------------------------------

    def at(self, seq: int) -> RuleVersion | None:
        """The version in force at stream sequence ``seq`` (None: no rules then)."""
        if self.unreadable is not None:
            raise self.unreadable
        i = bisect.bisect_right(self._seqs, seq)
        return self._versions[i - 1] if i else None

    def span(self, seq: int) -> tuple[RuleVersion | None, int, int]:
        """The version in force at ``seq`` and the sequences ``[lo, hi)`` it is in force for."""
        if self.unreadable is not None:
            raise self.unreadable
        i = bisect.bisect_right(self._seqs, seq)
        lo = self._seqs[i - 1] if i else -1
        hi = self._seqs[i] if i < len(self._seqs) else 1 << 64
        return (self._versions[i - 1] if i else None), lo, hi

    @property
    def current(self) -> RuleVersion | None:
        """The version in force now (the latest stored), or None if no rules were ever set."""
        return self._versions[-1] if self._versions else None

    @property
    def version(self) -> int:
        """The rules aggregate's version: 0 before any ``set_rules``."""
        return self._count

    @property
    def history(self) -> list[RuleVersion]:
        return list(self._versions)

    def digest_at(self, seq: int) -> str:
        """The digest of the rules in force at ``seq`` (``none``: no rules then)."""
        version = self.at(seq)
        if version is None:
            return _NO_DIGEST
        if (digest := self._digests.get(version.version)) is None:  # asked once per batch
            digest = self._digests[version.version] = version.digest
        return digest

    def describe_at(self, seq: int) -> str:
        """``rules version N (digest ..., seq S)`` in force at ``seq``, or "no rules"."""
        version = self.at(seq)
        return "no rules (version 0)" if version is None else version.describe()

    def machines_of(self, version: RuleVersion | None) -> Machines:
        """The machine registry of ``version`` (built once per version)."""
        if version is None:
            return Machines()
        got = self._machines.get(version.version)
        if got is None:
            got = self._machines[version.version] = version.rules.machines_registry()
        return got

    def machines_at(self, seq: int) -> Machines:
        return self.machines_of(self.at(seq))

    def on_change(self, listener: Callable[[RuleVersion], None]) -> None:
        """Call ``listener(version)`` for every version learnt from now on."""
        self._listeners.append(listener)

    # -- learning --------------------------------------------------------------------------

    def learn(self, msg: StoredMessage) -> RuleVersion | None:
        """Take one message of the rules subject (in log order); the new version, if any."""
        if msg.seq <= self.last_seq:
            return None
        self.last_seq = msg.seq
        taken = next_version(self._count, msg.data)
        if taken is None:
            log.warning("a message on the rules subject takes no version: ignored", seq=msg.seq)
            return None
        self._count = taken
        try:
            event = decode_event(msg.data, seq=msg.seq, recorded_at=msg.recorded_at)
            if (event.aggregate_type, event.aggregate_id, event.type) != (
                RULES_TYPE,
                RULES_ID,
                RULES_EVENT,
            ):
                raise InvalidEvent(f"it is a {event.type} event of {event.aggregate_type}")
            data = msgspec.convert(event.data, _RulesData)
            rules = Rules(machines=data.machines, resolvers=data.resolvers)
            if problems := rules.problems():
                raise InvalidEvent(problems[0])
        except (InvalidEvent, msgspec.ValidationError) as exc:
            log.warning(
                "a message on the rules subject is not a usable rule set: the rules in force "
                "stay as they were",
                seq=msg.seq, version=taken, reason=str(exc),
            )  # fmt: skip
            return None
        version = RuleVersion(
            version=taken, seq=msg.seq, recorded_at=msg.recorded_at, producer=event.producer,
            comment=data.comment, rules=rules,
        )  # fmt: skip
        self._versions.append(version)
        self._seqs.append(version.seq)
        self.changes += 1
        for listener in self._listeners:
            listener(version)
        return version


class LocalRules(NamedTuple):
    """The rule tables a local config file declares: no source of meaning, only checked
    against the rules stored with the log (``check``)."""

    source: str
    rules: Rules
    machines: bool  # the file has a [machines] table
    resolvers: bool  # the file has a [projections.resolvers] table

    def check(self, book: RuleBook) -> None:
        """``ConfigError`` (one line) if a declared table differs from the rules in force in
        ``book``; identical tables are accepted."""
        current = book.current
        stored = current.rules if current is not None else Rules()
        for declared, table, mine, theirs in (
            (self.machines, "[machines]", self.rules.machines, stored.machines),
            (self.resolvers, "[projections.resolvers]", self.rules.resolvers, stored.resolvers),
        ):
            if declared and mine != theirs:
                raise ConfigError(
                    f"{self.source} declares {table} that differ from the rules stored with the "
                    f"log (version {book.version}); the log's rules are the only ones used: run "
                    f"`eventstore rules set {self.source}` to change them, or delete the tables "
                    f"from {self.source}"
                )


def read_local_rules(path: str | Path | None) -> LocalRules | None:
    """The rule tables of a local config file (``path``, else ``EVENTSTORE_CONFIG``), checked
    as tables (``ConfigError`` before anything connects), or None if it declares none."""
    found = read_config(path)
    if found is None:
        return None
    data, source = found
    projections = data.get("projections")
    has_resolvers = isinstance(projections, dict) and "resolvers" in projections
    if "machines" not in data and not has_resolvers:
        return None
    return LocalRules(source, Rules.from_mapping(data, source), "machines" in data, has_resolvers)


def check_local_config(path: str | Path | None, book: RuleBook) -> None:
    """Refuse a local config file whose ``[machines]`` or ``[projections.resolvers]`` differ
    from the rules in force in ``book`` (see ``LocalRules.check``)."""
    local = read_local_rules(path)
    if local is not None:
        local.check(book)
