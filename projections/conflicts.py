"""Conflicts: two events on one aggregate whose writers had not seen each other.

The rule (DESIGN.md) is decidable from the log alone: an event conflicts when its vector clock
is concurrent with the clock of the aggregate's previous event. The log still puts them in one
order; a resolver decides which of the two takes effect last:

- ``LogOrder`` (default): the log's order stands, the later event wins.
- ``LastWriterWins``: the larger (Lamport time, producer) wins.
- ``SourcePriority``: the producer matching an earlier entry of an ordered list of names or
  ``fnmatch`` patterns wins (unmatched ones rank last; a tie keeps log order).
- ``FunctionResolver``: a user function, given a ``ConflictContext``, returns a ``Resolution``.

When the previous event wins, the state is refolded as ``apply(apply(base, event), previous)``
where ``base`` is the state before the previous event: both events take effect, the winner's
last. Resolvers see nothing but the two events and the states of the fold, so the result is the
same on every replay.

Two concurrent events of a projection that says what each writes (``Projection.touches``, e.g.
the merge-patch ``entities``) are a conflict only when they write overlapping paths
(``touched_paths``, ``mergepatch.paths_overlap``): disjoint writes merge the same in either
order. Every conflict is recorded (both event ids, both clocks, the resolution:
``projections.records.ConflictRecord``, stored by ``projections.recorder``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from eventstore import ConfigError, Event
from projections.objects import import_object, make_without_arguments

__all__ = [
    "ConflictContext",
    "FunctionResolver",
    "LastWriterWins",
    "LogOrder",
    "Resolution",
    "Resolver",
    "SourcePriority",
    "resolver_from_spec",
    "touched_paths",
]

Winner = Literal["event", "previous", "merged"]
Touches = Callable[[Event], Iterable[str | Sequence[str]] | None]


class Resolution(NamedTuple):
    """The state after a conflict, and whose change took effect last."""

    winner: Winner
    state: Any


@dataclass(frozen=True, slots=True)
class ConflictContext:
    """Everything a resolver may look at; ``previous`` and ``base`` are set for resolvers that
    declare ``needs_history`` (all but log order)."""

    aggregate_type: str
    aggregate_id: str
    event: Event
    previous: Event | None
    base: Any
    current: Any
    apply: Callable[[Any, Event], Any]

    def prefer_event(self) -> Resolution:
        """The event takes effect after the previous one (the log's order)."""
        return Resolution("event", self.apply(self.current, self.event))

    def prefer_previous(self) -> Resolution:
        """The previous event takes effect after this one."""
        if self.previous is None:
            raise RuntimeError("prefer_previous needs a resolver with needs_history = True")
        return Resolution("previous", self.apply(self.apply(self.base, self.event), self.previous))

    def merged(self, state: Any) -> Resolution:
        """A state of the resolver's own making."""
        return Resolution("merged", state)


@runtime_checkable
class Resolver(Protocol):
    """Decides a conflict. ``name`` is recorded with every conflict it resolves."""

    name: str
    needs_history: bool

    def resolve(self, ctx: ConflictContext) -> Resolution: ...


class LogOrder:
    """The log's order stands: the event that was stored later wins."""

    name = "log-order"
    needs_history = False

    def resolve(self, ctx: ConflictContext) -> Resolution:
        return ctx.prefer_event()


class LastWriterWins:
    """The larger (Lamport time, producer name) takes effect last."""

    name = "lww"
    needs_history = True

    def resolve(self, ctx: ConflictContext) -> Resolution:
        prev = ctx.previous
        assert prev is not None
        if (ctx.event.lamport, ctx.event.producer) >= (prev.lamport, prev.producer):
            return ctx.prefer_event()
        return ctx.prefer_previous()


class SourcePriority:
    """Producers matching an earlier entry of ``order`` win over later ones and over unmatched
    ones. An entry is a producer name or an ``fnmatch`` pattern (``balancer-*``, ``agent-?``,
    ``node-[ab]``, case-sensitive); a producer ranks at the first entry it matches."""

    needs_history = True

    def __init__(self, order: Sequence[str]) -> None:
        if not order:
            raise ConfigError("source priority needs at least one producer name")
        self.order = tuple(order)
        self.name = "priority:" + ",".join(self.order)
        self._rank: dict[str, int] = {}  # producer -> rank, filled as producers are met

    def rank(self, producer: str) -> int:
        """The index of the first entry ``producer`` matches (``len(order)`` if none)."""
        found = self._rank.get(producer)
        if found is None:
            found = next(
                (i for i, pattern in enumerate(self.order) if fnmatchcase(producer, pattern)),
                len(self.order),
            )
            if len(self._rank) < 100_000:  # producers are few; a hostile log cannot grow it
                self._rank[producer] = found
        return found

    def resolve(self, ctx: ConflictContext) -> Resolution:
        prev = ctx.previous
        assert prev is not None
        mine = self.rank(ctx.event.producer)
        theirs = self.rank(prev.producer)
        if theirs < mine:
            return ctx.prefer_previous()
        return ctx.prefer_event()


class FunctionResolver:
    """A user function ``fn(ctx) -> Resolution`` (or ``"event"`` / ``"previous"``).

    It must be deterministic: it sees the same context on every replay and must decide the
    same way (no clocks, randomness or I/O).
    """

    needs_history = True

    def __init__(
        self, fn: Callable[[ConflictContext], Resolution | str], name: str | None = None
    ) -> None:
        self.fn = fn
        self.name = name or f"function:{getattr(fn, '__module__', '?')}.{fn.__qualname__}"

    def resolve(self, ctx: ConflictContext) -> Resolution:
        out = self.fn(ctx)
        if isinstance(out, Resolution):
            return out
        if out == "event":
            return ctx.prefer_event()
        if out == "previous":
            return ctx.prefer_previous()
        raise TypeError(
            f"resolver {self.name} returned {out!r}; return a Resolution, 'event' or 'previous'"
        )


def resolver_from_spec(spec: str) -> Resolver:
    """``log-order``, ``lww``, ``priority:a,b-*,c`` (names or fnmatch patterns) or
    ``package.module:object``: a resolver instance, a resolver class (made with no arguments)
    or a Python function ``fn(ctx)``."""
    text = spec.strip()
    if text in ("", "log-order", "log"):
        return LogOrder()
    if text in ("lww", "last-writer-wins"):
        return LastWriterWins()
    if text.startswith("priority:"):
        return SourcePriority([p.strip() for p in text[len("priority:") :].split(",") if p.strip()])
    if ":" in text:
        return _resolver_object(text, import_object(text, "resolver"))
    raise ConfigError(
        f"unknown resolver {spec!r}: use log-order, lww, priority:producer1,producer2 "
        "or package.module:object"
    )


def _resolver_object(spec: str, obj: Any) -> Resolver:
    """The resolver ``obj`` is, makes (a resolver class, called with no arguments) or wraps (a
    Python function ``fn(ctx)``, called at conflicts only). Anything else is refused uncalled."""
    if isinstance(obj, type):
        if not callable(getattr(obj, "resolve", None)):
            raise ConfigError(
                f"resolver {spec!r} is a class without a resolve(ctx) method: not a resolver"
            )
        made = make_without_arguments(obj, spec, "resolver")
        if not isinstance(made, Resolver):
            raise ConfigError(f"resolver {spec!r} lacks a name or needs_history attribute")
        return made
    if isinstance(obj, Resolver):
        return obj
    if inspect.isfunction(obj):
        try:
            inspect.signature(obj).bind(None)
        except TypeError as exc:
            raise ConfigError(
                f"resolver function {spec!r} must take one argument (the conflict): {exc}"
            ) from exc
        return FunctionResolver(obj, name=f"function:{spec}")
    raise ConfigError(
        f"resolver {spec!r} is not a resolver: name a Resolver instance, a resolver class "
        f"(made with no arguments) or a Python function fn(ctx), not a {type(obj).__name__}"
    )


def touched_paths(touches: Touches, event: Event) -> list[list[str]] | None:
    """What ``event`` writes, by a projection's ``touches``, as a list of key paths (a plain
    key is a path of one); None: unknown, so it conflicts with every concurrent event."""
    paths = touches(event)
    if paths is None:
        return None
    return [[p] if isinstance(p, str) else list(p) for p in paths]
