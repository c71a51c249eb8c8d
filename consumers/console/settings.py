"""What a console serves and to whom: the stream it reads, where it listens, its token.

A console shows the whole log to whoever reaches its port, so it listens on loopback unless
told otherwise, and a console on any other address must be given a token: ``check_exposure``
refuses it (``ConfigError``) before anything listens.
"""

from __future__ import annotations

import ipaddress

import msgspec

from eventstore import DEFAULT_URL, ConfigError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "ConsoleSettings", "check_exposure"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800
TOKEN_ENV = "EVENTSTORE_CONSOLE_TOKEN"


class ConsoleSettings(msgspec.Struct, frozen=True, kw_only=True):
    """One console: the NATS URL and stream it reads, the projection it asks, its address."""

    url: str = DEFAULT_URL
    stream: str = "EVENTS"
    prefix: str = "events"
    projection: str = "entities"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    creds: str | None = None  # a secured server (issue 14): see ConnectSettings
    tls_ca: str | None = None
    sample_every: float = 2.0  # seconds between two samples of the overview's plots
    samples: int = 300  # how many samples the plots keep (10 minutes at 2 s)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: ConsoleSettings) -> None:
    """Refuse a console reachable from other machines without a token."""
    if not is_loopback(settings.host) and not settings.token:
        raise ConfigError(
            f"console: --host {settings.host} is reachable from other machines: give --token "
            f"(or {TOKEN_ENV}) so that only those who know it can read the log"
        )
