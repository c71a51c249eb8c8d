"""State machines: declared in code or TOML, enforced on append."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventstore import (
    ConfigError,
    EventStore,
    InvalidTransition,
    NewEvent,
    RuleBook,
    Rules,
    StreamSettings,
    Transition,
    check_local_config,
)

CONFIG = """
[machines.request]
initial = "Queued"
transitions = [["Queued", "Routed"], ["Routed", "Processing"], ["Processing", "Completed"],
               ["Processing", "Failed"]]
"""


def test_toml_config_declares_machines(tmp_path: Path) -> None:
    """A [machines.X] table becomes a machine with its initial state and transitions."""
    path = tmp_path / "es.toml"
    path.write_text(CONFIG)
    machine = Rules.from_toml(path).machines_registry().get("request")
    assert machine is not None
    assert machine.initial == "Queued"
    assert ("Routed", "Processing") in machine.transitions
    assert machine.check("r1", None, Transition("Queued", "Routed")) == "Routed"


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EVENTSTORE_CONFIG names the local config checked against the stored rules when no
    path is given: its [machines] differ from "no rules", so it is refused."""
    path = tmp_path / "es.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("EVENTSTORE_CONFIG", str(path))
    with pytest.raises(ConfigError, match=r"declares \[machines\] that differ"):
        check_local_config(None, RuleBook())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[machines.request]\ntransitions = []", "initial"),
        ('[machines.request]\ninitial = "A"\ntransitions = [["A"]]', "pairs"),
        ('[machines.Bad]\ninitial = "A"', "aggregate type"),
        ('[machines.request]\ninitial = ""', "initial"),
        ("[machines.request]\ninitial = 1", "initial"),
        ('[machines.request]\ninitial = "A"\ntransitions = [["A", ""]]', "pairs"),
        ('[machines.request]\ninitial = "A"\ntransitions = "A"', "pairs"),
        ("[machines]\nrequest = 1", r"\[machines.request\] must be a table"),
        ("machines = 1", r"\[machines\] must be a table"),
        ("not toml [", "TOML"),
    ],
)
def test_invalid_config_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    """A broken config file raises ConfigError naming the problem."""
    path = tmp_path / "es.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        Rules.from_toml(path)


def test_missing_config_file() -> None:
    """A config path that does not exist is a ConfigError."""
    with pytest.raises(ConfigError, match="not found"):
        Rules.from_toml("/nonexistent/es.toml")


async def test_append_enforces_transitions(nats_url: str, settings: StreamSettings) -> None:
    """Allowed steps are stored; a step from the wrong state or an undeclared one is refused."""
    rules = Rules.from_mapping(__import__("tomllib").loads(CONFIG))
    async with await EventStore.connect(nats_url, producer="router", stream=settings) as store:
        await store.set_rules(rules)
        await store.append("request", "r1", NewEvent("Queued", {"prompt": "hi"}))
        await store.append("request", "r1", NewEvent("Routed", transition="Queued:Routed"))
        with pytest.raises(InvalidTransition, match="current state is Routed") as err:
            await store.append("request", "r1", NewEvent("Done", transition="Queued:Routed"))
        assert err.value.current == "Routed"
        with pytest.raises(InvalidTransition, match="allows Processing"):
            await store.append("request", "r1", NewEvent("Done", transition="Routed:Completed"))
        # A batch with one bad step stores nothing at all.
        with pytest.raises(InvalidTransition):
            await store.append(
                "request",
                "r1",
                [
                    NewEvent("Started", transition="Routed:Processing"),
                    NewEvent("Oops", transition="Processing:Queued"),
                ],
            )
        assert [e.type async for e in store.read("request", "r1")] == ["Queued", "Routed"]
        await store.append("request", "r1", NewEvent("Started", transition="Routed:Processing"))

    # A new process (no cache, no config) learns the machines and the current state from the
    # log and keeps enforcing.
    async with await EventStore.connect(nats_url, producer="router2", stream=settings) as store:
        with pytest.raises(InvalidTransition, match="current state is Processing"):
            await store.append("request", "r1", NewEvent("Again", transition="Queued:Routed"))
        done = await store.append(
            "request", "r1", NewEvent("Completed", transition="Processing:Completed")
        )
        assert done.version == 4
