"""The query service of a real worker process, asked by ProjectionClient and by raw NATS
requests from processes that have no database: answers equal what the worker's SQLite holds."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers_projections import start_worker
from helpers_serving import running_worker, small_log, sqlite_states, wait_folded, wait_serving

from consumers import ProjectionClient
from eventstore import (
    AggregateNotFound,
    EventStore,
    InvalidPoint,
    InvalidRequest,
    NewEvent,
    RequestTimeout,
    UnknownProjection,
)
from projections import EntitiesProjection, ProjectionDB, TimeTravel

ENTITIES = EntitiesProjection()


async def test_state_from_a_process_without_the_database_is_what_sqlite_holds(
    store: EventStore, tmp_path: Path
) -> None:
    """Every aggregate's state now, over NATS, equals the worker's SQLite row; past points
    (version, seq, recorded time) equal local time travel on that file."""
    head = await small_log(store)
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log):
        rows = sqlite_states(db)
        assert len(rows) == 13
        async with await ProjectionClient.connect(store.url, stream=store.settings.name) as c:
            for (t, i), row in rows.items():
                got = await c.state(t, i)
                assert (got.version, got.seq, got.state, got.vclock, got.lamport) == (
                    row["version"], row["seq"], row["state"], row["vclock"], row["lamport"],
                )  # fmt: skip
                assert got.checkpoint == head and not got.past
            async with await ProjectionDB.open(db, readonly=True) as pdb:
                tt = TimeTravel(store, ENTITIES, pdb)
                points = [{"version": 1}, {"seq": 3}, {"seq": head}, {"version": 0}]
                local = await tt.state_at("agent", "a1", version=1)
                points.append({"at": local.recorded_at})
                for t, i in [("agent", "a1"), ("agent", "a2"), ("task", "t0")]:
                    for point in points:
                        want = await tt.state_at(t, i, **point)  # type: ignore[arg-type]
                        got = await c.state(t, i, **point)  # type: ignore[arg-type]
                        assert got.past
                        assert (got.version, got.seq, got.state, got.vclock) == (
                            want.version, want.seq, want.state, want.vclock,
                        ), (t, i, point)  # fmt: skip
            with pytest.raises(AggregateNotFound, match="agent/nobody"):
                await c.state("agent", "nobody")
            with pytest.raises(InvalidPoint, match="no version 9"):
                await c.state("agent", "a1", version=9)
            with pytest.raises(UnknownProjection, match="no worker serves projection nope"):
                await c.state("agent", "a1", projection="nope")
            history = await c.history("agent", "a1")
            assert [e.version for e in history.entries] == [1, 2]
            assert history.next_version is None
            first = await c.history("task", "t0", limit=1)
            assert [e.version for e in first.entries] == [1] and first.next_version == 2
            rest = await c.history("task", "t0", from_version=2, limit=1)
            assert [e.type for e in rest.entries] == ["Done"] and rest.next_version is None
            status = await c.status()
            assert (status.checkpoint, status.head, status.lag) == (head, head, 0)
            assert status.projections == {"entities": head}


async def test_list_and_changes_filter_and_page_every_aggregate_exactly_once(
    store: EventStore, tmp_path: Path
) -> None:
    """Cursor pages cover every aggregate once; filters by type and by top-level field keep
    JSON types apart (3 matches 3 and 3.0, never "3"); changes lists what moved after a seq."""
    head = await small_log(store)
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log):
        rows = sqlite_states(db)
        async with await ProjectionClient.connect(store.url, stream=store.settings.name) as c:
            pages = [p async for p in c.query_all(limit=3)]
            seen = [(r.aggregate_type, r.aggregate_id) for p in pages for r in p.items]
            assert len(pages) == 5 and sorted(seen) == seen == sorted(rows)
            assert all(len(p.items) == 3 for p in pages[:-1]) and pages[-1].next_cursor is None
            for p in pages:
                for r in p.items:
                    assert (r.version, r.seq, r.state) == (
                        rows[r.aggregate_type, r.aggregate_id]["version"],
                        rows[r.aggregate_type, r.aggregate_id]["seq"],
                        rows[r.aggregate_type, r.aggregate_id]["state"],
                    )

            async def ids(**kw: object) -> set[str]:
                return {
                    r.aggregate_id
                    for p in [x async for x in c.query_all(limit=2, **kw)]  # type: ignore[arg-type]
                    for r in p.items
                }

            assert await ids(aggregate_type="task") == {"t0", "t1", "t2", "t3", "t4"}
            assert await ids(where={"n": 3}) == {"a2", "a3", "t0", "t1", "t2", "t3", "t4"}
            assert await ids(where={"n": "3"}) == {"a1"}
            assert await ids(where={"n": 3}, aggregate_type="agent") == {"a2", "a3"}
            assert await ids(where={"n": None}) == set()  # a merge patch's null deletes
            assert await ids(where={"flag": True}) == {"a2"}
            assert await ids(where={"flag": 1}) == set()
            assert await ids(where={"tag": "t1", "n": 1}) == {"a5"}  # a1's n is "3" now
            assert await ids(where={"prio": 0}) == set()  # t0's prio was deleted
            assert await ids(where={"prio": 4.0}) == {"t4"}

            since = head - 4
            want = sorted((r["seq"], k[1]) for k, r in rows.items() if r["seq"] > since)
            got: list[tuple[int, str]] = []
            cursor = None
            while True:
                page = await c.changes(since, limit=2, cursor=cursor)
                got += [(r.seq, r.aggregate_id) for r in page.items]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert got == want and len(got) == 4
            assert (await c.changes(head)).items == []
            with pytest.raises(InvalidRequest, match="belongs to a listing"):
                await c.changes(0, cursor=pages[0].next_cursor)
            with pytest.raises(InvalidRequest, match="limit"):
                await c.query(limit=5000)


async def test_min_seq_waits_for_the_fold_and_times_out_within_its_bound(
    store: EventStore, tmp_path: Path
) -> None:
    """A request with min_seq above the checkpoint is answered once that event is folded; one
    that cannot be met is a timeout error naming the projection and how far it got."""
    head = await small_log(store)
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with (
        running_worker(store, db, log),
        await ProjectionClient.connect(store.url, stream=store.settings.name) as c,
    ):
        asked = asyncio.create_task(c.state("agent", "a0", min_seq=head + 1, timeout=20))
        await asyncio.sleep(0.2)
        assert not asked.done()  # the event does not exist yet
        await store.append("agent", "a0", NewEvent("Late", {"late": True}))
        got = await asked
        assert got.checkpoint >= head + 1 and got.version == 2 and got.state["late"] is True
        page = await c.query(min_seq=head + 1, where={"late": True})
        assert [r.aggregate_id for r in page.items] == ["a0"]
        with pytest.raises(RequestTimeout, match="entities") as caught:
            await c.state("agent", "a0", min_seq=head + 1000, timeout=0.3)
        assert caught.value.projection == "entities"
        assert caught.value.checkpoint == head + 1
        assert "up to seq" in str(caught.value)
        on_store = ProjectionClient(store)  # the store's own connection and stream
        assert (await on_store.status(min_seq=head + 1)).checkpoint == head + 1
        await on_store.close()  # not its connection: the store stays usable
        assert await store.head() == head + 1


async def test_two_workers_answer_one_queue_group_and_either_may_die(
    store: EventStore, tmp_path: Path
) -> None:
    """Two workers (two databases) of the same projection: $SRV.PING lists both, requests go
    to one of them, and after a SIGKILL of one the other answers every request."""
    head = await small_log(store)
    logs = [tmp_path / "1.log", tmp_path / "2.log"]
    dbs = [tmp_path / "1.db", tmp_path / "2.db"]
    procs = [
        start_worker(store.url, store.settings, d, lg) for d, lg in zip(dbs, logs, strict=True)
    ]
    try:
        for proc, d, lg in zip(procs, dbs, logs, strict=True):
            await wait_folded(d, head, proc, lg)
            await wait_serving(d, proc, lg)
        inbox = store.nc.new_inbox()
        sub = await store.nc.subscribe(inbox)
        await store.nc.publish("$SRV.PING.eventstore", b"", reply=inbox)
        mine: list[dict[str, Any]] = []
        while len(mine) < 2:  # every worker of the session's server answers; ours are two
            ping = json.loads((await sub.next_msg(timeout=5)).data)
            if ping["metadata"]["stream"] == store.settings.name:
                mine.append(ping)
        await sub.unsubscribe()
        assert sorted(p["metadata"]["db"] for p in mine) == sorted(map(str, dbs))
        assert {p["name"] for p in mine} == {"eventstore"} and len({p["id"] for p in mine}) == 2
        async with await ProjectionClient.connect(store.url, stream=store.settings.name) as c:
            for _ in range(10):
                assert (await c.state("agent", "a1")).version == 2
            procs[0].send_signal(signal.SIGKILL)
            await asyncio.to_thread(procs[0].wait, 20)
            for _ in range(20):
                got = await c.status()
                assert got.db == str(dbs[1]) and got.checkpoint == head
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, 20)


MALFORMED: list[tuple[str, bytes, str]] = [
    ("state", b"not json", "not a JSON object"),
    ("state", b"[1, 2]", "invalid state request"),
    ("state", b"", "missing required field"),
    ("state", b'{"aggregate_type": 5, "aggregate_id": "a"}', "Expected `str`"),
    ("state", b'{"aggregate_type": "agent", "aggregate_id": "a1", "colour": 1}', "unknown field"),
    ("state", b'{"aggregate_type": "agent", "aggregate_id": "a1", "version": -1}', ">= 0"),
    ("state", b'{"aggregate_type": "agent", "aggregate_id": "a1", "at": "2025-01-01T00:00:00"}',
     "timezone"),
    ("state", b'{"aggregate_type": "agent", "aggregate_id": "a1", "version": 1, "seq": 1}',
     "one of version, seq or at"),
    ("state", b'{"aggregate_type": "Agent!", "aggregate_id": "a1"}', "aggregate type"),
    ("state", b'{"aggregate_type": "agent", "aggregate_id": "a1", "min_seq": 1, "timeout": 99}',
     "<= 30"),
    ("state", b'{"aggregate_type": "agent", "aggregate_id": "a1", "version": 99999999999999999999}',
     "invalid state request"),
    ("state", b"[" * 100_000, "bytes"),
    ("list", b'{"limit": 0}', ">= 1"),
    ("list", b'{"where": {"n": [1]}}', "invalid list request"),
    ("list", b'{"cursor": "!!!"}', "cursor"),
    ("changes", b'{"since": -5}', ">= 0"),
    ("history", b'{"aggregate_type": "agent", "aggregate_id": "a1", "limit": 1001}', "<= 1000"),
    ("status", b'{"min_seq": "x"}', "got `str` - at `$.min_seq`"),
]  # fmt: skip


async def test_malformed_requests_get_error_replies_and_the_worker_stays_up(
    store: EventStore, tmp_path: Path
) -> None:
    """Every kind of malformed request gets a bad_request reply (micro's headers and a JSON
    body with code and message), never a traceback; the worker answers on afterwards."""
    await small_log(store)
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    async with running_worker(store, db, log) as proc:
        base = f"_ES.Q.{store.settings.name}.entities"
        for op, body, words in MALFORMED:
            msg = await store.nc.request(f"{base}.{op}", body, timeout=5)
            assert msg.headers is not None, (op, body[:60])
            assert msg.headers["Nats-Service-Error-Code"] == "bad_request", (op, body[:60])
            error = msgspec.json.decode(msg.data)["error"]
            assert error["code"] == "bad_request"
            assert words in error["message"], (op, body[:60], error["message"])
            assert "Traceback" not in error["message"]
            assert msg.headers["Nats-Service-Error"] == error["message"][:1000]
        missing = await store.nc.request(
            f"{base}.state", b'{"aggregate_type": "agent", "aggregate_id": "zz"}', timeout=5
        )
        assert msgspec.json.decode(missing.data)["error"]["code"] == "not_found"
        good = await store.nc.request(
            f"{base}.state", b'{"aggregate_type": "agent", "aggregate_id": "a1"}', timeout=5
        )
        assert good.headers is None or "Nats-Service-Error-Code" not in good.headers
        assert msgspec.json.decode(good.data)["version"] == 2
        assert proc.poll() is None
        assert "Traceback" not in log.read_text()
