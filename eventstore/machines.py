"""State machines per aggregate type: which transitions an aggregate may take, from where.

An aggregate of a type with a machine starts in the machine's ``initial`` state; an event with
a transition ``(from, to)`` is accepted only if ``from`` is the aggregate's current state and
the pair is declared. Events without a transition leave the state as it is. The check runs
before publishing, and the publish carries the expected last sequence, so no concurrent
writer can slip a state change in between the check and the write.

The machines in force are part of the rules stored with the log (``eventstore.rules``): set
from the ``[machines]`` tables of a TOML file with ``eventstore rules set FILE``::

    [machines.request]
    initial = "Queued"
    transitions = [["Queued", "Routed"], ["Routed", "Processing"]]

``Machines`` is the registry a producer checks appends against (``EventStore.machines``, kept
equal to the stored rules in force) and a fold checks events against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec

from eventstore.errors import ConfigError, InvalidTransition
from eventstore.events import Transition, validate_aggregate_type

__all__ = ["MachineTable", "Machines", "StateMachine", "machine_tables"]


class StateMachine(msgspec.Struct, frozen=True):
    """The allowed transitions of one aggregate type."""

    aggregate_type: str
    initial: str
    transitions: frozenset[tuple[str, str]]

    def check(self, aggregate_id: str, current: str | None, step: Transition) -> str:
        """Return the state after ``step``, or raise ``InvalidTransition``."""
        state = self.initial if current is None else current
        pair = (step.from_, step.to)
        if step.from_ != state:
            raise InvalidTransition(
                self.aggregate_type, aggregate_id, state, pair,
                f"invalid transition {step.from_} -> {step.to} for {self.aggregate_type}/"
                f"{aggregate_id}: its current state is {state}",
            )  # fmt: skip
        if pair not in self.transitions:
            allowed = sorted(to for frm, to in self.transitions if frm == state)
            raise InvalidTransition(
                self.aggregate_type, aggregate_id, state, pair,
                f"invalid transition {step.from_} -> {step.to} for {self.aggregate_type}/"
                f"{aggregate_id}: from {state} the machine allows "
                + (", ".join(allowed) if allowed else "nothing (final state)"),
            )  # fmt: skip
        return step.to


class Machines:
    """The registry of state machines, by aggregate type."""

    def __init__(self, machines: Iterable[StateMachine] = ()) -> None:
        self._by_type: dict[str, StateMachine] = {m.aggregate_type: m for m in machines}

    def declare(
        self, aggregate_type: str, initial: str, transitions: Iterable[tuple[str, str]]
    ) -> StateMachine:
        validate_aggregate_type(aggregate_type)
        pairs = frozenset((str(a), str(b)) for a, b in transitions)
        machine = StateMachine(aggregate_type, initial, pairs)
        self._by_type[aggregate_type] = machine
        return machine

    def get(self, aggregate_type: str) -> StateMachine | None:
        return self._by_type.get(aggregate_type)

    def __contains__(self, aggregate_type: object) -> bool:
        return aggregate_type in self._by_type

    def __iter__(self) -> Any:
        return iter(self._by_type.values())

    def replace(self, other: Machines) -> None:
        """Hold exactly ``other``'s machines from now on: the store's registry, shared with its
        committer, follows the rules stored with the log this way."""
        self._by_type = dict(other._by_type)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> Machines:
        """The ``[machines.*]`` tables of a parsed config file (``source`` names it in errors)."""
        out = cls()
        for name, table in machine_tables(data, source).items():
            try:
                out.declare(name, table.initial, table.transitions)
            except Exception as exc:
                raise ConfigError(f"{source}: [machines.{name}]: {exc}") from exc
        return out


_State = Annotated[str, msgspec.Meta(min_length=1)]


class MachineTable(msgspec.Struct, frozen=True):
    """One ``[machines.<aggregate type>]`` table: the initial state and the allowed steps."""

    initial: _State
    transitions: list[tuple[_State, _State]] = msgspec.field(default_factory=list)


def _machine_table(spec: object, where: str) -> MachineTable:
    """``spec`` validated with ``msgspec.convert``; its error becomes one that says what to
    write."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table")
    try:
        return msgspec.convert(spec, MachineTable)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "`initial`" in text or "`$.initial`" in text:
            raise ConfigError(f'{where} needs initial = "State"') from exc
        raise ConfigError(f'{where} transitions must be a list of ["From", "To"] pairs') from exc


def machine_tables(data: Mapping[str, Any], source: str = "config") -> dict[str, MachineTable]:
    """The ``[machines.*]`` tables of a parsed TOML file, each checked (``ConfigError`` naming
    ``source`` and the table, saying what to write)."""
    machines = data.get("machines", {})
    if not isinstance(machines, dict):
        raise ConfigError(f"{source}: [machines] must be a table")
    return {
        name: _machine_table(spec, f"{source}: [machines.{name}]")
        for name, spec in machines.items()
    }
