"""Loading projections: built-in names, module:object, and the [projections] config table."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventstore import ConfigError
from projections import (
    EntitiesProjection,
    FunctionResolver,
    LastWriterWins,
    LogOrder,
    ProjectionsConfig,
    SourcePriority,
    load_config,
    load_projection,
    load_projections,
    resolver_from_spec,
)

MODULE = """
from projections import Projection, EntitiesProjection

class Orders(Projection):
    name = "orders"
    version = "3"
    aggregate_types = frozenset({"order"})

    def apply(self, state, event):
        return {**state, "n": state.get("n", 0) + 1}

orders = Orders()

def make_named():
    return EntitiesProjection(name="entities-copy")

not_a_projection = 42

def pick_event(ctx):
    return "event"
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "myplugin.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "myplugin"


def test_projections_load_by_builtin_name_and_by_module_object(plugin: str) -> None:
    """``entities`` is built in; ``module:object`` takes an instance or a class, not a factory."""
    assert isinstance(load_projection("entities"), EntitiesProjection)
    assert load_projection(f"{plugin}:orders").name == "orders"
    made = load_projection(f"{plugin}:Orders")
    assert (made.name, made.version, made.follows("order"), made.follows("agent")) == (
        "orders",
        "3",
        True,
        False,
    )
    with pytest.raises(ConfigError, match="not a Projection"):  # never called: it could be anything
        load_projection(f"{plugin}:make_named")


def test_unloadable_projections_are_config_errors(plugin: str) -> None:
    """Unknown names, missing modules and objects that are not projections say what is wrong."""
    with pytest.raises(ConfigError, match="built-in ones are"):
        load_projection("nope")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_projection("no_such_module_xyz:thing")
    with pytest.raises(ConfigError, match="is not a Projection"):
        load_projection(f"{plugin}:not_a_projection")


def test_the_config_table_chooses_projections_and_batching(plugin: str, tmp_path: Path) -> None:
    """``[projections]`` names what to load and how; ``--projection`` adds to it. Its
    ``[projections.resolvers]`` give nothing: resolvers are the rules stored with the log."""
    config = tmp_path / "eventstore.toml"
    config.write_text(
        '[machines.agent]\ninitial = "Created"\ntransitions = [["Created", "Running"]]\n\n'
        "[projections]\n"
        'load = ["entities"]\nsnapshot_every = 10\nsnapshot_keep = 2\nsnapshot_interval = 0\n'
        "batch_size = 100\n\n"
        "[projections.resolvers]\n"
        f'entities = "priority:ops,qa"\norders = "{plugin}:pick_event"\n'
    )
    cfg = load_config(config)
    loaded = load_projections([f"{plugin}:orders", "entities"], cfg)
    assert [p.name for p in loaded] == ["entities", "orders"]
    assert not isinstance(loaded[0].resolver, SourcePriority)
    assert not isinstance(loaded[1].resolver, FunctionResolver)
    settings = cfg.runner_settings()
    assert (settings.batch_size, settings.snapshots.every, settings.snapshots.keep) == (100, 10, 2)
    assert settings.snapshots.interval == 0
    config.write_text("[projections]\nsnapshot_evry = 3\n")
    with pytest.raises(ConfigError, match="snapshot_evry"):
        load_config(config)
    config.write_text("[projections]\nsnapshot_every = 0\n")
    with pytest.raises(ConfigError, match="snapshot_every must be at least 1"):
        load_config(config).runner_settings()


def test_without_a_config_the_worker_runs_entities(monkeypatch: pytest.MonkeyPatch) -> None:
    """No config file: the built-in ``entities`` projection with log-order resolution."""
    monkeypatch.delenv("EVENTSTORE_CONFIG", raising=False)
    loaded = load_projections([], load_config())
    assert [p.name for p in loaded] == ["entities"]
    assert isinstance(loaded[0].resolver, LogOrder)


def test_resolver_specs() -> None:
    """Resolvers are named log-order, lww, priority:a,b or module:function."""
    assert isinstance(resolver_from_spec("log-order"), LogOrder)
    assert isinstance(resolver_from_spec("lww"), LastWriterWins)
    assert resolver_from_spec("priority: a , b").name == "priority:a,b"
    with pytest.raises(ConfigError, match="unknown resolver"):
        resolver_from_spec("coin-flip")
    with pytest.raises(ConfigError, match="at least one producer"):
        resolver_from_spec("priority:")


def test_the_config_table_sets_retention_and_the_events_copy(tmp_path: Path) -> None:
    """``snapshot_spacing`` and ``keep_events`` reach the runner (defaults: every regular
    snapshot kept, the copy on); a spacing that is no multiple of ``snapshot_every`` is refused
    at load, with the key named."""
    config = tmp_path / "eventstore.toml"
    assert ProjectionsConfig().runner_settings().keep_events is True
    assert ProjectionsConfig().runner_settings().snapshots.thin == 100
    config.write_text(
        "[projections]\nsnapshot_every = 10\nsnapshot_spacing = 50\nkeep_events = false\n"
    )
    settings = load_config(config).runner_settings()
    assert (settings.snapshots.thin, settings.keep_events) == (50, False)
    config.write_text("[projections]\nsnapshot_every = 10\nsnapshot_spacing = 0\n")
    assert load_config(config).runner_settings().snapshots.thin == 0
    config.write_text("[projections]\nsnapshot_every = 10\nsnapshot_spacing = 25\n")
    with pytest.raises(ConfigError, match="snapshot_spacing must be a multiple of snapshot_every"):
        load_config(config)
