"""Producer presence: two live connections under one producer name are warned about, at
connect, against a real nats-server; other names, closed holders and readers are not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from eventstore import ConfigError, EventStore, StreamSettings
from eventstore.presence import Presence, presence_subject

SCRIPT = Path(sys.executable).parent / "eventstore"
BASE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "consumers.cli"]


def _shared(logs: list[Any]) -> list[Any]:
    return [e for e in logs if e.get("log_level") == "warning" and "producer name" in str(e)]


async def test_a_second_connection_with_the_same_name_warns_both_sides(
    nats_url: str, settings: StreamSettings
) -> None:
    """The second store's connect warns naming the producer; the first logs it too."""
    async with await EventStore.connect(nats_url, producer="agent-7", stream=settings) as first:
        with capture_logs() as logs:
            async with await EventStore.connect(
                nats_url, producer="agent-7", stream=settings
            ) as second:
                assert second.presence is not None and len(second.presence.shared_with) == 1
        warned = _shared(logs)
        assert {e["producer"] for e in warned} == {"agent-7"}
        assert len(warned) == 2  # the newcomer at its connect, the holder when asked
        assert first.presence is not None and len(first.presence.shared_with) == 1


async def test_different_names_and_a_closed_holder_do_not_warn(
    nats_url: str, settings: StreamSettings
) -> None:
    """Another name is no warning, and neither is the same name once its holder closed."""
    first = await EventStore.connect(nats_url, producer="agent-a", stream=settings)
    with capture_logs() as logs:
        async with await EventStore.connect(nats_url, producer="agent-b", stream=settings):
            pass
    assert _shared(logs) == []
    await first.close()
    with capture_logs() as logs:
        async with await EventStore.connect(nats_url, producer="agent-a", stream=settings) as s:
            assert s.presence is not None and s.presence.shared_with == []
    assert _shared(logs) == []


async def test_the_same_name_on_another_stream_and_readers_do_not_warn(
    nats_url: str, settings: StreamSettings
) -> None:
    """Presence is per stream, and a connection made with presence=False neither warns nor
    is found (workers and read commands never append)."""
    other = StreamSettings(name=settings.name + "_B", prefix=settings.prefix + "b")
    async with await EventStore.connect(nats_url, producer="agent-c", stream=settings):
        with capture_logs() as logs:
            async with await EventStore.connect(nats_url, producer="agent-c", stream=other):
                pass
            async with await EventStore.connect(
                nats_url, producer="agent-c", stream=settings, presence=False
            ) as reader:
                assert reader.presence is None
        assert _shared(logs) == []
    async with await EventStore.connect(
        nats_url, producer="agent-d", stream=settings, presence=False
    ):
        with capture_logs() as logs:
            async with await EventStore.connect(nats_url, producer="agent-d", stream=settings):
                pass
        assert _shared(logs) == []


def test_presence_subjects_stay_outside_every_stream() -> None:
    """The subject is one token per name (dots escaped), and no log prefix may start _ES."""
    assert presence_subject("EVENTS", "a.b-1") == "_ES.PRODUCER.EVENTS.a%2Eb-1"
    for prefix in ("_ES", "_ES.events"):
        with pytest.raises(ConfigError, match="reserved"):
            StreamSettings(prefix=prefix)
    assert StreamSettings(prefix="_ESX").prefix == "_ESX"


async def test_cli_publish_under_a_live_name_prints_one_warning_line(
    nats_url: str, settings: StreamSettings
) -> None:
    """`eventstore publish --producer P` while P is connected: exit 0, one stderr line naming
    P; under a free name: nothing on stderr."""
    base = [*BASE, "--url", nats_url, "--stream", settings.name, "--prefix", settings.prefix]
    env = {"PATH": "/usr/bin:/bin", "EVENTSTORE_LOG_LEVEL": "warning"}

    def publish(producer: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, "publish", "agent", "x", "Noted", "--producer", producer],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip

    async with await EventStore.connect(nats_url, producer="agent-9", stream=settings):
        # In a thread: the holder's event loop must be free to answer.
        shared = await asyncio.to_thread(publish, "agent-9")
        free = await asyncio.to_thread(publish, "agent-10")
    assert shared.returncode == 0, shared.stderr
    lines = shared.stderr.strip().splitlines()
    assert len(lines) == 1 and "agent-9" in lines[0] and "Traceback" not in shared.stderr
    assert free.returncode == 0 and free.stderr == ""


async def test_a_free_name_is_answered_by_no_responders_at_once(
    nats_url: str, settings: StreamSettings
) -> None:
    """Not a timing assertion: with nobody holding the name the request is answered ("no
    responders") instead of waiting out its timeout (30 s here); a holder never answers its
    own request. Measured connect-time figures are in the README."""
    async with await EventStore.connect(nats_url, producer="agent-e", stream=settings) as s:
        probe = Presence(s.nc, settings.name, "agent-free")
        started = time.monotonic()
        await probe.announce(timeout=30.0)
        assert time.monotonic() - started < 25.0
        assert probe.shared_with == []
        assert s.presence is not None and s.presence.shared_with == []
