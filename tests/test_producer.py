"""Appending: versions, optimistic concurrency, atomic batches, idempotency, clocks, failures."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from eventstore import (
    AppendRequest,
    AppendTimeout,
    EmbeddedServer,
    EventStore,
    InvalidEvent,
    NewEvent,
    NotConnected,
    Order,
    PermissionDenied,
    StreamSettings,
    VectorClock,
    VersionConflict,
    uuid7,
)
from eventstore.server import free_port


async def _versions(store: EventStore, agg_type: str, agg_id: str) -> list[int]:
    return [e.version async for e in store.read(agg_type, agg_id)]


async def test_versions_are_contiguous_whatever_the_mode(store: EventStore) -> None:
    """Sequential, concurrent and multi-event appends all give versions 1..N without gaps."""
    await store.append("agent", "a", NewEvent("Created"))
    await asyncio.gather(
        *(store.append("agent", "a", NewEvent("Tick", {"i": i})) for i in range(50))
    )
    r = await store.append("agent", "a", [NewEvent("Batch", {"i": i}) for i in range(10)])
    assert r.version == 61
    assert r.last_seq - r.first_seq == 9
    assert await _versions(store, "agent", "a") == list(range(1, 62))


async def test_expected_version_zero_means_new(store: EventStore) -> None:
    """expected_version=0 creates a new aggregate and fails once it exists."""
    r = await store.append("agent", "n", NewEvent("Created"), expected_version=0)
    assert (r.version, r.duplicate) == (1, False)
    with pytest.raises(VersionConflict) as err:
        await store.append("agent", "n", NewEvent("Created"), expected_version=0)
    assert (err.value.expected, err.value.actual) == (0, 1)
    assert "expected version 0, actual version 1" in str(err.value)


async def test_stale_cache_is_checked_against_the_server(
    nats_url: str, settings: StreamSettings
) -> None:
    """A writer whose cached head is stale learns the real version from the server."""
    async with (
        await EventStore.connect(nats_url, producer="w1", stream=settings) as a,
        await EventStore.connect(nats_url, producer="w2", stream=settings) as b,
    ):
        await a.append("agent", "x", NewEvent("Created"))
        await b.append("agent", "x", NewEvent("Changed"), expected_version=1)
        # a still caches version 1; its expectation of 1 is now wrong, 2 is right.
        with pytest.raises(VersionConflict) as err:
            await a.append("agent", "x", NewEvent("Changed"), expected_version=1)
        assert (err.value.expected, err.value.actual) == (1, 2)
        r = await a.append("agent", "x", NewEvent("Changed"), expected_version=2)
        assert r.version == 3
        # Without an expectation, a stale cache just retries to the next version.
        await b.append("agent", "x", NewEvent("Changed"))
        r = await a.append("agent", "x", NewEvent("Changed"))
        assert r.version == 5
        assert await _versions(a, "agent", "x") == [1, 2, 3, 4, 5]


async def test_ten_concurrent_writers_same_expected_version(
    nats_url: str, settings: StreamSettings
) -> None:
    """Ten writers (separate connections) expecting the same version: exactly one wins."""
    stores = [
        await EventStore.connect(nats_url, producer=f"writer-{i}", stream=settings)
        for i in range(10)
    ]
    try:
        await stores[0].append("agent", "race", [NewEvent("Created"), NewEvent("Started")])
        results = await asyncio.gather(
            *(
                s.append("agent", "race", NewEvent("Claimed", {"by": i}), expected_version=2)
                for i, s in enumerate(stores)
            ),
            return_exceptions=True,
        )
    finally:
        for s in stores:
            await s.close()
    wins = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, VersionConflict)]
    assert len(wins) == 1 and len(conflicts) == 9, results
    assert all((c.expected, c.actual) == (2, 3) for c in conflicts)
    async with await EventStore.connect(nats_url, stream=settings) as s:
        events = [e async for e in s.read("agent", "race")]
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.type for e in events].count("Claimed") == 1


async def test_group_commit_splits_a_failed_expectation(store: EventStore) -> None:
    """When one expectation in a coalesced batch fails, only that append fails."""
    await store.append("agent", "g1", NewEvent("Created"))
    await store.append("agent", "g2", NewEvent("Created"))
    results = await store.append_many(
        [
            AppendRequest("agent", "g1", [NewEvent("Ok")], expected_version=1),
            AppendRequest("agent", "g2", [NewEvent("Stale")], expected_version=5),
            AppendRequest("agent", "g3", [NewEvent("Created"), NewEvent("Next")]),
            AppendRequest("agent", "g1", [NewEvent("Ok2")], expected_version=2),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "AppendResult",
        "VersionConflict",
        "AppendResult",
        "AppendResult",
    ]
    assert await _versions(store, "agent", "g1") == [1, 2, 3]
    assert await _versions(store, "agent", "g2") == [1]
    assert await _versions(store, "agent", "g3") == [1, 2]


async def test_multi_event_append_is_all_or_nothing(store: EventStore) -> None:
    """A multi-event append that fails stores none of its events."""
    await store.append("agent", "m", NewEvent("Created"))
    big = NewEvent("Huge", {"blob": "x" * (2 << 20)})
    with pytest.raises(InvalidEvent, match="bytes"):
        await store.append("agent", "m", [NewEvent("Fine"), big, NewEvent("Fine")])
    with pytest.raises(VersionConflict):
        await store.append("agent", "m", [NewEvent("A"), NewEvent("B")], expected_version=7)
    assert await _versions(store, "agent", "m") == [1]
    assert await store.head() == 1


async def test_oversized_event_is_refused_before_sending(store: EventStore) -> None:
    """An event over the server's max_payload is an InvalidEvent naming both sizes."""
    with pytest.raises(InvalidEvent, match=r"at most \d+ bytes"):
        await store.append("agent", "big", NewEvent("Huge", {"blob": "x" * (1 << 20)}))
    assert await store.head() == 0


async def test_invalid_input_is_refused_with_no_damage(store: EventStore) -> None:
    """Bad types, ids, expectations and empty appends raise InvalidEvent; the log is untouched."""
    with pytest.raises(InvalidEvent, match="aggregate type"):
        await store.append("Agent", "x", NewEvent("Created"))
    with pytest.raises(InvalidEvent, match="empty"):
        await store.append("agent", "", NewEvent("Created"))
    with pytest.raises(InvalidEvent, match="at least one"):
        await store.append("agent", "x", [])
    with pytest.raises(InvalidEvent, match="expected_version"):
        await store.append("agent", "x", NewEvent("Created"), expected_version=-1)
    with pytest.raises(InvalidEvent, match="twice"):
        await store.append("agent", "x", [NewEvent("A", id="same"), NewEvent("B", id="same")])
    with pytest.raises(InvalidEvent, match="1000"):
        await store.append("agent", "x", [NewEvent("A")] * 1001)
    assert await store.head() == 0


async def test_retry_with_same_ids_inside_the_dedup_window(store: EventStore) -> None:
    """Re-appending events with the same ids returns duplicate=True and stores nothing."""
    first = await store.append("agent", "d", [NewEvent("A", id="req-1"), NewEvent("B", id="req-2")])
    again = await store.append("agent", "d", [NewEvent("A", id="req-1"), NewEvent("B", id="req-2")])
    assert (again.duplicate, again.first_seq, again.last_seq, again.version) == (
        True,
        first.first_seq,
        first.last_seq,
        2,
    )
    one = await store.append("agent", "d", NewEvent("C", id="req-3"), expected_version=2)
    again1 = await store.append("agent", "d", NewEvent("C", id="req-3"), expected_version=2)
    assert again1.duplicate and again1.first_seq == one.first_seq
    assert await store.head() == 3


async def test_event_id_reused_on_another_aggregate_is_refused(store: EventStore) -> None:
    """An id already used by another aggregate's event is refused, never reported as stored."""
    await store.append("agent", "one", NewEvent("A", id="shared-id"))
    with pytest.raises(InvalidEvent, match="unique in the stream"):
        await store.append("agent", "two", NewEvent("A", id="shared-id"))
    with pytest.raises(InvalidEvent, match="unique in the stream"):
        await store.append("agent", "two", [NewEvent("A", id="shared-id"), NewEvent("B")])
    assert await store.head() == 1


async def test_retry_after_the_dedup_window(nats_url: str, settings: StreamSettings) -> None:
    """After the server forgot the ids, a retry still finds them and stores nothing."""
    short = StreamSettings(name=settings.name, prefix=settings.prefix, duplicate_window=0.5)
    async with await EventStore.connect(nats_url, producer="p", stream=short) as store:
        await store.append("agent", "late", NewEvent("A", id="late-1"))
        await store.append("agent", "late", NewEvent("B"))
        await asyncio.sleep(1.2)
        again = await store.append("agent", "late", NewEvent("A", id="late-1"))
        assert again.duplicate and again.version == 1
        again = await store.append("agent", "late", NewEvent("A", id="late-1"), expected_version=0)
        assert again.duplicate
        with pytest.raises(InvalidEvent, match="exactly the same events"):
            await store.append(
                "agent", "late", [NewEvent("A", id="late-1"), NewEvent("X", id="new")]
            )
        assert await store.head() == 2


def losing_one_ack(
    real: Callable[..., Awaitable[bytes]], lost: list[str], *, batches_only: bool = False
) -> Callable[..., Awaitable[bytes]]:
    """A committer ``_request`` whose first commit (of a batch, or a single publish unless
    ``batches_only``) is stored by the server but its ack never reaches the producer; the
    subject goes into ``lost`` (clear it to lose the next one)."""

    async def lose(
        subject: str, body: bytes, headers: dict[str, str], t: float, *rest: Any
    ) -> bytes:
        reply = await real(subject, body, headers, t, *rest)
        single = not batches_only and "Nats-Batch-Id" not in headers
        if not lost and ("Nats-Batch-Commit" in headers or single):
            lost.append(subject)
            raise nats.errors.TimeoutError  # stored on the server, the ack never reaches us
        return reply

    return lose


async def test_lost_ack_retry_stores_no_duplicate(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stores a batch but its ack is lost: the retry recognises it, count stays exact."""
    committer = store._committer
    assert committer is not None
    real = committer._request
    lost: list[str] = []
    monkeypatch.setattr(committer, "_request", losing_one_ack(real, lost))
    r = await store.append("agent", "lost", [NewEvent("A"), NewEvent("B"), NewEvent("C")])
    assert lost and r.duplicate and (r.version, r.last_seq - r.first_seq) == (3, 2)
    lost.clear()
    r = await store.append("agent", "lost", NewEvent("D"), expected_version=3)
    assert lost and r.duplicate and r.version == 4
    # Two appends to one aggregate in the same lost batch: each finds its own stored copy.
    lost.clear()
    both = await store.append_many(
        [
            AppendRequest("agent", "lost", [NewEvent("D1"), NewEvent("D2")]),
            AppendRequest("agent", "lost", [NewEvent("D3")]),
            AppendRequest("agent", "other", [NewEvent("O1")]),
        ]
    )
    assert lost
    assert [(r.version, r.duplicate) for r in both if not isinstance(r, Exception)] == [
        (6, True),
        (7, True),
        (1, True),
    ]
    monkeypatch.setattr(committer, "_request", real)
    r = await store.append("agent", "lost", NewEvent("E"))
    assert (r.version, r.duplicate) == (8, False)
    assert await _versions(store, "agent", "lost") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert await store.head() == 9


async def test_clocks_increase_across_producer_restarts(
    nats_url: str, settings: StreamSettings
) -> None:
    """A producer's own vector entry and Lamport time strictly increase across restarts."""
    seen: list[tuple[int, int]] = []
    for _ in range(3):  # three "processes" with the same producer name
        async with await EventStore.connect(nats_url, producer="cli-x", stream=settings) as s:
            for i in range(3):
                r = await s.append("agent", f"c{i}", NewEvent("Tick"))
                seen.append((r.lamport, r.vclock["cli-x"]))
    lamports = [x for x, _ in seen]
    counters = [c for _, c in seen]
    assert lamports == sorted(set(lamports)) and counters == sorted(set(counters))


async def test_expected_version_merges_the_clock_it_expected(
    nats_url: str, settings: StreamSettings
) -> None:
    """With expected_version the new clock dominates the expected event's; without, concurrent."""
    async with (
        await EventStore.connect(nats_url, producer="alice", stream=settings) as a,
        await EventStore.connect(nats_url, producer="bob", stream=settings) as b,
    ):
        first = await a.append("doc", "d1", NewEvent("Created"))
        informed = await b.append("doc", "d1", NewEvent("Edited"), expected_version=1)
        assert VectorClock(first.vclock).compare(informed.vclock) is Order.BEFORE
        assert informed.lamport > first.lamport
        blind = await a.append("doc", "d2", NewEvent("Created"))
        other = await b.append("doc", "d2", NewEvent("Edited"))  # b never read d2
        assert VectorClock(blind.vclock).compare(other.vclock) is Order.CONCURRENT
        # Passing the state's clock as context makes the write causally after it.
        ctx = await b.append("doc", "d2", NewEvent("Edited"), context=blind.vclock)
        assert VectorClock(blind.vclock).compare(ctx.vclock) is Order.BEFORE


async def test_raw_client_event_is_read_back(store: EventStore, nats_url: str) -> None:
    """A valid JSON event published by a plain nats-py client is read like any other."""
    nc = await nats.connect(nats_url)
    body = {
        "id": uuid7(),
        "type": "Created",
        "aggregate_type": "agent",
        "aggregate_id": "from-go",
        "version": 1,
        "occurred_at": "2026-11-23T10:00:00Z",
        "producer": "go-agent",
        "lamport": 1,
        "vclock": {"go-agent": 1},
        "data": {"lang": "go"},
    }
    ack = await nc.jetstream().publish(
        store.subject("agent", "from-go"),
        msgspec.json.encode(body),
        headers={"Nats-Msg-Id": str(body["id"]), "Nats-Expected-Last-Subject-Sequence": "0"},
    )
    await nc.close()
    events = [e async for e in store.read("agent", "from-go")]
    assert [(e.seq, e.producer, e.data) for e in events] == [(ack.seq, "go-agent", {"lang": "go"})]
    r = await store.append("agent", "from-go", NewEvent("Started"), expected_version=1)
    assert r.version == 2
    assert VectorClock(body["vclock"]).compare(r.vclock) is Order.BEFORE  # type: ignore[arg-type]


async def test_unreachable_server_is_not_connected() -> None:
    """Connecting where no server listens raises NotConnected naming the URL."""
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(NotConnected, match=url):
        await EventStore.connect(url, connect_timeout=0.5)


PERMS_CONF = """
max_payload: 1MB
jetstream { sync_interval: always }
authorization {
  users = [
    { user: admin, password: admin }
    { user: agent, password: agent, permissions: {
        publish: { allow: ["$JS.API.>", "$KV.>", "_INBOX.>", "events.agent.>"] }
        subscribe: { allow: ["_INBOX.>"] } } }
  ]
}
"""


async def test_permission_violation_fails_fast(tmp_path: Path) -> None:
    """Publishing to a subject the user may not use raises PermissionDenied well before timeout."""
    conf = tmp_path / "perms.conf"
    conf.write_text(PERMS_CONF)
    server = EmbeddedServer(tmp_path / "nats", port=free_port(), config=conf)
    server.start()
    try:
        admin = await EventStore.connect(server.url, user="admin", password="admin")
        await admin.close()
        async with await EventStore.connect(
            server.url, producer="restricted", user="agent", password="agent", append_timeout=20
        ) as store:
            ok = await store.append("agent", "a1", NewEvent("Created"))
            assert ok.version == 1
            start = time.monotonic()
            with pytest.raises(PermissionDenied, match="secret"):
                await store.append("secret", "Upper-S1", NewEvent("Created"))
            with pytest.raises(PermissionDenied, match="secret"):
                await store.append("secret", "Upper-S1", [NewEvent("A"), NewEvent("B")])
            assert time.monotonic() - start < 4.0  # not the 20 s append timeout
            assert (await store.append("agent", "a1", NewEvent("Again"))).version == 2
            assert await store.head() == 2
    finally:
        server.stop()


async def _run_writers(
    store: EventStore, n: int, aggregates: int, concurrency: int, written: list[str]
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            r = await store.append("job", f"j{i % aggregates}", NewEvent("Step", {"i": i}))
            written.extend(r.ids)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@pytest.mark.slow
async def test_server_kill_and_restart_mid_stream(private_server: EmbeddedServer) -> None:
    """SIGKILL the server twice during 3000 appends: every event stored once, versions exact."""
    n, aggregates = 3000, 7
    written: list[str] = []
    async with await EventStore.connect(
        private_server.url, producer="survivor", append_timeout=60
    ) as store:
        task = asyncio.create_task(_run_writers(store, n, aggregates, 20, written))
        for threshold in (600, 1800):
            while len(written) < threshold:
                await asyncio.sleep(0.01)
            private_server.kill()
            await asyncio.sleep(0.5)
            private_server.start()
        await asyncio.wait_for(task, 120)
        events = [e async for e in store.read_all()]
    assert len(written) == n
    ids = Counter(e.id for e in events)
    assert len(events) == n and set(ids) == set(written) and max(ids.values()) == 1
    per: dict[str, list[int]] = {}
    for e in events:
        per.setdefault(e.aggregate_id, []).append(e.version)
    assert sorted(per) == sorted(f"j{i}" for i in range(aggregates))
    assert all(v == list(range(1, len(v) + 1)) for v in per.values())
    assert sorted(e.data["i"] for e in events) == list(range(n))


async def test_append_gives_up_at_its_deadline(private_server: EmbeddedServer) -> None:
    """With the server gone, an append raises AppendTimeout at its deadline, not never."""
    async with await EventStore.connect(private_server.url, producer="p") as store:
        await store.append("agent", "t", NewEvent("Created"))
        private_server.kill()
        start = time.monotonic()
        with pytest.raises(AppendTimeout, match="retrying with the same event ids is safe"):
            await store.append("agent", "t", NewEvent("Lost"), timeout=1.5)
        assert 1.4 < time.monotonic() - start < 10
        private_server.start()
        r = await store.append("agent", "t", NewEvent("Back"), timeout=30)
        assert r.version == 2


async def test_append_after_a_malformed_message(store: EventStore, nats_url: str) -> None:
    """A garbage message on an aggregate takes no version; appends continue after it."""
    await store.append("agent", "mal", NewEvent("Created"))
    nc = await nats.connect(nats_url)
    await nc.jetstream().publish(store.subject("agent", "mal"), b"{garbage")
    await nc.close()
    async with await EventStore.connect(nats_url, producer="fresh", stream=store.settings) as s2:
        r = await s2.append("agent", "mal", NewEvent("Next"), expected_version=1)
        assert (r.version, r.first_seq) == (2, 3)
