"""What a client presents to a secured server: its nkey credentials and the CA it trusts.

``creds`` names a credentials file of ``eventstore auth init`` (``DIR/<user>.creds``): comment
lines and one user nkey seed (``SU...``). The server knows only the user's public key and
signs nothing but a nonce with it, so no secret crosses the wire or sits in the server's
configuration. ``tls_ca`` names the PEM file of the CA that signed the server's certificate.

Both are read and checked *before* connecting: a missing, unreadable or malformed file is a
``ConfigError`` naming the file, never a connection that hangs. Plain nkeys do not expire (a
user is revoked by removing its key from the server configuration and reloading it), so there
is no expiry to check here.

``guarded_connect`` bounds the two refusals that nats-py reports only to the error callback
and would otherwise retry forever: a TLS handshake that fails (a wrong CA, a server
certificate for another name) is a ``ConfigError``, credentials the server does not know
(an unknown key, a wrong password) are ``PermissionDenied``, both as soon as the server says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import Client

from eventstore.cancelling import cancel_and_wait
from eventstore.cluster import server_urls
from eventstore.errors import ConfigError, EventStoreError, PermissionDenied

__all__ = ["client_options", "guarded_connect", "read_creds", "tls_context"]

USER_SEED_PREFIX = "SU"
_WHERE = "--creds / EVENTSTORE_CREDS / creds="
_CA_WHERE = "--tls-ca / EVENTSTORE_TLS_CA / tls_ca="

ErrorCallback = Callable[[Exception], Awaitable[None]]


def _malformed(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"creds file {path} is malformed ({why}): it must hold one user nkey seed line (SU...) "
        f"as `eventstore auth init` writes it; pass that user's file ({_WHERE})"
    )


def read_creds(path: str | Path) -> str:
    """The user nkey seed in the credentials file ``path``; ``ConfigError`` naming the file if
    it is missing, unreadable or holds no valid user seed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"creds file {p} not found: pass the file `eventstore auth init` wrote for this "
            f"user ({_WHERE})"
        ) from None
    except UnicodeDecodeError:
        raise _malformed(p, "not text") from None
    except OSError as exc:
        raise ConfigError(
            f"creds file {p} cannot be read: {exc.strerror or exc}; run as the user it was "
            f"given to, or fix its owner and mode (0600) ({_WHERE})"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    seeds = [line for line in lines if line and not line.startswith("#")]
    if len(seeds) != 1:
        raise _malformed(p, f"{len(seeds)} key lines")
    seed = seeds[0]
    if not seed.startswith(USER_SEED_PREFIX):
        raise _malformed(p, "not a user seed")
    if not _checksum_ok(seed):
        raise _malformed(p, "the seed does not decode or its checksum is wrong")
    return seed


def _checksum_ok(seed: str) -> bool:
    """Whether ``seed`` decodes and its CRC-16 matches (nkeys' ``from_seed`` checks neither)."""
    try:
        raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception:  # nkeys raises its own errors, binascii's and ValueError alike
        return False
    return len(raw) == 36 and bytes(nkeys.crc16_checksum(raw[:-2])) == raw[-2:]


def tls_context(ca: str | Path) -> ssl.SSLContext:
    """A client TLS context trusting only the CA certificates in the PEM file ``ca``."""
    try:
        return ssl.create_default_context(cafile=str(ca))
    except FileNotFoundError:
        raise ConfigError(f"TLS CA file {ca} not found ({_CA_WHERE})") from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS CA file {ca} holds no PEM certificate ({exc.reason or exc}) ({_CA_WHERE})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"TLS CA file {ca} cannot be read: {exc.strerror or exc}") from None


def client_options(creds: str | Path | None, tls_ca: str | Path | None) -> dict[str, Any]:
    """The nats-py connect options for these credentials and CA (checked now)."""
    options: dict[str, Any] = {}
    if creds is not None:
        options["nkeys_seed_str"] = read_creds(creds)
    if tls_ca is not None:
        options["tls"] = tls_context(tls_ca)
    return options


def refusal(exc: BaseException, url: str) -> EventStoreError | None:
    """Our error for a connection the server (or its certificate) refused; None for others."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return ConfigError(
            f"TLS handshake with {url} failed: {reason}; pass the CA that signed the server's "
            f"certificate ({_CA_WHERE}) and connect by a name or IP the certificate holds"
        )
    text = str(exc).lower()
    if "authorization violation" in text or "authentication" in text:
        return PermissionDenied(
            url, "connect", f"the server refused these credentials: {exc}; check {_WHERE}"
        )
    return None


async def guarded_connect(
    nc: Client, url: str, options: dict[str, Any], error_cb: ErrorCallback
) -> None:
    """``nc.connect(url, **options)`` that fails at the first TLS or authorization refusal
    the server reports, instead of retrying it; ``error_cb`` still sees every error. A
    comma-separated ``url`` names a cluster's nodes (``eventstore.cluster.server_urls``)."""
    refused: list[EventStoreError] = []
    seen = asyncio.Event()

    async def watch(exc: Exception) -> None:
        if not seen.is_set() and (err := refusal(exc, url)) is not None:
            refused.append(err)
            seen.set()
        await error_cb(exc)

    servers = server_urls(url)  # before connecting: a stray comma is a ConfigError
    connecting = asyncio.ensure_future(nc.connect(servers, **options, error_cb=watch))
    waiting = asyncio.ensure_future(seen.wait())
    try:
        await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not connecting.done():
            await cancel_and_wait(connecting)
    if refused:
        with contextlib.suppress(Exception):
            await nc.close()
        cause = connecting.exception() if not connecting.cancelled() else None
        raise refused[0] from cause
    seen.set()  # connected (or failed otherwise): later errors are the caller's alone
    connecting.result()
