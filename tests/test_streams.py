"""The stream: created immutable, and refused when an existing one is weaker."""

from __future__ import annotations

import nats
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from eventstore import EventStore, NewEvent, StreamMisconfigured, StreamSettings


async def test_ensure_creates_an_immutable_stream(nats_url: str, settings: StreamSettings) -> None:
    """A new stream has file storage, deny delete/purge, direct get, atomic batches, no limits."""
    async with await EventStore.connect(nats_url, stream=settings) as store:
        info = await store.js.stream_info(settings.name)
        cfg = info.config
        assert cfg.subjects == [f"{settings.prefix}.>"]
        assert str(getattr(cfg.storage, "value", cfg.storage)) == "file"
        assert (cfg.deny_delete, cfg.deny_purge, cfg.allow_direct, cfg.allow_atomic) == (
            True,
            True,
            True,
            True,
        )
        assert cfg.duplicate_window == pytest.approx(120.0)
        assert (cfg.max_age, cfg.max_msgs, cfg.max_bytes) == (0.0, -1, -1)
        await store.ensure()  # checking it again is fine


async def test_history_cannot_be_deleted_or_purged(nats_url: str, settings: StreamSettings) -> None:
    """The server itself refuses to delete a message or purge the stream."""
    async with await EventStore.connect(nats_url, stream=settings) as store:
        await store.append("agent", "a", NewEvent("Created"))
        with pytest.raises(nats.js.errors.APIError):
            await store.js.delete_msg(settings.name, 1)
        with pytest.raises(nats.js.errors.APIError):
            await store.js.purge_stream(settings.name)
        assert await store.head() == 1


async def test_duplicate_window_is_configurable(nats_url: str, settings: StreamSettings) -> None:
    """The dedup window comes from the settings."""
    custom = StreamSettings(name=settings.name, prefix=settings.prefix, duplicate_window=7.0)
    async with await EventStore.connect(nats_url, stream=custom) as store:
        info = await store.js.stream_info(settings.name)
        assert info.config.duplicate_window == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("weakness", "fragment"),
    [
        ({"deny_delete": False}, "deny_delete"),
        ({"deny_purge": False}, "deny_purge"),
        ({"max_msgs": 1000}, "max_msgs"),
        ({"max_age": 3600.0}, "max_age"),
        ({"max_msgs_per_subject": 10}, "max_msgs_per_subject"),
        ({"allow_rollup_hdrs": True, "deny_purge": False}, "rollup"),
        ({"allow_atomic": False}, "allow_atomic"),
    ],
)
async def test_weakened_stream_is_refused(
    nats_url: str, settings: StreamSettings, weakness: dict[str, object], fragment: str
) -> None:
    """An existing stream that weakens immutability makes connect fail, naming the setting."""
    nc = await nats.connect(nats_url)
    try:
        base: dict[str, object] = {
            "name": settings.name,
            "subjects": [f"{settings.prefix}.>"],
            "deny_delete": True,
            "deny_purge": True,
            "allow_atomic": True,
        }
        base.update(weakness)
        await nc.jetstream().add_stream(StreamConfig(**base))  # type: ignore[arg-type]
    finally:
        await nc.close()
    with pytest.raises(StreamMisconfigured, match=fragment):
        await EventStore.connect(nats_url, stream=settings)
