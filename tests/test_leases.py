"""Leases and locks (``eventstore.leases``) against a real nats-server, and ``eventstore lock``."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_cli import cli

from eventstore import (
    EventStore,
    InvalidEvent,
    LeaseLost,
    LeaseUnavailable,
    NewEvent,
    StreamSettings,
    fenced_events,
)


async def test_acquire_is_exclusive_and_tokens_increase_with_every_grant(store: EventStore) -> None:
    """A second acquirer is refused naming the holder; after a release the next grant has a
    larger token, and a renewal keeps the token."""
    first = await store.leases.acquire("realm:te_po", owner="kitenga", ttl=30)
    with pytest.raises(LeaseUnavailable) as caught:
        await store.leases.acquire("realm:te_po", owner="other", ttl=30, wait=0.3)
    assert caught.value.holder == "kitenga"
    renewed = await store.leases.renew(first)
    assert renewed.token == first.token and not renewed.lost
    await store.leases.release("realm:te_po", first.token)
    second = await store.leases.acquire("realm:te_po", owner="other", ttl=30)
    assert second.token > first.token
    [shown] = await store.leases.show("realm:te_po")
    assert (shown.owner, shown.token) == ("other", second.token)


async def test_a_lost_lease_cannot_release_renew_or_append(store: EventStore) -> None:
    """Once another holder took the lease over, the old holder's release, renewal and fenced
    append all raise ``LeaseLost``, and the new holder keeps it."""
    old = await store.leases.acquire("job", owner="old", ttl=1)
    new = await store.leases.acquire("job", owner="new", ttl=30, wait=10)  # after expiry
    assert old.lost
    with pytest.raises(LeaseLost):
        await store.leases.release("job", old.token)
    with pytest.raises(LeaseLost):
        await store.leases.renew(old)
    with pytest.raises(LeaseLost):
        await store.append("realm", "job", NewEvent("Set"), lease=old)
    [shown] = await store.leases.show("job")
    assert shown.token == new.token


async def test_lock_renews_while_the_block_runs_and_releases_on_exit(store: EventStore) -> None:
    """A block longer than the TTL keeps the lease (renewed in the background), its appends
    carry the lease's name and token, and the lease is free once the block ends."""
    async with store.lock("realm:te_ao", owner="ui", ttl=1, wait=1) as lease:
        await asyncio.sleep(2.5)
        assert not lease.lost
        await store.append("realm", "te_ao", NewEvent("Set", {"a": 1}), lease=lease)
    [ev] = [e async for e in store.read("realm", "te_ao")]
    assert ev.metadata["lease"] == {"name": "realm:te_ao", "token": lease.token}
    assert await store.leases.show("realm:te_ao") == []


async def test_a_block_whose_lease_was_lost_raises_on_exit(store: EventStore) -> None:
    """The lease expires inside the block (renewals cannot reach it past ``max_hold``): the
    block sees ``lease.lost`` and leaving it raises ``LeaseLost``, never silently."""
    with pytest.raises(LeaseLost):
        async with store.lock("short", owner="a", ttl=1, max_hold=1) as lease:
            await asyncio.wait_for(lease.wait_lost(), 5)
            assert lease.lost


async def test_bad_arguments_are_invalid_event(store: EventStore) -> None:
    """An empty name, a TTL below a second or an empty owner is refused before any write."""
    for kwargs in ({"name": ""}, {"ttl": 0.1}, {"owner": ""}):
        args = {"name": "x", "owner": "o", "ttl": 5.0} | kwargs
        with pytest.raises(InvalidEvent):
            await store.leases.acquire(args.pop("name"), **args)  # type: ignore[arg-type]


async def test_fenced_events_stamp_metadata_and_keep_the_callers(store: EventStore) -> None:
    """The stamp joins the caller's metadata instead of replacing it."""
    lease = await store.leases.acquire("stamp", owner="o", ttl=5)
    [ev] = fenced_events(NewEvent("Set", metadata={"actor": "me"}), lease)
    assert ev.metadata == {"actor": "me", "lease": {"name": "stamp", "token": lease.token}}


def test_cli_lock_acquire_release_show(nats_url: str, settings: StreamSettings) -> None:
    """``lock acquire`` prints the grant; a second acquire is one line and exit 1; a release
    with another token is refused; ``show`` lists it; the right token releases it."""
    got = cli(nats_url, settings, "lock", "acquire", "realm:te_po", "--owner", "kitenga")
    assert got.returncode == 0, got.stderr
    grant = json.loads(got.stdout)
    assert set(grant) == {"name", "owner", "token", "expires_at"}
    held = cli(nats_url, settings, "lock", "acquire", "realm:te_po", "--owner", "x")
    assert held.returncode == 1 and len(held.stderr.splitlines()) == 1
    assert "kitenga" in held.stderr and "Traceback" not in held.stderr
    shown = cli(nats_url, settings, "lock", "show")
    assert [json.loads(line) for line in shown.stdout.splitlines()] == [grant]
    wrong = cli(nats_url, settings, "lock", "release", "realm:te_po", "--token", "999999")
    assert wrong.returncode == 1 and len(wrong.stderr.splitlines()) == 1
    ok = cli(nats_url, settings, "lock", "release", "realm:te_po", "--token", str(grant["token"]))
    assert ok.returncode == 0, ok.stderr
    after = cli(nats_url, settings, "lock", "show", "realm:te_po")
    assert json.loads(after.stdout)["owner"] is None
