"""Real parts only: a real nats-server with JetStream on a free loopback port, a real SQLite.

One server per session (started from the project's own nats.conf); every test gets its own
stream name and subject prefix, so tests never see each other's events. Tests that restart or
kill a server use ``private_server``, which is theirs alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eventstore import EmbeddedServer, EventStore, StreamSettings
from eventstore.server import free_port

os.environ.setdefault("EVENTSTORE_LOG_LEVEL", "warning")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path_factory.mktemp("nats"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test's own, free to be killed and restarted on the same port."""
    server = EmbeddedServer(tmp_path / "nats", port=free_port())
    server.start()
    yield server
    server.kill()


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


@pytest.fixture
def settings() -> StreamSettings:
    """A stream and subject prefix of this test's own."""
    tag = uuid.uuid4().hex[:12]
    return StreamSettings(name=f"T_{tag}", prefix=f"t{tag}")


@pytest.fixture
async def store(nats_url: str, settings: StreamSettings) -> AsyncIterator[EventStore]:
    async with await EventStore.connect(nats_url, producer="tester", stream=settings) as s:
        yield s


def pytest_configure(config: pytest.Config) -> None:
    from eventstore.logging import configure_logging

    configure_logging("warning", json=False)
