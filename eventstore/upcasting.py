"""Upcasting and typed events: the code that brings old ``data`` to its type's current schema.

Every event carries the ``schema`` number of its ``data``. When a type's payload changes shape,
its producers write the new schema and an upcaster per step (``1 -> 2``, ``2 -> 3``) turns an
old payload into the next one, so every reader (``EventStore.read*``/``follow``, ``history``,
``tail``, the projections' fold in the worker, ``rebuild``, ``verify``, time travel) sees the
current schema only; ``export`` keeps the stored bytes. A type may also register a msgspec
Struct for its current schema: ``Event.typed()`` decodes the data into it, and a payload that
does not match is refused like a failed upcast.

Upcasters are code, not rules: they cannot be stored with the log. They live in one registry
per process (``UPCASTERS``), filled by importing the module that declares them
(``@upcaster``/``@typed_event`` at import time). Every process that reads must import it:
workers and CLI commands load the modules of the config's ``[upcasters] modules`` table
(``load_upcasters``), and a projection's own module registers whatever it declares.

This module knows nothing of the envelope (``eventstore.events`` applies it to events), so
the event types can ask it for a type's latest schema without an import circle.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from eventstore.config import read_config
from eventstore.errors import ConfigError, InvalidEvent, UpcastFailed
from eventstore.jsonvalues import MAX_INT, check_json

__all__ = [
    "UPCASTERS",
    "Upcaster",
    "Upcasters",
    "load_upcasters",
    "typed_event",
    "upcaster",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
F = TypeVar("F", bound=Upcaster)
S = TypeVar("S", bound=type[msgspec.Struct])


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:2000]
    except Exception:
        return type(exc).__name__


class Upcasters:
    """A registry of upcasters per (event type, schema) and of typed Structs per event type.

    ``register(type, n, f)``: ``f(data)`` turns schema ``n`` data into schema ``n + 1``; it must
    return a new dict (JSON data, as ``NewEvent`` accepts) and not mutate its argument. A type's
    current schema is the highest one its registrations reach.
    """

    def __init__(self) -> None:
        self._steps: dict[str, dict[int, Upcaster]] = {}
        self._structs: dict[str, tuple[type[msgspec.Struct], int]] = {}
        self._by_struct: dict[type[msgspec.Struct], str] = {}
        # The types with any registration and their current schema: folds test membership
        # per event (one dict lookup for the types nobody registered).
        self.latest: dict[str, int] = {}

    def register(self, event_type: str, schema: int, upcast: Upcaster) -> None:
        """Register ``upcast`` from ``schema`` to ``schema + 1`` of ``event_type``."""
        _check_type(event_type)
        _check_schema(schema, "an upcaster's schema")
        if not callable(upcast):
            raise ConfigError(f"the upcaster of {event_type} schema {schema} is not callable")
        steps = self._steps.get(event_type, {})
        old = steps.get(schema)
        if old is not None and _name(old) != _name(upcast):  # importing a module again is fine
            raise ConfigError(
                f"two upcasters for {event_type} schema {schema}: {_name(old)} and "
                f"{_name(upcast)}; register one per step"
            )
        struct = self._structs.get(event_type)
        if struct is not None and schema + 1 > struct[1]:
            raise ConfigError(
                f"{event_type}'s typed data {_name(struct[0])} is schema {struct[1]}, but this "
                f"upcaster makes schema {schema + 1}: register the upcasters first, or give "
                "typed_event the schema its Struct describes"
            )
        self._steps[event_type] = {**steps, schema: upcast}
        self._update(event_type)

    def upcaster(self, event_type: str, schema: int) -> Callable[[F], F]:
        """Decorator form of :meth:`register`: ``@upcaster("Renamed", 1)``."""

        def decorate(func: F) -> F:
            self.register(event_type, schema, func)
            return func

        return decorate

    def register_type(
        self, event_type: str, struct: type[msgspec.Struct], schema: int | None = None
    ) -> None:
        """``struct`` is the shape of ``event_type``'s data at ``schema`` (default: the type's
        current schema), which becomes at least its current schema."""
        _check_type(event_type)
        if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
            raise ConfigError(f"the typed data of {event_type} must be a msgspec.Struct class")
        if schema is None:
            schema = self.latest.get(event_type, 1)
        _check_schema(schema, "a typed event's schema")
        old = self._structs.get(event_type)
        if old is not None and (_name(old[0]), old[1]) != (_name(struct), schema):
            raise ConfigError(
                f"{event_type} already has the typed data {_name(old[0])} (schema {old[1]})"
            )
        self._structs[event_type] = (struct, schema)
        self._by_struct[struct] = event_type
        self._update(event_type)

    def typed_event(self, event_type: str, schema: int | None = None) -> Callable[[S], S]:
        """Class decorator form of :meth:`register_type`: ``@typed_event("Renamed", 2)``."""

        def decorate(cls: S) -> S:
            self.register_type(event_type, cls, schema)
            return cls

        return decorate

    def _update(self, event_type: str) -> None:
        steps = self._steps.get(event_type, {})
        struct = self._structs.get(event_type)
        self.latest[event_type] = max(
            max((n + 1 for n in steps), default=1), struct[1] if struct else 1
        )

    def type_of(self, struct: type[msgspec.Struct]) -> str | None:
        """The event type a Struct class was registered for, if any."""
        return self._by_struct.get(struct)

    def current(
        self, event_type: str, schema: int, data: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """``(schema, data)`` brought to ``event_type``'s current schema and checked against
        its Struct; unchanged for a type nobody registered. ``UpcastFailed`` otherwise."""
        latest = self.latest.get(event_type)
        if latest is None:
            return schema, data
        if schema > latest:
            raise UpcastFailed(
                event_type, schema, "upcast",
                f"{event_type} schema {schema} is newer than the latest this process knows "
                f"({latest}): import the module that registers its upcasters",
            )  # fmt: skip
        steps = self._steps.get(event_type, {})
        start = schema
        while schema < latest:
            step = steps.get(schema)
            if step is None:
                raise UpcastFailed(
                    event_type, start, "upcast",
                    f"no upcaster registered for {event_type} from schema {schema} to "
                    f"{schema + 1} (current: {latest})",
                )  # fmt: skip
            try:
                data = step(data)
                check_json(data, "data")
            except Exception as exc:  # the user's code: any failure is this event's
                reason = exc.reason if isinstance(exc, InvalidEvent) else _describe(exc)
                raise UpcastFailed(
                    event_type, start, "upcast",
                    f"upcasting {event_type} from schema {schema} to {schema + 1} failed "
                    f"({_name(step)}): {reason}",
                ) from exc  # fmt: skip
            schema += 1
        if event_type in self._structs:
            self._decode(event_type, start, data)
        return schema, data

    def decode(self, event_type: str, schema: int, data: dict[str, Any]) -> Any:
        """``data`` (at ``schema``) as ``event_type``'s registered Struct, upcast first."""
        if event_type not in self._structs:
            raise InvalidEvent(
                f"no typed data is registered for event type {event_type!r} "
                "(eventstore.typed_event)"
            )
        _, current = self.current(event_type, schema, data)
        return self._decode(event_type, schema, current)

    def _decode(self, event_type: str, schema: int, data: dict[str, Any]) -> Any:
        struct = self._structs[event_type][0]
        try:
            return msgspec.convert(data, struct)
        except msgspec.ValidationError as exc:
            raise UpcastFailed(
                event_type, schema, "typed",
                f"data of {event_type} does not match {struct.__name__}: {exc}",
            ) from exc  # fmt: skip

    def encode(self, struct: msgspec.Struct) -> dict[str, Any]:
        """A Struct's fields as the JSON object that is stored as ``data``."""
        try:
            out = msgspec.to_builtins(struct)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(
                f"event data {type(struct).__name__} cannot be encoded: {exc}"
            ) from exc
        if not isinstance(out, dict):
            raise InvalidEvent(f"event data {type(struct).__name__} must encode as an object")
        return out

    def load(self, modules: list[str], source: str = "") -> None:
        """Import ``modules`` (each registers its upcasters and typed events when imported)."""
        where = f"{source}: " if source else ""
        for module in modules:
            if not isinstance(module, str) or not module.strip():
                raise ConfigError(f"{where}[upcasters] modules must be module names")
            try:
                importlib.import_module(module.strip())
            except ConfigError as exc:
                raise ConfigError(f"{where}upcasters module {module}: {exc}") from exc
            except Exception as exc:
                raise ConfigError(
                    f"{where}upcasters module {module} cannot be imported: {_describe(exc)}"
                ) from exc


def _check_type(event_type: str) -> None:
    # Same pattern as eventstore.events.EVENT_TYPE_RE (not imported: events imports us).
    if not isinstance(event_type, str) or not _TYPE_RE.fullmatch(event_type):
        raise ConfigError(f"event type {event_type!r} is not a valid event type name")


def _check_schema(schema: int, what: str) -> None:
    if type(schema) is not int or not 1 <= schema < MAX_INT:
        raise ConfigError(f"{what} must be an integer from 1, got {schema!r}")


_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}")

UPCASTERS = Upcasters()
"""The process's registry: every reader and producer of this process uses it."""

upcaster = UPCASTERS.upcaster
typed_event = UPCASTERS.typed_event


class _UpcastersTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    modules: list[str] = []


def load_upcasters(path: str | Path | None = None) -> list[str]:
    """Import the ``[upcasters] modules`` of the config file (``path``, else
    ``EVENTSTORE_CONFIG``); returns them. A broken table or module is a ``ConfigError``."""
    found = read_config(path)
    if found is None:
        return []
    tables, source = found
    try:
        table = msgspec.convert(tables.get("upcasters", {}), _UpcastersTable)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: [upcasters] {exc}") from exc
    UPCASTERS.load(table.modules, source)
    return list(table.modules)
