"""The rules stored with the log (``eventstore.rules``): their one canonical form, the store's
``set_rules`` with optimistic concurrency, the reserved aggregate, the databases' record of
the rules they were folded with, and a local config's tables checked against the log's."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from eventstore import (
    ConfigError,
    EventStore,
    InvalidEvent,
    MachineTable,
    NewEvent,
    RuleBook,
    Rules,
    RulesMismatch,
    RuleVersion,
    StreamSettings,
    VersionConflict,
    check_local_config,
    resolver_spec_problem,
    rules_subject,
)
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    TimeTravel,
    list_aggregates,
    list_quarantine,
    rebuild,
    verify,
)

AGENT = MachineTable("Created", [("Created", "Running"), ("Running", "Stopped")])


def test_equal_rules_have_one_form_and_one_digest(tmp_path: Path) -> None:
    """Transition order and duplicates do not matter: equal rules, equal digest; any change
    of a machine or a resolver changes it."""
    a = Rules(machines={"agent": AGENT}, resolvers={"entities": " lww "})
    b = Rules(
        machines={"agent": MachineTable("Created", [("Running", "Stopped"), ("Created", "Running"),
                                                    ("Created", "Running")])},
        resolvers={"entities": "lww"},
    )  # fmt: skip
    assert a == b and a.digest == b.digest
    assert Rules(machines={"agent": AGENT}).digest != a.digest
    assert Rules().digest != a.digest
    path = tmp_path / "r.toml"
    path.write_text(
        '[machines.agent]\ninitial = "Created"\n'
        'transitions = [["Running", "Stopped"], ["Created", "Running"]]\n'
        '[projections]\nload = ["entities"]\n[projections.resolvers]\nentities = "lww"\n'
    )
    assert Rules.from_toml(path) == a


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("log-order", None),
        ("lww", None),
        ("priority:a,b", None),
        ("myapp.resolvers:pick", None),
        ("priority:", "at least one producer"),
        ("nope", "unknown resolver"),
        ("os:", "unknown resolver"),
    ],
)
def test_resolver_specs_are_checked_for_syntax(spec: str, problem: str | None) -> None:
    """The log layer checks a spec's form only (it cannot import projections' resolvers)."""
    found = resolver_spec_problem(spec)
    assert found is None if problem is None else (found is not None and problem in found)


def test_unusable_rules_are_one_config_error(tmp_path: Path) -> None:
    """A bad aggregate type or resolver spec in a rules file is one ConfigError naming it."""
    path = tmp_path / "r.toml"
    path.write_text('[machines._x]\ninitial = "A"\n')
    with pytest.raises(ConfigError, match=r"r.toml: \[machines._x\]"):
        Rules.from_toml(path)
    path.write_text('[projections.resolvers]\nentities = "whatever"\n')
    with pytest.raises(ConfigError, match="unknown resolver"):
        Rules.from_toml(path)


async def test_concurrent_setters_never_overwrite_each_other(
    nats_url: str, settings: StreamSettings
) -> None:
    """Two stores setting the rules at the same expected version: one wins, the other gets
    VersionConflict; the winner's version is what every store then sees."""
    one = await EventStore.connect(nats_url, producer="one", stream=settings)
    two = await EventStore.connect(nats_url, producer="two", stream=settings)
    async with one, two:
        got = await asyncio.gather(
            one.set_rules(Rules(machines={"agent": AGENT}), expected_version=0),
            two.set_rules(Rules(resolvers={"entities": "lww"}), expected_version=0),
            return_exceptions=True,
        )
        won = [g for g in got if isinstance(g, RuleVersion)]
        lost = [g for g in got if isinstance(g, VersionConflict)]
        assert len(won) == 1 and len(lost) == 1, got
        assert (lost[0].expected, lost[0].actual) == (0, 1)
        # The default expectation is the version the store has seen: still no overwrite.
        with pytest.raises(VersionConflict):
            await (two if won[0].producer == "one" else one).set_rules(Rules(), expected_version=0)
    async with await EventStore.connect(nats_url, producer="three", stream=settings) as three:
        assert three.rules.version == 1 and three.rules.current == won[0]


async def test_the_reserved_aggregate_is_written_by_set_rules_only(
    store: EventStore, tmp_path: Path
) -> None:
    """`_rules` cannot be appended to, another `_x` type is not a type at all; a junk message
    on the rules subject changes no rules, and no fold takes `_rules` for an aggregate (no
    state, no quarantine row), while another `_rules` subject is quarantined."""
    with pytest.raises(InvalidEvent, match="reserved"):
        await store.append("_rules", "current", NewEvent("rules.set", {"machines": {}}))
    with pytest.raises(InvalidEvent, match="invalid"):
        await store.append("_x", "a", NewEvent("E"))
    version = await store.set_rules(Rules(machines={"agent": AGENT}))
    await store.js.publish(rules_subject(store.settings.prefix), b'{"version": 2, "junk": 1}')
    await store.js.publish(f"{store.settings.prefix}._rules.other", b"{}")
    await store.append("agent", "a", NewEvent("Up", transition="Created:Running"))
    seen = [ev.type async for ev in store.read("_rules", "current")]
    assert seen == ["rules.set"]  # the junk takes version 2 by the version rule, unread
    book = RuleBook([version])
    async for batch in store.raw():
        for msg in batch:
            if msg.subject == rules_subject(store.settings.prefix):
                book.learn(msg)
    assert book.version == 2 and book.current == version  # junk: a position, no new rules
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        runner = Runner(store, db, [EntitiesProjection()])
        assert await runner.catch_up() == await store.head()
        assert await list_aggregates(db, "entities") == [("agent", "a")]
        quarantined = [(q.subject, q.kind) for q in await list_quarantine(db, "entities")]
        assert quarantined == [(f"{store.settings.prefix}._rules.other", "undecodable")]


async def test_a_new_entity_starts_in_its_machines_initial_state(
    store: EventStore, tmp_path: Path
) -> None:
    """The built-in entities state of a type with a machine has `status` = `initial` from its
    first event on, when that event carries no transition; a type without a machine has none."""
    await store.set_rules(Rules(machines={"agent": AGENT}))
    await store.append("agent", "a", NewEvent("AgentCreated", {"model": "m"}))
    await store.append("note", "n", NewEvent("Noted", {"text": "t"}))
    async with await ProjectionDB.open(tmp_path / "p.db") as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
        tt = TimeTravel(store, EntitiesProjection(), db)
        assert (await tt.current("agent", "a")).state == {"model": "m", "status": "Created"}
        assert (await tt.current("note", "n")).state == {"text": "t"}
        assert (await tt.state_at("agent", "a", version=1)).state["status"] == "Created"


async def test_a_database_folded_with_other_rules_is_refused(
    store: EventStore, tmp_path: Path
) -> None:
    """A file whose recorded rules differ from the log's at its checkpoint (another digest, or
    none recorded in a file older than the rules) is refused by a runner and by time travel
    with RulesMismatch naming the file and the remedy, reported by verify, cured by rebuild."""
    await store.set_rules(Rules(machines={"agent": AGENT}))
    await store.append("agent", "a", NewEvent("Up", transition="Created:Running"))
    path = tmp_path / "p.db"
    async with await ProjectionDB.open(path) as db:
        await Runner(store, db, [EntitiesProjection()]).catch_up()
    for damage in (
        "UPDATE meta SET value = 'deadbeefdeadbeef' WHERE key = 'rules_digest'",
        "DELETE FROM meta WHERE key IN ('rules_version', 'rules_digest')",  # an older layout
    ):
        con = sqlite3.connect(path)
        with con:
            con.execute(damage)
        con.close()
        async with await ProjectionDB.open(path) as db:
            with pytest.raises(RulesMismatch, match=r"p\.db was folded with .*eventstore rebuild"):
                await Runner(store, db, [EntitiesProjection()]).open()
            with pytest.raises(RulesMismatch):
                await TimeTravel(store, EntitiesProjection(), db).state_at("agent", "a", version=1)
            report = await verify(store, db, [EntitiesProjection()])
            assert [m.what for m in report.mismatches] == ["folded with other rules"]
        await rebuild(store, path, [EntitiesProjection()])
        async with await ProjectionDB.open(path) as db:
            await Runner(store, db, [EntitiesProjection()]).open()  # accepted again
            assert not (await verify(store, db, [EntitiesProjection()])).mismatches


async def test_a_local_config_is_checked_against_the_stored_rules(
    store: EventStore, tmp_path: Path
) -> None:
    """A config declaring [machines] or resolvers other than the stored ones is one
    ConfigError naming the file, the stored version and the remedy; the same tables, or none,
    are accepted."""
    config = tmp_path / "es.toml"
    config.write_text(
        '[machines.agent]\ninitial = "Created"\ntransitions = [["Created", "Running"]]\n'
    )
    with pytest.raises(ConfigError, match=r"version 0\); .*eventstore rules set .*es.toml"):
        check_local_config(config, store.rules)
    await store.set_rules(Rules.from_toml(config))
    check_local_config(config, store.rules)
    config.write_text('[projections]\nload = ["entities"]\n')
    check_local_config(config, store.rules)
    config.write_text('[projections.resolvers]\nentities = "lww"\n')
    with pytest.raises(ConfigError, match=r"declares \[projections.resolvers\] .*version 1"):
        check_local_config(config, store.rules)
