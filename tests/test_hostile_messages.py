"""Every message that can reach the events subjects is folded or quarantined, never a crash.

A plain NATS client can publish anything on ``<prefix>.<type>.<id>``: invalid UTF-8, numbers
out of SQLite's range, bodies nested thousands deep, bytes that are not even a UTF-8 subject.
The worker, ``rebuild``, ``verify`` and time travel must each quarantine such a message with
its reason and go on folding the events after it; and a projection whose ``apply`` or resolver
blows up (recursion, memory, an unstorable state) is quarantined the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import msgspec
import pytest
from helpers_projections import scalar, start_worker, stored_states, tail

from eventstore import Event, EventStore, NewEvent, StreamSettings
from projections import (
    EntitiesProjection,
    FunctionResolver,
    Point,
    Projection,
    ProjectionDB,
    ProjectionError,
    Runner,
    RunnerSettings,
    Statement,
    TimeTravel,
    list_quarantine,
    rebuild,
    verify,
)

BIG = 2**63  # one more than SQLite's largest INTEGER


def envelope(agg_id: str, version: Any, **fields: Any) -> dict[str, Any]:
    """A wire-format body of ``agent/<agg_id>``, every field overridable."""
    body: dict[str, Any] = {
        "id": f"raw-{agg_id}-{version}-{sorted(fields)}",
        "type": "Raw",
        "aggregate_type": "agent",
        "aggregate_id": agg_id,
        "version": version,
        "occurred_at": "2025-01-13T10:30:00Z",
        "producer": "raw",
    }
    body.update(fields)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"x":' * depth + inner + b"}" * depth


def with_data(agg_id: str, version: int, data_json: bytes) -> bytes:
    """An envelope whose ``data`` is the given JSON text (spliced in, so it can be anything)."""
    head = encode(envelope(agg_id, version))
    return head[:-1] + b', "data": ' + data_json + b"}"


# name -> body of a message on agent/<id> whose valid next version would be ``v``
HOSTILE: dict[str, Callable[[str, int], bytes]] = {
    "invalid UTF-8 in a string": lambda a, v: with_data(a, v, b'{"k": "\xc3\x28"}'),
    "invalid UTF-8 in the id": lambda a, v: encode(envelope(a, v)).replace(b'"raw-', b'"\xff-'),
    "version 2**63": lambda a, v: encode(envelope(a, BIG)),
    "version 2**64": lambda a, v: encode(envelope(a, 2**64)),
    "lamport 2**63": lambda a, v: encode(envelope(a, v, lamport=BIG)),
    "vclock counter 2**63": lambda a, v: encode(envelope(a, v, vclock={"raw": BIG})),
    "schema 2**63": lambda a, v: encode(envelope(a, v, schema=BIG)),
    "data nested 10,000 deep": lambda a, v: with_data(a, v, nested(10_000)),
    "data nested 980 deep": lambda a, v: with_data(a, v, nested(980)),
    "metadata nested 600 deep": lambda a, v: (
        encode(envelope(a, v))[:-1] + b', "metadata": ' + nested(600) + b"}"
    ),
    "body nested 10,000 deep": lambda a, v: b"[" * 10_000 + b"]" * 10_000,
    "data 1e400": lambda a, v: with_data(a, v, b'{"f": 1e400}'),
    "data NaN": lambda a, v: with_data(a, v, b'{"f": NaN}'),
    "empty body": lambda a, v: b"",
    "JSON null": lambda a, v: b"null",
    "another aggregate's event": lambda a, v: encode(envelope("someone-else", v)),
}


async def raw_publish_bytes(url: str, subject: bytes, body: bytes) -> None:
    """Publish with the NATS text protocol on a plain socket: any bytes as the subject."""
    u = urlparse(url)

    def send() -> None:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), 5) as s:
            s.recv(4096)  # INFO
            s.sendall(
                b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                + b"PUB "
                + subject
                + b" "
                + str(len(body)).encode()
                + b"\r\n"
                + body
                + b"\r\nPING\r\n"
            )
            got = b""
            while b"PONG" not in got and b"-ERR" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert b"-ERR" not in got, got

    await asyncio.to_thread(send)


async def publish_unreadable(store: EventStore, url: str, subject: bytes, body: bytes) -> int:
    """``raw_publish_bytes``, then wait until the stream has stored it: its sequence."""
    before = await store.head()
    await raw_publish_bytes(url, subject, body)
    async with asyncio.timeout(10):
        while (head := await store.head()) == before:
            await asyncio.sleep(0.005)
    assert head == before + 1
    return head


def leftovers(directory: Path) -> list[str]:
    """Files of a fresh ``<db>.rebuild`` database left in ``directory`` (its lock file, which
    a lock needs to stay, is not one)."""
    return sorted(
        n for n in os.listdir(directory) if n.endswith((".rebuild", ".rebuild-wal", ".rebuild-shm"))
    )


async def catch_up(store: EventStore, path: Path, *projections: Projection[Any]) -> Runner:
    async with await ProjectionDB.open(path) as db:
        runner = Runner(store, db, list(projections) or [EntitiesProjection()])
        async with asyncio.timeout(30):
            await runner.catch_up()
        return runner


async def quarantined(path: Path, projection: str = "entities") -> dict[int, str]:
    async with await ProjectionDB.open(path) as db:
        return {q.seq: q.kind for q in await list_quarantine(db, projection)}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_hostile_body_is_quarantined_and_the_events_after_it_fold(
    store: EventStore, tmp_path: Path, name: str
) -> None:
    """The runner, rebuild, verify, time travel and history all get past one raw hostile
    message: it is quarantined as undecodable, the product's appends before and after it are
    applied, and no ``.rebuild`` file is left behind."""
    subject = store.subject("agent", "a")
    await store.append("agent", "a", NewEvent("E", {"i": 1}))
    bad = (await store.js.publish(subject, HOSTILE[name]("a", 2))).seq
    after = await store.append("agent", "a", NewEvent("E", {"j": 3}))
    other = await store.append("agent", "b", NewEvent("E", {"k": 4}))
    db = tmp_path / "p.db"

    await catch_up(store, db)
    assert await quarantined(db) == {bad: "undecodable"}
    states = stored_states(db)
    assert states[("agent", "a")]["state"] == {"i": 1, "j": 3}
    assert states[("agent", "a")]["version"] == after.version
    assert states[("agent", "a")]["seq"] == after.last_seq
    assert states[("agent", "b")]["state"] == {"k": 4}

    async with asyncio.timeout(30):
        result = await rebuild(store, db, [EntitiesProjection()])
    assert result.checkpoint == other.last_seq
    assert leftovers(tmp_path) == []
    assert stored_states(db) == states

    async with await ProjectionDB.open(db) as pdb:
        report = await verify(store, pdb, [EntitiesProjection()])
        assert report.ok, [m.describe() for m in report.mismatches]
        travel = TimeTravel(store, EntitiesProjection(), pdb)
        past = await travel.state_at("agent", "a", seq=bad)
        assert past.state == {"i": 1}
        now = await travel.state_at("agent", "a", version=after.version)
        assert now.state == {"i": 1, "j": 3}
        history = await travel.history("agent", "a")
        assert [(h.seq, h.outcome) for h in history] == [
            (1, "applied"),
            (bad, "quarantined"),
            (after.last_seq, "applied"),
        ]
        d = await travel.diff("agent", "a", Point(seq=1), Point(seq=after.last_seq))
        assert [c.path for c in d.changes] == [["j"]]


async def test_a_subject_that_is_not_utf8_is_quarantined(
    store: EventStore, nats_url: str, tmp_path: Path
) -> None:
    """A message whose subject bytes are not UTF-8 (a raw socket client can send one) does not
    stall the reader: it is quarantined as naming no aggregate and the fold goes on."""
    p = store.settings.prefix.encode()
    await store.append("agent", "a", NewEvent("E", {"i": 1}))
    assert await publish_unreadable(store, nats_url, p + b".agent.\xff\xfe", b"{}") == 2
    assert await publish_unreadable(store, nats_url, p + b".\xc3.x", encode(envelope("x", 1))) == 3
    after = await store.append("agent", "a", NewEvent("E", {"j": 2}))
    assert after.last_seq == 4
    db = tmp_path / "s.db"
    await catch_up(store, db)
    assert await quarantined(db) == {2: "undecodable", 3: "undecodable"}
    async with await ProjectionDB.open(db) as pdb:
        rows = await list_quarantine(pdb, "entities")
        assert rows[0].aggregate_type is None and "\\xff\\xfe" in rows[0].subject
        assert (await verify(store, pdb, [EntitiesProjection()])).ok
    assert stored_states(db)[("agent", "a")]["state"] == {"i": 1, "j": 2}


class _Boom(Exception):
    def __str__(self) -> str:
        raise RuntimeError("even the message is broken")


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


class Hostile(Projection[Any]):
    """A projection whose ``apply`` misbehaves as each event's ``data["do"]`` asks."""

    name = "hostile"
    state_type = dict[str, Any]

    def apply(self, state: Any, event: Event) -> Any:
        do = event.data.get("do")
        if do == "recurse":
            _recurse(0)
        if do == "memory":
            raise MemoryError("out of memory (on purpose)")
        if do == "boom":
            raise _Boom()
        if do == "deep":  # a legal event that makes a state too deep to encode
            deep: Any = 1
            for _ in range(5000):
                deep = [deep]
            return {**state, "deep": deep}
        if do == "object":
            return {**state, "o": object()}
        if do == "list":  # encodes, but does not decode as the declared state type
            return [1, 2]
        if do == "surrogate":
            return {**state, "s": "\ud800"}
        if do == "huge-int":
            return {**state, "n": 2**70}  # fine: states are JSON text, not INTEGER columns
        return {**state, "n": state.get("n", 0) + 1}


async def test_a_projection_that_blows_up_is_quarantined_per_event(
    store: EventStore, tmp_path: Path
) -> None:
    """RecursionError, MemoryError, an exception that cannot even be printed, and states that
    cannot be stored (too deep, not JSON, not the state type, not UTF-8) each quarantine their
    event as ``apply`` (the aggregate keeps its state); verify names each such acknowledged
    event as not applied, and time travel folds the same way."""
    bad = ["recurse", "memory", "boom", "deep", "object", "list", "surrogate"]
    seqs = {}
    await store.append("agent", "h", NewEvent("E"))
    for do in [*bad, "huge-int"]:
        seqs[do] = (await store.append("agent", "h", NewEvent("E", {"do": do}))).last_seq
    last = await store.append("agent", "h", NewEvent("E"))
    db = tmp_path / "h.db"
    await catch_up(store, db, Hostile())
    assert await quarantined(db, "hostile") == {seqs[d]: "apply" for d in bad}
    state = stored_states(db, "hostile")[("agent", "h")]
    assert state["version"] == last.version and state["state"] == {"n": 2**70 + 1}
    async with await ProjectionDB.open(db) as pdb:
        rows = {q.seq: q.reason for q in await list_quarantine(pdb, "hostile")}
        assert "RecursionError" in rows[seqs["recurse"]]
        assert "cannot be stored" in rows[seqs["deep"]]
        report = await verify(store, pdb, [Hostile()])
        hidden = sorted(
            m.expected for m in report.mismatches if m.what == "acknowledged event not applied"
        )
        assert not report.ok and len(report.mismatches) == len(bad), report.mismatches
        assert hidden == sorted(seqs[d] for d in bad)
        travel = TimeTravel(store, Hostile(), pdb)
        assert (await travel.state_at("agent", "h", version=last.version)).state == state["state"]
        outcomes = {h.seq: h.outcome for h in await travel.history("agent", "h")}
        assert {s for s, o in outcomes.items() if o == "quarantined"} == {seqs[d] for d in bad}
    async with asyncio.timeout(30):
        await rebuild(store, db, [Hostile()])
    assert stored_states(db, "hostile")[("agent", "h")] == state


def _deep_list(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = [out]
    return out


RESOLVERS: dict[str, Callable[[Any], Any]] = {
    "recursing": lambda ctx: _recurse(0),
    "not an object": lambda ctx: ctx.merged([1, 2]),  # entities states are JSON objects
    "too deep": lambda ctx: ctx.merged({"d": _deep_list(400)}),
    "not JSON": lambda ctx: ctx.merged({"o": object()}),
}


@pytest.mark.parametrize("name", sorted(RESOLVERS))
async def test_a_resolver_that_blows_up_is_quarantined_as_a_conflict(
    nats_url: str, settings: StreamSettings, tmp_path: Path, name: str
) -> None:
    """A resolver that recurses without end, or resolves to a state that cannot be stored
    and read back, fails its conflict, which is quarantined as ``conflict``; the fold goes
    on."""
    projection = EntitiesProjection(resolver=FunctionResolver(RESOLVERS[name], name=name))
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as alice,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as bob,
    ):
        await alice.append("agent", "c", NewEvent("E", {"a": 1}))
        clash = await bob.append("agent", "c", NewEvent("E", {"a": 2}))  # bob never read alice
        last = await alice.append("agent", "c", NewEvent("E", {"c": 3}), expected_version=2)
        await catch_up(alice, tmp_path / "c.db", projection)
    assert await quarantined(tmp_path / "c.db") == {clash.last_seq: "conflict"}
    state = stored_states(tmp_path / "c.db")[("agent", "c")]
    assert (state["version"], state["state"]) == (last.version, {"a": 1, "c": 3})


async def test_verify_names_a_valid_event_that_was_not_applied(
    store: EventStore, tmp_path: Path
) -> None:
    """A valid event quarantined as a duplicate (an acknowledged write the state lacks) makes
    verify fail naming it; quarantined garbage does not."""
    await store.append("agent", "d", NewEvent("E", {"a": 1}))
    await store.append("agent", "d", NewEvent("E", {"a": 2}))
    await store.js.publish(store.subject("agent", "d"), b"garbage")
    stale = await store.js.publish(store.subject("agent", "d"), encode(envelope("d", 1)))
    db = tmp_path / "d.db"
    await catch_up(store, db)
    async with await ProjectionDB.open(db) as pdb:
        report = await verify(store, pdb, [EntitiesProjection()])
    assert [(m.what, m.aggregate_id, m.expected) for m in report.mismatches] == [
        ("acknowledged event not applied", "d", stale.seq)
    ]
    assert "duplicate" in report.mismatches[0].describe()


async def test_verify_names_an_undecodable_message_published_as_an_event(
    store: EventStore, tmp_path: Path
) -> None:
    """An undecodable message whose ``Nats-Msg-Id`` header is the id its body names (what a
    producer writes) is an acknowledged append nobody can read: verify fails naming it."""
    await store.append("agent", "u", NewEvent("E", {"a": 1}))
    body = encode(envelope("u", 2, lamport=BIG))
    claimed = (
        await store.js.publish(
            store.subject("agent", "u"), body, headers={"Nats-Msg-Id": json.loads(body)["id"]}
        )
    ).seq
    await store.js.publish(store.subject("agent", "u"), encode(envelope("u", 3, lamport=BIG)))
    db = tmp_path / "u.db"
    await catch_up(store, db)
    assert await quarantined(db) == {claimed: "undecodable", claimed + 1: "undecodable"}
    async with await ProjectionDB.open(db) as pdb:
        report = await verify(store, pdb, [EntitiesProjection()])
    assert [(m.what, m.expected) for m in report.mismatches] == [
        ("acknowledged event not applied", claimed)
    ]


async def test_verify_fails_when_the_checkpoint_is_past_the_head(
    nats_url: str, tmp_path: Path
) -> None:
    """A database folded further than the log reaches (another stream, or one that was
    recreated) does not verify, and verify still ends."""
    db = tmp_path / "far.db"
    tag = f"{os.getpid()}_{time.monotonic_ns()}"
    longer = StreamSettings(name=f"L_{tag}", prefix=f"long{tag}")
    shorter = StreamSettings(name=f"S_{tag}", prefix=f"short{tag}")
    async with await EventStore.connect(nats_url, producer="p", stream=longer) as store:
        for i in range(5):
            await store.append("agent", "f", NewEvent("E", {"i": i}))
        await catch_up(store, db)
    async with await EventStore.connect(nats_url, producer="p", stream=shorter) as store:
        await store.append("agent", "f", NewEvent("E", {"i": 0}))
        async with await ProjectionDB.open(db) as pdb, asyncio.timeout(30):
            report = await verify(store, pdb, [EntitiesProjection()])
    assert not report.ok
    far = [m for m in report.mismatches if m.what == "checkpoint past the log's head"]
    assert [(m.expected, m.actual) for m in far] == [(1, 5)], report.mismatches


class BrokenReadModel(Projection[dict[str, Any]]):
    name = "broken"

    def initial(self, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        return state

    def write(self, changes: Any) -> list[Statement]:
        raise RuntimeError("read model bug")


async def test_a_failed_rebuild_leaves_no_file_behind(store: EventStore, tmp_path: Path) -> None:
    """Whatever makes a rebuild fail, the ``.rebuild`` file beside the database is removed."""
    await store.append("agent", "r", NewEvent("E"))
    db = tmp_path / "r.db"
    with pytest.raises(ProjectionError, match="read model bug"):
        await rebuild(store, db, [BrokenReadModel()])
    assert leftovers(tmp_path) == []


async def wait_for_checkpoint(
    db: Path, seq: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, tail(log)
        try:
            if (scalar(db, "SELECT min(checkpoint) FROM projections") or 0) >= seq:
                return
        except Exception:  # not created yet
            pass
        assert time.monotonic() < deadline, tail(log)
        await asyncio.sleep(0.05)


async def test_a_live_worker_survives_every_hostile_message(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A worker process following the log gets each hostile message between valid appends,
    stays alive, quarantines every one and folds every valid event after it."""
    db, log = tmp_path / "live.db", tmp_path / "worker.log"
    async with await EventStore.connect(nats_url, producer="p", stream=settings) as store:
        first = await store.append("agent", "w", NewEvent("E", {"n": 0}))
        proc = start_worker(nats_url, settings, db, log)
        try:
            await wait_for_checkpoint(db, first.last_seq, proc, log)
            hostile: list[int] = []
            last = first
            for i, name in enumerate(sorted(HOSTILE)):
                body = HOSTILE[name]("w", last.version + 1)
                hostile.append((await store.js.publish(store.subject("agent", "w"), body)).seq)
                last = await store.append("agent", "w", NewEvent("E", {"n": i + 1}))
            subject = settings.prefix.encode() + b".agent.\xff"
            hostile.append(await publish_unreadable(store, nats_url, subject, b"x"))
            last = await store.append("agent", "w", NewEvent("E", {"n": -1}))
            await wait_for_checkpoint(db, last.last_seq, proc, log)
            assert proc.poll() is None, tail(log)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
    assert code == 0, tail(log)
    assert await quarantined(db) == dict.fromkeys(hostile, "undecodable")
    state = stored_states(db)[("agent", "w")]
    assert (state["version"], state["seq"], state["state"]) == (
        last.version,
        last.last_seq,
        {"n": -1},
    )
    assert "Traceback" not in log.read_text(errors="replace"), tail(log)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            msgspec.json.decode(line)  # every log line is a JSON object


class IntegerReadModel(Projection[dict[str, Any]]):
    """Keeps each aggregate's ``n`` in an INTEGER column, trusting event data."""

    name = "ints"
    schema = ("CREATE TABLE IF NOT EXISTS ints (id TEXT PRIMARY KEY, n INTEGER)",)
    tables = ("ints",)

    def initial(self, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[str, Any], event: Event) -> dict[str, Any]:
        return {**state, **event.data}

    def write(self, changes: Any) -> list[Statement]:
        rows = [(c.aggregate_id, c.state.get("n")) for c in changes]
        return [Statement("INSERT OR REPLACE INTO ints VALUES (?, ?)", rows)]


async def test_read_model_rows_sqlite_cannot_bind_stop_with_a_clear_error(
    store: EventStore, tmp_path: Path
) -> None:
    """A read model handed a number past SQLite's INTEGER stops the runner with a
    ProjectionError that names the projection and what to fix, not an OverflowError; the
    checkpoint stays before the batch."""
    await store.append("agent", "i", NewEvent("E", {"n": 1}))
    await store.js.publish(store.subject("agent", "i"), encode(envelope("i", 2, data={"n": BIG})))
    with pytest.raises(ProjectionError, match="projection ints: write\\(\\) returned read-model"):
        await catch_up(store, tmp_path / "i.db", IntegerReadModel())
    assert scalar(tmp_path / "i.db", "SELECT checkpoint FROM projections") == 0


async def test_an_event_that_makes_a_state_too_big_to_store_is_quarantined(
    store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event whose state would encode past the size limit is quarantined as ``apply``
    (with the limit lowered to 4 KiB here: the real one, 256 MiB, keeps a state row below
    SQLite's 1 GB); the events after it apply to the state before it, in the runner (in one
    batch or many) as in time travel."""
    import projections.fold as fold_module

    monkeypatch.setattr(fold_module, "MAX_STATE_BYTES", 4096)
    seqs = []
    for i in range(14):  # each key takes 508 bytes: 8 fit, a 9th does not
        data = {f"k{i}": "x" * 500} if i != 9 else {"k0": None, "k1": None, "k2": None}
        seqs.append((await store.append("agent", "big", NewEvent("E", data))).last_seq)
    db = tmp_path / "big.db"
    await catch_up(store, db)
    assert await quarantined(db) == {seqs[8]: "apply", seqs[13]: "apply"}
    state = stored_states(db)[("agent", "big")]
    assert state["version"] == 14
    assert sorted(state["state"]) == sorted(f"k{i}" for i in (3, 4, 5, 6, 7, 10, 11, 12))
    async with await ProjectionDB.open(db) as pdb:
        rows = {q.seq: q.reason for q in await list_quarantine(pdb, "entities")}
        assert "encodes to 4573 bytes, more than 4096" in rows[seqs[8]]
        travel = TimeTravel(store, EntitiesProjection(), pdb)
        assert (await travel.state_at("agent", "big", version=14)).state == state["state"]
    async with await ProjectionDB.open(tmp_path / "one.db") as one:
        settings = RunnerSettings(batch_size=1)
        await Runner(store, one, [EntitiesProjection()], settings=settings).catch_up()
    assert stored_states(tmp_path / "one.db") == stored_states(db)


@pytest.mark.parametrize("field", ["lamport", "vclock"])
async def test_a_valid_raw_event_with_extreme_clocks_does_not_spoil_later_appends(
    store: EventStore, tmp_path: Path, field: str
) -> None:
    """A raw valid event carrying a Lamport time, or a counter of the producer's own name, at
    2**63-1 is applied like any event; the product's appends after it still succeed and are
    applied, on that aggregate and on others."""
    await store.append("agent", "x", NewEvent("E", {"i": 1}))
    extreme = {"lamport": BIG - 1} if field == "lamport" else {"vclock": {"tester": BIG - 1}}
    await store.js.publish(store.subject("agent", "x"), encode(envelope("x", 2, **extreme)))
    same = await store.append("agent", "x", NewEvent("E", {"j": 2}), expected_version=2)
    other = await store.append("agent", "y", NewEvent("E", {"k": 3}))
    db = tmp_path / "x.db"
    await catch_up(store, db)
    assert await quarantined(db) == {}
    states = stored_states(db)
    assert states[("agent", "x")]["version"] == same.version == 3
    assert states[("agent", "y")]["seq"] == other.last_seq
