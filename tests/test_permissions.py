"""Least-privilege roles, run for real: a server whose users get exactly the permission blocks
``eventstore.permissions`` generates, a producer and a projection worker doing their whole
jobs with them, and each refused what its role does not allow."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from helpers_projections import start_worker

from consumers import ProjectionClient
from consumers.protocol import feed_wildcard
from eventstore import (
    AppendRequest,
    EmbeddedServer,
    EventStore,
    EventStoreError,
    NewEvent,
    PermissionDenied,
    StreamSettings,
)
from eventstore.permissions import permissions
from eventstore.server import free_port
from projections import EntitiesProjection, ProjectionDB, Runner, TimeTravel

SETTINGS = StreamSettings(name="ROLES", prefix="roles")


# A reader short of one permission each: what it then tries must fail with PermissionDenied
# naming the refused subject, soon, not hang or time out as something else.
SHORT_OF = {
    "no-direct": "$JS.API.DIRECT.GET.ROLES",
    "no-consumer": "$JS.API.CONSUMER.CREATE.ROLES",
    "no-fc": "$JS.FC.ROLES.>",
}


def _short_of(subject: str) -> dict[str, Any]:
    block = permissions("reader", SETTINGS)
    block["publish"]["allow"] = [s for s in block["publish"]["allow"] if s != subject]
    return block


def _producer_without_clocks() -> dict[str, Any]:
    block = permissions("producer", SETTINGS)
    block["publish"]["allow"] = [s for s in block["publish"]["allow"] if not s.startswith("$KV.")]
    return block


def _config(tmp_path: Path) -> Path:
    users = [
        {"user": "admin", "password": "admin"},
        {"user": "agent", "password": "agent", "permissions": permissions("producer", SETTINGS)},
        {"user": "worker", "password": "worker", "permissions": permissions("reader", SETTINGS)},
        {"user": "srv", "password": "srv", "permissions": permissions("worker", SETTINGS)},
        {"user": "no-kv", "password": "no-kv", "permissions": _producer_without_clocks()},
        *(
            {"user": name, "password": name, "permissions": _short_of(subject)}
            for name, subject in SHORT_OF.items()
        ),
    ]
    conf = tmp_path / "roles.conf"
    conf.write_text(
        f"jetstream {{ sync_interval: always }}\nauthorization {{ users = {json.dumps(users)} }}\n"
    )
    return conf


@pytest.fixture
def server(tmp_path: Path) -> EmbeddedServer:
    s = EmbeddedServer(tmp_path / "nats", port=free_port(), config=_config(tmp_path))
    s.start()
    yield s  # type: ignore[misc]
    s.stop()


async def test_producer_and_reader_do_their_jobs_and_nothing_more(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """The admin creates the stream; the producer appends (new aggregates, expected versions,
    clock reservations across a reconnect) and is refused deleting the stream; the reader
    folds the log, travels in time, and is refused every append quickly."""
    admin = await EventStore.connect(server.url, user="admin", password="admin", stream=SETTINGS)
    await admin.close()

    async with await EventStore.connect(
        server.url, producer="agent-1", user="agent", password="agent", stream=SETTINGS
    ) as agent:
        first = await agent.append("task", "t-1", NewEvent("Created", {"n": 1}))
        # Presence works with the role: a second live "agent-1" is found (and answered).
        async with await EventStore.connect(
            server.url, producer="agent-1", user="agent", password="agent", stream=SETTINGS
        ) as twin:
            assert twin.presence is not None and len(twin.presence.shared_with) == 1
        await agent.append("task", "t-1", NewEvent("Moved", {"n": 2}), expected_version=1)
        # Enough bytes that the reader's ordered consumer needs flow control to read them.
        pad = "x" * 2000
        for chunk in range(4):
            await agent.append_many(
                [
                    AppendRequest("task", f"t-{i}", [NewEvent("Created", {"n": i, "pad": pad})])
                    for i in range(2 + chunk * 1000, 2 + (chunk + 1) * 1000)
                ]
            )
        assert [e.version async for e in agent.read("task", "t-1")] == [1, 2]
        assert await agent.version("task", "t-1") == 2
        for api in ("STREAM.DELETE", "STREAM.PURGE"):  # refused: the server never answers
            with pytest.raises(nats.errors.TimeoutError):
                await agent.nc.request(f"$JS.API.{api}.{SETTINGS.name}", b"{}", timeout=0.5)
    async with await EventStore.connect(
        server.url, producer="agent-1", user="agent", password="agent", stream=SETTINGS
    ) as again:
        later = await again.append("task", "t-1", NewEvent("Moved", {"n": 3}))
        assert later.lamport > first.lamport  # reserved above the first process's block

    async with (
        await EventStore.connect(
            server.url,
            producer="worker",
            user="worker",
            password="worker",
            stream=SETTINGS,
            append_timeout=20,
            presence=False,  # a reader never appends: no name to hold
        ) as reader,
        await ProjectionDB.open(tmp_path / "p.db") as db,
    ):
        checkpoint = await Runner(reader, db, [EntitiesProjection()]).catch_up()
        assert checkpoint == await reader.head() == 4003
        past = await TimeTravel(reader, EntitiesProjection(), db).state_at("task", "t-1", version=2)
        assert past.state == {"n": 2}
        events = [e async for e in reader.read_all()]
        assert len(events) == 4003
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match="roles"):
            await reader.append("task", "t-1", NewEvent("Forged"))
        assert time.monotonic() - started < 4.0  # not the 20 s append timeout
        with pytest.raises(nats.errors.TimeoutError):
            await reader.nc.request(f"$JS.API.STREAM.DELETE.{SETTINGS.name}", b"", timeout=0.5)
    assert await _head(server) == 4003  # nothing forged, deleted or purged


async def _head(server: EmbeddedServer) -> int:
    async with await EventStore.connect(
        server.url, user="admin", password="admin", stream=SETTINGS
    ) as admin:
        return await admin.head()


async def _fill(server: EmbeddedServer) -> None:
    """4000 events of 2 kB: enough that an ordered consumer reading them needs flow control."""
    async with await EventStore.connect(
        server.url, user="admin", password="admin", stream=SETTINGS
    ) as admin:
        pad = "x" * 2000
        for chunk in range(4):
            await admin.append_many(
                [
                    AppendRequest("task", f"t-{i}", [NewEvent("Created", {"pad": pad})])
                    for i in range(chunk * 1000, (chunk + 1) * 1000)
                ]
            )


@pytest.mark.parametrize("user", list(SHORT_OF))
async def test_a_reader_short_of_a_permission_is_told_which(
    server: EmbeddedServer, user: str
) -> None:
    """Direct gets (history), consumers (the log) and flow-control replies (long reads)
    refused: each read raises PermissionDenied naming the subject within seconds."""
    await _fill(server)
    async with await EventStore.connect(
        server.url, producer=user, user=user, password=user, stream=SETTINGS
    ) as reader:
        started = time.monotonic()
        with pytest.raises(PermissionDenied) as caught:
            if user == "no-direct":
                [e async for e in reader.read("task", "t-1")]
            else:
                [e async for e in reader.read_all()]
        assert time.monotonic() - started < 15.0
        assert SHORT_OF[user].lower().rstrip(">").rstrip(".") in caught.value.subject.lower()


def test_the_cli_prints_the_blocks_this_test_runs_with() -> None:
    """``eventstore permissions ROLE`` prints exactly the block the roles above were given."""
    for role in ("producer", "reader", "worker"):
        out = subprocess.run(
            [sys.executable, "-m", "consumers.cli", "--stream", "ROLES", "--prefix", "roles",
             "permissions", role],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert json.loads(out) == permissions(role, SETTINGS)


async def test_a_producer_refused_its_clock_bucket_is_told_at_once(
    server: EmbeddedServer,
) -> None:
    """Without ``$KV.<bucket>.>`` a producer cannot reserve clock values: its first append
    raises PermissionDenied naming the bucket well before the append timeout, and stores
    nothing."""
    assert await _head(server) == 0  # the admin creates the stream
    async with await EventStore.connect(
        server.url, producer="no-kv", user="no-kv", password="no-kv", stream=SETTINGS,
        append_timeout=20,
    ) as producer:  # fmt: skip
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match="eventstore_clocks_roles"):
            await producer.append("task", "k-1", NewEvent("Created"))
        assert time.monotonic() - started < 4.0
    assert await _head(server) == 0


async def test_a_worker_serves_and_a_reader_queries_and_follows_with_their_roles(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """A real worker process with the worker role serves the query service and the change
    feed; a client with the reader role finds it, reads a state and receives the feed, and
    cannot forge a notification (its publish on the feed is refused by the server)."""
    await _fill_small(server)
    host = server.url.removeprefix("nats://")
    log = tmp_path / "worker.log"
    proc = start_worker(f"nats://srv:srv@{host}", SETTINGS, tmp_path / "w.db", log)
    try:
        async with await EventStore.connect(
            server.url, user="worker", password="worker", stream=SETTINGS, presence=False
        ) as reader:
            client = ProjectionClient(reader)
            deadline = time.monotonic() + 30
            while True:
                try:
                    status = await client.status()
                    if status.checkpoint >= 3:
                        break
                except EventStoreError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.2)
            got = await client.state("task", "t-1")
            assert (got.version, got.state) == (2, {"n": 2})
            feed: asyncio.Queue[bytes] = asyncio.Queue()

            async def collect(msg: Any) -> None:
                await feed.put(msg.data)

            sub = await reader.nc.subscribe(feed_wildcard(SETTINGS.name, "entities"), cb=collect)
            async with await EventStore.connect(
                server.url, producer="agent-1", user="agent", password="agent", stream=SETTINGS
            ) as agent:
                await agent.append("task", "t-1", NewEvent("Moved", {"n": 3}))
            note = json.loads(await asyncio.wait_for(feed.get(), 10))
            assert (note["aggregate_id"], note["version"], note["state"]) == ("t-1", 3, {"n": 3})
            forged = feed_wildcard(SETTINGS.name, "entities").replace(">", "task.t-1")
            await reader.nc.publish(forged, b'{"version": 99}')
            await reader.nc.flush()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(feed.get(), 1.0)
            await sub.unsubscribe()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


async def _fill_small(server: EmbeddedServer) -> None:
    async with await EventStore.connect(
        server.url, user="admin", password="admin", stream=SETTINGS
    ) as admin:
        await admin.append("task", "t-1", NewEvent("Created", {"n": 1}))
        await admin.append("task", "t-1", NewEvent("Moved", {"n": 2}))
        await admin.append("task", "t-2", NewEvent("Created", {"n": 1}))
