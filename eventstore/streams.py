"""The stream that holds the log, and the checks that keep it immutable.

``ensure`` creates the stream or inspects an existing one. It never weakens a stream, and it
refuses to run against one whose settings would let events be deleted, purged, expired,
rolled up or lost to limits: an event store whose history can silently shrink is not one.

``StreamSettings`` refuses, when it is made, a name or prefix the server or the subjects could
not carry: a stream name is 1-234 letters, digits, ``_`` or ``-`` (JetStream allows 255
characters without whitespace, ``.``, ``*``, ``>`` or path separators, and the stream's clock
bucket ``KV_eventstore_clocks_<name>`` must be a valid name too); a prefix is dot-separated
tokens of letters, digits, ``_`` and ``-``, at most 128 characters, not under ``_INBOX`` (the
stream would capture every request's reply).
"""

from __future__ import annotations

import math
import re
from datetime import UTC
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from eventstore.clockstore import bucket_name
from eventstore.errors import (
    ConfigError,
    EventStoreError,
    NotConnected,
    RequestTimeout,
    StreamMisconfigured,
)
from eventstore.jetstream import add_stream, stream_info, translate, translating
from eventstore.logging import get_logger
from eventstore.subjects import DEFAULT_PREFIX, RESERVED_TOKEN, validate_prefix

__all__ = [
    "StreamIdentity",
    "StreamSettings",
    "ensure_stream",
    "stream_identity",
    "validate_stream_name",
    "validate_stream_prefix",
]

log = get_logger("eventstore.streams")

MAX_STREAM_NAME = 255 - len("KV_" + bucket_name(""))  # the clock bucket's stream name fits too
MAX_PREFIX = 128
_STREAM_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


def validate_stream_name(name: str) -> str:
    """``name`` if JetStream (and the stream's clock bucket) can carry it, else ConfigError."""
    if (
        not isinstance(name, str)
        or not _STREAM_NAME_RE.fullmatch(name)
        or len(name) > MAX_STREAM_NAME
    ):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ConfigError(
            f"stream name {shown} is invalid: use 1-{MAX_STREAM_NAME} letters, digits, _ or - "
            "(no spaces, dots, wildcards or slashes), e.g. EVENTS"
        )
    return name


def validate_stream_prefix(prefix: str) -> str:
    """``prefix`` if it is a valid subject prefix for the log, else ConfigError."""
    shown = repr(prefix) if len(repr(prefix)) <= 80 else repr(prefix)[:77] + "..."
    try:
        validate_prefix(prefix)
    except EventStoreError as exc:
        if prefix.split(".")[0] == RESERVED_TOKEN:  # well-formed, but reserved: say so
            raise ConfigError(str(exc)) from exc
        raise ConfigError(
            f"subject prefix {shown} is invalid: use dot-separated tokens of letters, digits, "
            "_ and -, e.g. events"
        ) from exc
    if len(prefix) > MAX_PREFIX:
        raise ConfigError(f"subject prefix {shown} is longer than {MAX_PREFIX} characters")
    if prefix.split(".")[0] == "_INBOX":
        raise ConfigError(
            f"subject prefix {shown} is reserved: replies travel on _INBOX.>, which the log "
            "must never capture"
        )
    return prefix


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how the log is kept. Defaults are the product's (DESIGN.md)."""

    name: str = "EVENTS"
    prefix: str = DEFAULT_PREFIX
    duplicate_window: float = 120.0
    replicas: int = 1
    max_age: float = 0.0  # 0: keep forever
    max_bytes: int = -1  # -1: unlimited

    def __post_init__(self) -> None:
        validate_stream_name(self.name)
        validate_stream_prefix(self.prefix)
        where = f"stream {self.name}"
        if not (math.isfinite(self.duplicate_window) and self.duplicate_window > 0):
            raise ConfigError(f"{where}: duplicate_window must be > 0 seconds")
        if not (math.isfinite(self.max_age) and self.max_age >= 0):
            raise ConfigError(f"{where}: max_age must be >= 0 seconds (0: keep forever)")
        if isinstance(self.replicas, bool) or self.replicas not in range(1, 6):
            raise ConfigError(f"{where}: replicas must be 1 to 5")
        if self.max_bytes != -1 and not 0 < self.max_bytes < 2**63:
            raise ConfigError(f"{where}: max_bytes must be -1 (unlimited) or > 0")

    @property
    def subjects(self) -> list[str]:
        return [f"{self.prefix}.>"]

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=self.subjects,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=self.duplicate_window,
            num_replicas=self.replicas,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            max_msgs=-1,
            max_msgs_per_subject=-1,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            allow_rollup_hdrs=False,
            allow_atomic=True,
        )


def _problems(cfg: Any, want: StreamSettings) -> list[str]:
    p: list[str] = []
    if not cfg.deny_delete:
        p.append("deny_delete is off (messages can be deleted)")
    if not cfg.deny_purge:
        p.append("deny_purge is off (the stream can be purged)")
    if cfg.allow_rollup_hdrs:
        p.append("allow_rollup_hdrs is on (a rollup erases history)")
    if not getattr(cfg, "allow_atomic", False):
        p.append("allow_atomic is off (multi-event appends would not be atomic)")
    if str(getattr(cfg.storage, "value", cfg.storage)) != "file":
        p.append(f"storage is {cfg.storage} (events would not survive a restart)")
    retention = str(getattr(cfg.retention, "value", cfg.retention))
    if retention != "limits":
        p.append(f"retention is {retention} (consumers would remove events)")
    if (cfg.max_msgs or -1) > 0:
        p.append(f"max_msgs is {cfg.max_msgs} (old events would be dropped)")
    if (cfg.max_msgs_per_subject or -1) > 0:
        p.append(f"max_msgs_per_subject is {cfg.max_msgs_per_subject} (history is truncated)")
    if (cfg.max_bytes or -1) > 0 and (want.max_bytes <= 0 or cfg.max_bytes != want.max_bytes):
        p.append(f"max_bytes is {cfg.max_bytes} (old events would be dropped)")
    if (cfg.max_age or 0) > 0 and (want.max_age <= 0 or cfg.max_age != want.max_age):
        p.append(f"max_age is {cfg.max_age}s (old events would expire)")
    if getattr(cfg, "allow_msg_ttl", False):
        p.append("allow_msg_ttl is on (events could expire)")
    if (cfg.num_replicas or 1) < want.replicas:
        p.append(
            f"num_replicas is {cfg.num_replicas or 1}, fewer than the {want.replicas} asked "
            "(--replicas, EVENTSTORE_REPLICAS), so it survives the loss of fewer nodes; "
            f"raise it (`nats stream edit {cfg.name} --replicas {want.replicas}`) or ask for fewer"
        )
    if want.subjects[0] not in (cfg.subjects or []):
        p.append(f"its subjects {cfg.subjects} do not include {want.subjects[0]}")
    return p


async def ensure_stream(js: Any, settings: StreamSettings, *, url: str = "") -> Any:
    """Create the stream, or check that an existing one keeps the log immutable.

    Returns the stream info. Raises ``StreamMisconfigured`` naming every weakening setting.
    """
    validate_prefix(settings.prefix)
    what = f"setting up stream {settings.name!r}"
    try:
        info = await stream_info(js, settings.name)
    except Exception as exc:
        err = translate(exc, what=what, url=url, timeout=5.0)
        if isinstance(err, (NotConnected, RequestTimeout)):
            err = NotConnected(url, "JetStream is not enabled or not answering")
        raise err from exc
    if info is None:
        with translating(what=what, url=url, timeout=5.0):
            info = await add_stream(js, settings.config())
        log.info("stream created", stream=settings.name, subjects=settings.subjects)
        return info
    problems = _problems(info.config, settings)
    if problems:
        raise StreamMisconfigured(settings.name, problems)
    dup = info.config.duplicate_window or 0
    if abs(dup - settings.duplicate_window) > 1e-6:
        log.info("stream duplicate window differs", stream=settings.name, configured=dup,
                 requested=settings.duplicate_window)  # fmt: skip
    return info


class StreamIdentity(msgspec.Struct, frozen=True):
    """Which stream a log is: its name and when the server created it (RFC 3339, UTC).

    A stream deleted and created again (a store reset) or the stream of the same name on
    another server has another creation time; a projection database records this to refuse
    folding another stream's log.
    """

    name: str
    created: str


async def stream_identity(js: JetStreamContext, name: str, *, url: str) -> StreamIdentity:
    """The stream's name and creation time, from the server (see ``StreamIdentity``)."""
    try:
        info = await stream_info(js, name)
    except Exception as exc:
        err = translate(exc, what=f"stream info of {name!r}", url=url, timeout=5.0)
        if isinstance(err, RequestTimeout):
            err = NotConnected(url, str(exc) or type(exc).__name__)
        raise err from exc
    if info is None:
        raise ConfigError(
            f"stream {name!r} does not exist on {url}; check the stream name, or "
            "create it with `eventstore server` (or a store connected with ensure=True)"
        )
    created = info.created.astimezone(UTC).isoformat() if info.created else ""
    return StreamIdentity(name=name, created=created)
