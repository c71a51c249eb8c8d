"""Which projections a worker runs, and how: built-in names, ``module:object``, the config file.

The ``[projections]`` table of the TOML configuration (``--config`` / ``EVENTSTORE_CONFIG``, the
same file that declares ``[machines]``)::

    [projections]
    load = ["entities", "myapp.projections:orders"]  # default: ["entities"]
    snapshot_every = 100       # versions between snapshots of an aggregate
    snapshot_keep = 5          # newest snapshots kept per aggregate, as they are
    snapshot_spacing = 100     # older ones kept every this many versions (default: every; 0: none)
    snapshot_interval = 300    # seconds between periodic snapshots (0: off)
    keep_events = true         # copy each event into the file: time travel reads it locally
    batch_size = 20000         # messages per transaction at most
    batch_delay = 0.0          # seconds a batch waits for more messages at most

Conflict resolvers are not configured here: they are part of the rules stored with the log
(``eventstore rules set FILE`` takes a file's ``[projections.resolvers]`` table). A local
``[projections.resolvers]`` table is only accepted when it equals the stored one.

Names given with ``--projection`` are added to ``load``. A worker records the ``module:object``
of each custom projection in its database (``projections.origins``), so readers of that file
name it by its projection name alone. A ``module:object`` names a
``Projection`` instance or a ``Projection`` subclass (instantiated without arguments), nothing
else: a name is never a reason to call an arbitrary function (``os:system``), so the object is
checked before anything is called. To configure an instance, make it a module attribute
(``orders = Orders(resolver=LastWriterWins())``) and name that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from eventstore import MAX_INT, ConfigError, read_config
from projections.conflicts import resolver_from_spec
from projections.entities import EntitiesProjection
from projections.objects import import_object, make_without_arguments
from projections.origins import remember_origin
from projections.projection import Projection
from projections.runner import RunnerSettings
from projections.snapshots import SnapshotPolicy

__all__ = [
    "BUILTIN_PROJECTIONS",
    "ProjectionsConfig",
    "load_config",
    "load_projection",
    "load_projections",
    "needs_origin",
]

BUILTIN_PROJECTIONS: dict[str, Callable[[], Projection[Any]]] = {
    "entities": EntitiesProjection,
}
MAX_BATCH_SIZE = 1_000_000  # messages folded in memory before one commit, at most


class ProjectionsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[projections]`` table."""

    load: list[str] = msgspec.field(default_factory=lambda: ["entities"])
    snapshot_every: int = 100
    snapshot_keep: int = 5
    snapshot_interval: float = 300.0
    snapshot_spacing: int | None = None
    keep_events: bool = True
    batch_size: int = 20000
    batch_delay: float = 0.0
    resolvers: dict[str, str] = {}

    def runner_settings(self) -> RunnerSettings:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f"[projections] batch_size must be 1 to {MAX_BATCH_SIZE}")
        for name in ("batch_delay", "snapshot_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"[projections] {name} must be a finite number of seconds >= 0")
        for name in ("snapshot_every", "snapshot_keep", "snapshot_spacing"):  # and the minimum
            if (getattr(self, name) or 0) > MAX_INT:
                raise ConfigError(f"[projections] {name} must be at most {MAX_INT}")
        return RunnerSettings(
            batch_size=self.batch_size,
            batch_delay=self.batch_delay,
            snapshots=SnapshotPolicy(
                every=self.snapshot_every,
                keep=self.snapshot_keep,
                interval=self.snapshot_interval,
                spacing=self.snapshot_spacing,
            ),
            keep_events=self.keep_events,
        )


def load_config(path: str | Path | None = None) -> ProjectionsConfig:
    """The ``[projections]`` table of ``path``, else of ``EVENTSTORE_CONFIG``, else defaults."""
    found = read_config(path)
    if found is None:
        return ProjectionsConfig()
    data, p = found
    try:
        config = msgspec.convert(data.get("projections", {}), ProjectionsConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{p}: [projections] {exc}") from exc
    try:
        config.runner_settings()  # refused now, not once a worker has connected
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    return config


def needs_origin(spec: str) -> bool:
    """Whether ``spec`` is a plain name that is not built in: only a database that recorded
    where that projection came from (``projections.origins``) can say what it is."""
    name = spec.strip()
    return name not in BUILTIN_PROJECTIONS and ":" not in name


def load_projection(
    spec: str, resolver: str | None = None, *, origin: str | None = None
) -> Projection[Any]:
    """A built-in projection by name, or the ``module:object`` it names; a plain name that is
    neither, from ``origin``: the spec a database recorded for it (``recorded_origin``)."""
    name = spec.strip()
    if name in BUILTIN_PROJECTIONS:
        projection = BUILTIN_PROJECTIONS[name]()
    elif ":" in name:
        projection = _projection_object(spec, import_object(name, "projection"))
        remember_origin(projection, name)
    elif origin is not None:
        projection = _from_origin(name, origin)
    else:
        raise ConfigError(
            f"unknown projection {spec!r}: built-in ones are {sorted(BUILTIN_PROJECTIONS)}, "
            "others are given as package.module:object (or by the name a worker registered "
            "them under in the database read)"
        )
    if resolver:
        projection.resolver = resolver_from_spec(resolver)
        projection.validate()
    return projection


def _from_origin(name: str, origin: str) -> Projection[Any]:
    """The projection a database recorded as ``name``, loaded from its ``origin``."""
    try:
        projection = load_projection(origin)
    except ConfigError as exc:
        cause = exc.__cause__
        if isinstance(cause, ImportError):
            raise ConfigError(
                f"projection {name} was registered from {origin}, which cannot be imported here "
                f"({cause}): put it on PYTHONPATH"
            ) from exc
        raise ConfigError(f"projection {name} was registered from {origin}: {exc}") from exc
    if projection.name != name:
        raise ConfigError(
            f"projection {name} was registered from {origin}, which now makes a projection "
            f"named {projection.name!r}: run it by its module:object name"
        )
    return projection


def _projection_object(spec: str, obj: Any) -> Projection[Any]:
    """The Projection ``obj`` is (an instance) or makes (a subclass, called with no arguments).

    Anything else is refused before it is called: a name must never run arbitrary code.
    """
    if isinstance(obj, Projection):
        return obj
    if not (isinstance(obj, type) and issubclass(obj, Projection)):
        raise ConfigError(
            f"projection {spec!r} is not a Projection: name a Projection instance or a "
            f"Projection subclass, not a {type(obj).__name__}"
        )
    made = make_without_arguments(obj, spec, "projection")
    if not isinstance(made, Projection):  # a __new__ returning something else
        raise ConfigError(f"projection {spec!r} did not make a Projection")
    return made


def load_projections(
    specs: Sequence[str] = (),
    config: ProjectionsConfig | None = None,
    origins: Mapping[str, str] | None = None,
) -> list[Projection[Any]]:
    """The configured projections plus ``specs``, each once (with the resolvers of their code:
    the rules stored with the log may give them others, from the rules' sequence on);
    ``origins``: the specs a database recorded for plain names (``load_projection``)."""
    cfg = config or ProjectionsConfig()
    out: list[Projection[Any]] = []
    seen: set[str] = set()
    for spec in [*cfg.load, *specs]:
        if spec in seen:
            continue
        seen.add(spec)
        projection = load_projection(spec, origin=(origins or {}).get(spec.strip()))
        if projection.name in {p.name for p in out}:
            raise ConfigError(f"two projections are named {projection.name!r}")
        out.append(projection)
    if not out:
        raise ConfigError("no projection to run: [projections] load is empty and none was given")
    return out
