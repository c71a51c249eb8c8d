"""Property: whatever a raw client publishes between the product's appends, the appends are
folded exactly and every raw message that is not an event is quarantined.

Each example gets a stream of its own and a script of steps: appends through
``EventStore.append`` and raw publishes (plain ``js.publish``, or the NATS protocol by hand for
subjects that are not UTF-8) of arbitrary bytes, arbitrary JSON and envelopes broken in one of
many ways (wrong field types, integers past 2**63, floats, ``NaN``, nesting past the limit,
invalid UTF-8, another aggregate's event, an empty body). The runner (with two batch sizes),
``rebuild`` and ``verify`` must each end; the states must equal a brute-force fold of the
appended events, every raw message must be quarantined as undecodable, and no appended event.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from helpers_projections import rfc7386, stored_states
from hypothesis import HealthCheck, given
from hypothesis import event as hypothesis_event
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_hostile_messages import leftovers, nested, publish_unreadable

from eventstore import EventStore, NewEvent, StreamSettings
from projections import (
    EntitiesProjection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    list_quarantine,
    rebuild,
    verify,
)

IDS = ["a", "b", "c.d"]
BIG = 2**63

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
data = st.dictionaries(st.sampled_from(["x", "y", "z", "n"]), values, max_size=3)

# Any JSON at all, hostile numbers included (a random object is never a complete envelope).
any_json = st.recursive(
    st.one_of(json_scalars, st.integers(), st.floats()),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)

# One way to break an otherwise valid envelope: (field, value) set on it, or a raw splice.
BREAKS: list[tuple[str, Any]] = [
    ("version", "1"),
    ("version", 0),
    ("version", 1.5),
    ("version", BIG),
    ("version", 2**64),
    ("version", -(2**70)),
    ("version", None),
    ("lamport", BIG),
    ("lamport", -1),
    ("vclock", {"raw": BIG}),
    ("vclock", {"raw": -1}),
    ("vclock", [1, 2]),
    ("schema", BIG),
    ("schema", 0),
    ("data", [1, 2]),
    ("data", "text"),
    ("data", 7),
    ("metadata", "m"),
    ("occurred_at", "yesterday"),
    ("occurred_at", "2025-01-13T10:30:00"),  # no time zone
    ("id", ""),
    ("id", 5),
    ("type", "1bad"),
    ("type", None),
    ("producer", ""),
    ("producer", ".dot"),
    ("aggregate_type", "Agent"),
    ("aggregate_id", "someone-else"),
    ("transition", {"from": "", "to": "B"}),
    ("transition", {"from": "A"}),
    ("transition", "A:B"),
    ("causation_id", 3),
    ("-id", None),  # a required field left out
    ("-occurred_at", None),
]
SPLICES = ["nan", "deep-data", "deep-metadata", "very-deep", "utf8", "utf8-key", "trailing"]


def envelope(agg_id: str, version: int) -> dict[str, Any]:
    return {
        "id": f"raw-{uuid.uuid4().hex}",
        "type": "Raw",
        "aggregate_type": "agent",
        "aggregate_id": agg_id,
        "version": version,
        "occurred_at": "2025-01-13T10:30:00Z",
        "producer": "raw",
        "data": {"raw": True},
    }


def broken_envelope(agg_id: str, version: int, how: str | int) -> bytes:
    """A body that looks like the aggregate's next event but is not a valid one."""
    body = envelope(agg_id, version)
    if isinstance(how, int):
        field, value = BREAKS[how]
        if field.startswith("-"):
            del body[field[1:]]
        else:
            body[field] = value
        return json.dumps(body).encode()
    text = json.dumps(body).encode()
    if how == "nan":
        return text.replace(b'{"raw": true}', b'{"f": NaN}')
    if how == "deep-data":
        return text.replace(b'{"raw": true}', nested(300))
    if how == "deep-metadata":
        return text[:-1] + b', "metadata": ' + nested(1000) + b"}"
    if how == "very-deep":
        return text.replace(b'{"raw": true}', nested(10_000))
    if how == "utf8":
        return text.replace(b'"Raw"', b'"R\xe9w"')
    if how == "utf8-key":
        return text.replace(b'"raw": true', b'"r\xffw": true')
    assert how == "trailing"
    return text + b" {}"


class Raw:
    """A raw publish on ``target`` (an aggregate index, or a subject kind) of ``body``: bytes,
    or a broken envelope (an index in BREAKS or a splice) saying version current + ``ahead``."""

    def __init__(self, target: int | str, body: bytes | str | int, ahead: int) -> None:
        self.target, self.body, self.ahead = target, body, ahead

    def __repr__(self) -> str:
        return f"Raw({self.target!r}, {self.body!r}, {self.ahead})"


class Append:
    def __init__(self, agg: int, data: dict[str, Any]) -> None:
        self.agg, self.data = agg, data

    def __repr__(self) -> str:
        return f"Append({self.agg}, {self.data!r})"


raw_bodies = st.one_of(
    st.binary(max_size=40),
    any_json.map(lambda v: json.dumps(v).encode()),
    st.integers(0, len(BREAKS) - 1),  # a broken envelope, built when its version is known
    st.sampled_from(SPLICES),
)
raw_steps = st.builds(
    Raw,
    st.one_of(
        st.integers(0, len(IDS) - 1),
        st.sampled_from(["no-id", "bad-type", "extra-token", "bad-escape", "not-utf8"]),
    ),
    raw_bodies,
    st.sampled_from([1, 1, 0, 2, 9]),  # mostly the next version: a broken event in its place
)
append_steps = st.builds(Append, st.integers(0, len(IDS) - 1), data)
scripts = st.lists(st.one_of(append_steps, raw_steps), min_size=1, max_size=12)


async def publish_raw(store: EventStore, url: str, step: Raw, versions: dict[str, int]) -> int:
    """Publish one raw step; returns its stream sequence."""
    p = store.settings.prefix
    agg_id = IDS[step.target] if isinstance(step.target, int) else "a"
    body = step.body
    if isinstance(body, (int, str)):
        body = broken_envelope(agg_id, versions.get(agg_id, 0) + step.ahead, body)
    if step.target == "not-utf8":
        subject = p.encode() + b".agent.\xff" + uuid.uuid4().hex.encode()
        return await publish_unreadable(store, url, subject, body)
    subject = {
        "no-id": f"{p}.agent",
        "bad-type": f"{p}.Agent.a",
        "extra-token": f"{p}.agent.a.b",
        "bad-escape": f"{p}.agent.a%2e",
    }.get(str(step.target), store.subject("agent", agg_id))
    ack = await store.js.publish(subject, body)
    return int(ack.seq)


async def fold(store: EventStore, path: Path, batch: int) -> Runner:
    async with await ProjectionDB.open(path) as db:
        runner = Runner(
            store, db, [EntitiesProjection()], settings=RunnerSettings(batch_size=batch)
        )
        async with asyncio.timeout(30):
            await runner.catch_up()
        return runner


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=scripts)
async def test_appends_fold_exactly_whatever_is_published_between_them(
    nats_url: str, tmp_path: Path, script: list[Append | Raw]
) -> None:
    """States equal a brute-force fold of the appended events; every raw message, and no
    appended event, is quarantined; runner (two batch sizes), rebuild and verify agree."""
    tag = uuid.uuid4().hex[:12]
    stream = StreamSettings(name=f"FUZZ_{tag}", prefix=f"fz{tag}")
    expected: dict[str, dict[str, Any]] = {}
    versions: dict[str, int] = {}
    appended: dict[int, str] = {}
    raw: set[int] = set()
    async with await EventStore.connect(nats_url, producer="fuzz", stream=stream) as store:
        for step in script:
            if isinstance(step, Append):
                agg_id = IDS[step.agg]
                result = await store.append("agent", agg_id, NewEvent("E", step.data))
                expected[agg_id] = rfc7386(expected.get(agg_id, {}), step.data)
                versions[agg_id] = result.version
                appended[result.last_seq] = agg_id
            else:
                raw.add(await publish_raw(store, nats_url, step, versions))
        head = await store.head()
        assert head == len(script)

        db = tmp_path / f"{tag}.db"
        runner = await fold(store, db, 20_000)
        assert runner.checkpoint == head
        await fold(store, tmp_path / f"{tag}-small.db", 2)
        # The producer's idea of each version is the fold's (a raw message must not decide it).
        final = {a: await store.version("agent", a) for a in IDS}
        for a in IDS:
            assert final[a] >= versions.get(a, 0)
        states = stored_states(db)
        assert {k[1]: (v["version"], v["state"]) for k, v in states.items() if v["version"]} == {
            a: (final[a], expected.get(a, {})) for a in IDS if final[a]
        }
        assert stored_states(tmp_path / f"{tag}-small.db") == states
        for seq, agg_id in appended.items():
            assert states[("agent", agg_id)]["seq"] >= seq
        async with await ProjectionDB.open(db) as pdb:
            quarantine = {q.seq: q.kind for q in await list_quarantine(pdb, "entities")}
            assert quarantine == dict.fromkeys(raw, "undecodable")
            async with asyncio.timeout(30):
                report = await verify(store, pdb, [EntitiesProjection()])
            assert report.ok, [m.describe() for m in report.mismatches]

        async with asyncio.timeout(30):
            await rebuild(store, db, [EntitiesProjection()])
        assert stored_states(db) == states
        assert leftovers(tmp_path) == []


class CheckedEntities(EntitiesProjection):
    """The entities fold with ``apply`` overridden: the folder checks every state in full."""

    def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
        return super().apply(state, event)


growth = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=2),
    st.one_of(
        st.none(),
        st.sampled_from([1e15, 9e15, -1e15, 1e300, 0.5]),
        st.text(max_size=400),
        st.lists(st.sampled_from([1e15, 7, "x"]), max_size=300),
        st.dictionaries(st.sampled_from(["p", "q"]), st.sampled_from([1e15, "y", None])),
    ),
    max_size=4,
)


@hsettings(max_examples=150, deadline=None)
@given(
    patches=st.lists(growth, min_size=1, max_size=30),
    limit=st.integers(60, 12_000),
    transitions=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_the_size_bound_refuses_exactly_the_states_too_big_to_store(
    patches: list[dict[str, Any]], limit: int, transitions: list[bool]
) -> None:
    """The entities fold skips encoding states while a bound grown from body lengths allows
    it; it still refuses exactly the events a full check of every state refuses."""
    from datetime import UTC, datetime

    import projections.fold as fold_module
    from eventstore.events import Envelope, Transition, encode_envelope
    from eventstore.reader import StoredMessage
    from projections.fold import Folder, MessageDecoder

    saved = fold_module.MAX_STATE_BYTES
    fold_module.MAX_STATE_BYTES = limit
    try:
        outcomes = []
        for projection in (EntitiesProjection(), CheckedEntities()):
            folder, decoder = Folder(projection), MessageDecoder("fz")
            agg = folder.new(("agent", "a"))
            out = []
            for i, patch in enumerate(patches, 1):
                env = Envelope(
                    id=f"e{i}",
                    type="E",
                    aggregate_type="agent",
                    aggregate_id="a",
                    version=i,
                    occurred_at=datetime(2025, 1, 13, tzinfo=UTC),
                    producer="p",
                    data=patch,
                    transition=Transition("S", "T" * i) if transitions[i - 1] else None,
                )
                # as a raw client may write it: numbers in their shortest text
                body = encode_envelope(env).replace(b"1000000000000000.0", b"1e15")
                msg = StoredMessage(i, "fz.agent.a", body, env.occurred_at, None)
                result = folder.feed(agg, msg, ("agent", "a"), decoder)
                out.append((getattr(result, "kind", None), agg.version, agg.state))
            outcomes.append(out)
        assert outcomes[0] == outcomes[1]
        hypothesis_event(f"refused: {sum(kind is not None for kind, _, _ in outcomes[0]) > 0}")
    finally:
        fold_module.MAX_STATE_BYTES = saved
