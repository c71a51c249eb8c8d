"""How ``EventStore.connect`` connects: its settings, and the one place a connection opens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client

from eventstore.credentials import client_options, guarded_connect
from eventstore.delivery import install_delivery
from eventstore.errors import (
    ConfigError,
    NotConnected,
    PermissionDenied,
    RequestTimeout,
    ServerError,
)
from eventstore.jetstream import close_connection, install_parsers, translate
from eventstore.logging import get_logger
from eventstore.streams import StreamSettings

__all__ = ["Callbacks", "ConnectSettings", "ensure_or_close", "open_connection"]

log = get_logger("eventstore.store")


class ConnectSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The options of ``EventStore.connect``, each also accepted as a keyword argument."""

    producer: str = "default"
    """Stable name of this writer, recorded in every event it appends (its clock's owner)."""
    stream: str | StreamSettings = "EVENTS"
    """The stream of the log: a name (default settings) or full ``StreamSettings``."""
    ensure: bool = True
    """Create the stream if missing and check that it keeps the log immutable."""
    append_timeout: float = 30.0
    """Seconds an append may take, retries included, before ``AppendTimeout``."""
    connect_timeout: float = 3.0
    """Seconds to wait for the server when connecting."""
    max_batch: int = 500
    """Events the committer packs into one atomic batch at most."""
    guess_new: bool = True
    """Take aggregates this producer has never seen for new instead of looking their heads up
    first (one round trip less per cold batch); a wrong guess costs one refused batch, after
    which it looks up until lookups find new aggregates again (``eventstore.novelty``)."""
    clock_block: int = 1000
    """Spare clock values reserved at a time at most (blocks start at what one append needs
    and double up to this: fewer bucket writes, larger skips after a restart)."""
    presence: bool = True
    """Hold the producer name on ``_ES.PRODUCER.<stream>.<producer>`` and warn when another
    live connection already does (``eventstore.presence``); off for connections that never
    append (workers, read commands), which cannot hide a conflict."""
    user: str | None = None
    """User name for the server's authorization (with ``password``), if it requires one."""
    password: str | None = None
    """Password of ``user``."""
    creds: str | None = None
    """Credentials file of ``eventstore auth init`` (``DIR/<user>.creds``, an nkey seed)."""
    tls_ca: str | None = None
    """PEM file of the CA that signed the server's TLS certificate (TLS on when given)."""


ErrorCallback = Callable[[Exception], Awaitable[None]]


class Callbacks:
    """The connection's callbacks, routed to the store once it exists (``attach``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.early_errors: list[str] = []  # violations before the store could take them
        self._violation: Callable[[str], bool] | None = None
        self._closing: Callable[[], bool] = lambda: False
        self.on_reconnect: Callable[[], None] | None = None  # the store's rules re-read

    def attach(self, violation: Callable[[str], bool], closing: Callable[[], bool]) -> None:
        self._violation, self._closing = violation, closing

    async def error(self, exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            if self._violation is None or not self._violation(text):
                self.early_errors.append(text)
            log.warning("permission violation", error=text)
        elif not isinstance(translate(exc, url=self.url), NotConnected):
            log.debug("nats error", error=text or type(exc).__name__)

    async def disconnected(self) -> None:
        if not self._closing():
            log.info("disconnected from NATS, reconnecting", url=self.url)

    async def reconnected(self) -> None:
        log.info("reconnected to NATS", url=self.url)
        if self.on_reconnect is not None:
            self.on_reconnect()


async def open_connection(
    url: str,
    settings: ConnectSettings,
    *,
    error_cb: ErrorCallback,
    disconnected_cb: Callable[[], Awaitable[None]],
    reconnected_cb: Callable[[], Awaitable[None]],
) -> Client:
    """A connected nats-py client with our header parser installed before the first message;
    ``NotConnected`` or ``PermissionDenied`` when it cannot connect."""
    secure = client_options(settings.creds, settings.tls_ca)  # a bad file: before connecting
    nc = Client()
    install_parsers(nc)
    install_delivery(nc)
    options: dict[str, Any] = {
        "name": f"eventstore:{settings.producer}",
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "connect_timeout": settings.connect_timeout,
        "allow_reconnect": True,
        # nats-py would retry a first connection forever with -1: try twice, then switch to
        # reconnecting forever once connected.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.25,
        "user": settings.user,
        "password": settings.password,
        **secure,
    }
    try:
        await guarded_connect(nc, url, options, error_cb)
    except Exception as exc:
        if isinstance(exc, PermissionDenied | ConfigError):  # refused, said precisely
            raise
        if "authorization" in str(exc).lower():
            raise PermissionDenied(url, "connect", "authorization violation") from exc
        err = translate(exc, what=f"connecting to {url}", url=url, timeout=settings.connect_timeout)
        if isinstance(err, (RequestTimeout, ServerError)):  # a server that does not answer
            err = NotConnected(url, str(exc) or type(exc).__name__)
        raise err from exc
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def ensure_or_close(
    ensure: Callable[[], Awaitable[object]], nc: Client, url: str, callbacks: Callbacks
) -> None:
    """Ensure the stream on a new connection; on any failure close it and raise: a JetStream
    that does not answer is ``PermissionDenied`` if the server refused this client its API."""
    try:
        await ensure()
    except RequestTimeout as exc:
        await close_connection(nc)
        if callbacks.early_errors:
            raise PermissionDenied("$JS.API.>", "publish", callbacks.early_errors[0]) from exc
        raise NotConnected(url, "JetStream did not answer (is it enabled?)") from exc
    except BaseException:
        await close_connection(nc)
        raise
