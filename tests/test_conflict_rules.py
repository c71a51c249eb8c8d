"""The conflict rules of merge-patch projections and of the priority resolver, folded from real
events on a real nats-server into real SQLite files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eventstore import Event, EventStore, NewEvent, StreamSettings
from projections import (
    EntitiesProjection,
    Projection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    SourcePriority,
    current_state,
    list_conflicts,
    resolver_from_spec,
)
from projections.mergepatch import patch_paths, paths_overlap


async def fold(
    store: EventStore, path: Path, projection: Projection[Any], batch_size: int = 20000
) -> tuple[Any, list[Any]]:
    """Catch up into ``path``; the state of agent/a and every conflict recorded."""
    async with await ProjectionDB.open(path) as db:
        settings = RunnerSettings(batch_size=batch_size)
        await Runner(store, db, [projection], settings=settings).catch_up()
        state = await current_state(db, projection, "agent", "a")
        return state.state, await list_conflicts(db, projection.name)


async def test_blind_writes_to_different_keys_are_no_conflict(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Two producers that never read each other, writing disjoint keys (and nested paths that
    are not prefixes of each other): no conflict record, both changes applied, also when the
    previous event comes back from SQLite between two batches."""
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        await alice.append("agent", "a", NewEvent("Created", {"model": "gpt-4", "cfg": {"x": 1}}))
        await bob.append("agent", "a", NewEvent("Tuned", {"max_tokens": 1024, "cfg": {"y": 2}}))
        await alice.append("agent", "a", NewEvent("Noted", {"note": "hi"}))
        for batch in (20000, 1):
            state, conflicts = await fold(
                alice, tmp_path / f"d{batch}.db", EntitiesProjection(), batch
            )
            assert conflicts == []
            assert state == {"model": "gpt-4", "cfg": {"x": 1, "y": 2}, "max_tokens": 1024,
                             "note": "hi"}  # fmt: skip


async def test_writes_to_the_same_key_conflict_and_are_resolved_as_before(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """The same key, a nested path under a key the other replaced, and two transitions (both
    write ``status``) are conflicts, resolved by the resolver and recorded, across batches."""
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        await alice.append("agent", "a", NewEvent("Created", {"model": "gpt-4", "cfg": 0}))
        await bob.append("agent", "a", NewEvent("Tuned", {"model": "gpt-4o"}))  # same key
        await alice.append("agent", "a", NewEvent("Set", {"model": "m", "cfg": {"deep": 1}}))
        await bob.append("agent", "a", NewEvent("Go", transition=("Created", "Running")))
        await alice.append("agent", "a", NewEvent("Stop", transition=("Running", "Stopped")))
        for batch in (20000, 1):
            state, conflicts = await fold(
                alice, tmp_path / f"s{batch}.db", EntitiesProjection(), batch
            )
            # seq 3: alice's model after bob's; seq 5: both transitions write status. Seq 4
            # (bob's status after alice's model and cfg) writes nothing seq 3 wrote.
            assert [(c.seq, c.event_producer, c.previous_producer) for c in conflicts] == [
                (2, "bob", "alice"),
                (3, "alice", "bob"),
                (5, "alice", "bob"),
            ]
            assert {c.resolver for c in conflicts} == {"log-order"}
            assert state == {"model": "m", "cfg": {"deep": 1}, "status": "Stopped"}


class Counter(Projection[dict[str, Any]]):
    """A custom projection that does not say what it writes: today's rule."""

    name = "counter"

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        return {**state, event.producer: state.get(event.producer, 0) + 1}


class KeyedCounter(Counter):
    """The same, declaring that each event writes its producer's key only."""

    name = "keyed"

    def touches(self, event: Event) -> Iterable[str | Sequence[str]] | None:
        return [event.producer]


async def test_custom_projections_keep_the_rule_unless_they_declare_touches(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """Without ``touches`` every concurrent pair is a conflict; with it, disjoint ones are not;
    a subclass of entities with an apply of its own falls back to the old rule too."""

    class Upper(EntitiesProjection):
        name = "upper"

        def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
            return {k.upper(): v for k, v in super().apply(state, event).items()}

    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        await alice.append("agent", "a", NewEvent("A", {"a": 1}))
        await bob.append("agent", "a", NewEvent("B", {"b": 1}))
        for projection, expected in ((Counter(), [2]), (KeyedCounter(), []), (Upper(), [2])):
            _, conflicts = await fold(alice, tmp_path / f"{projection.name}.db", projection)
            assert [c.seq for c in conflicts] == expected, projection.name


def test_patch_paths_and_overlap() -> None:
    """Paths are the leaves a patch writes; an empty object writes its key; prefixes overlap."""
    assert patch_paths({"a": 1, "b": {"c": None, "d": {}}, "e": {}}) == [
        ("a",), ("b", "c"), ("b", "d"), ("e",)
    ]  # fmt: skip
    assert paths_overlap([("a", "b")], [("a",)]) and paths_overlap([("a",)], [("a", "b")])
    assert not paths_overlap([("a", "b")], [("a", "c")])
    assert not paths_overlap([], [("a",)]) and not paths_overlap([("a",)], [])
    assert paths_overlap([()], [("z",)])  # a patch that is not an object writes everything


async def test_priority_patterns_rank_producers_by_the_first_matching_pattern(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """``priority:balancer-*,config-?`` from real producers balancer-1, balancer-2 and
    config-a: a balancer beats the config source whatever the log order (the first matching
    pattern ranks a producer); exact names still work."""
    async with (
        await EventStore.connect(nats_url, producer="balancer-1", stream=settings) as b1,
        await EventStore.connect(nats_url, producer="balancer-2", stream=settings) as b2,
        await EventStore.connect(nats_url, producer="config-a", stream=settings) as cfg,
    ):
        await b1.append("agent", "a", NewEvent("Route", {"max_tokens": 1024}))
        await cfg.append("agent", "a", NewEvent("Config", {"max_tokens": 256}))  # loses
        await b2.append("agent", "a", NewEvent("Route", {"max_tokens": 2048}))  # beats config-a
        for spec in ("priority:balancer-*,config-?", "priority:balancer-[12],config-a"):
            projection = EntitiesProjection(resolver=resolver_from_spec(spec))
            name = spec.replace(":", "_").replace(",", "_").replace("*", "s").replace("?", "q")
            state, conflicts = await fold(b1, tmp_path / f"{name[:40]}.db", projection)
            assert [(c.seq, c.winner) for c in conflicts] == [(2, "previous"), (3, "event")]
            assert state == {"max_tokens": 2048}
        exact = SourcePriority(["config-a"])
        assert (exact.rank("config-a"), exact.rank("balancer-1")) == (0, 1)
        patterns = SourcePriority(["balancer-*", "config-?"])
        assert [patterns.rank(p) for p in ("balancer-2", "config-a", "config-ab", "x")] == [
            0, 1, 2, 2
        ]  # fmt: skip
