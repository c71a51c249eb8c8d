"""The secure profile: users that can do only their job, for an operator to start from.

``init_auth(DIR, settings, producers)`` writes

* ``DIR/auth.conf``, a nats-server configuration include: one account (``EVENTSTORE``, with
  JetStream) and its users, each known by its nkey *public* key with the permission block of
  its role (``eventstore.permissions``): ``admin`` (unrestricted: creates the stream, sets the
  rules, the only one who may delete or update the stream), ``worker`` (folds, serves, runs
  reactors), ``reader`` (queries, ``watch``, ``tail``, ``verify``) and one producer per
  ``(NAME, PATTERN)`` that may append only on ``<prefix>.PATTERN``;
* ``DIR/<user>.creds`` per user, mode 0600: its nkey seed, the only secret, never in the
  server configuration; the directory is 0700 and holds a ``.gitignore`` of ``*`` so a
  profile made inside a work tree is never committed.

``server_config`` composes what ``eventstore server --auth DIR [--tls-cert --tls-key]`` runs:
the base ``nats.conf``, the include, and a ``tls`` block. Nobody deletes events either way:
the stream denies deleting and purging messages (``deny_delete``/``deny_purge``) to everyone,
the admin included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec
import nkeys

from eventstore.errors import ConfigError
from eventstore.permissions import event_pattern, permissions, producer_permissions
from eventstore.streams import StreamSettings

__all__ = [
    "ACCOUNT",
    "AUTH_INCLUDE",
    "AuthProfile",
    "init_auth",
    "producer_grant",
    "server_config",
]

ACCOUNT = "EVENTSTORE"
AUTH_INCLUDE = "auth.conf"
SERVER_CONF = "eventstore-server.conf"
ADMIN, WORKER, READER = "admin", "worker", "reader"
_FIXED = (ADMIN, WORKER, READER)
_USER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class AuthProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What ``init_auth`` wrote: the include and each user's credentials file and role."""

    include: str
    creds: dict[str, str]
    """User name -> its credentials file."""
    roles: dict[str, str]
    """User name -> ``admin``, ``worker``, ``reader`` or ``producer <prefix>.<pattern>``."""


def producer_grant(text: str) -> tuple[str, str]:
    """``NAME[:PATTERN]`` (``--producer``) as ``(NAME, PATTERN)``, PATTERN default ``>``;
    ``ConfigError`` for a bad name or pattern."""
    name, _, pattern = text.partition(":")
    name = name.strip()
    if not _USER_NAME.fullmatch(name) or name in _FIXED:
        raise ConfigError(
            f"producer user name {name!r} must match [a-z0-9][a-z0-9_-]* (at most 64) and not "
            f"be one of {', '.join(_FIXED)}: e.g. --producer agents:task.*"
        )
    return name, event_pattern(pattern or ">")


def _new_seed() -> tuple[str, str]:
    """A fresh user nkey: (seed, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    pair = nkeys.from_seed(bytearray(seed))
    public = pair.public_key.decode()
    pair.wipe()
    return seed.decode(), public


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def init_auth(
    out: str | Path, settings: StreamSettings, producers: Sequence[tuple[str, str]] = ()
) -> AuthProfile:
    """Write the secure profile for ``settings``' stream into ``out`` (see the module doc).

    Refuses (``ConfigError``) a directory that already holds a profile: new keys would lock
    out every client still using the old ones."""
    directory = Path(out)
    names = [name for name, _ in producers]
    if len(set(names)) != len(names):
        raise ConfigError(f"a producer user is named twice in {', '.join(names)}")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        taken = [p.name for p in directory.iterdir() if p.suffix in (".creds", ".conf")]
    except OSError as exc:
        raise ConfigError(f"cannot write the profile into {directory}: {exc.strerror}") from exc
    if taken:
        raise ConfigError(
            f"{directory} already holds a profile ({', '.join(sorted(taken))}); new keys would "
            "lock out every client using the old ones: remove it or choose another --out"
        )
    with contextlib.suppress(OSError):
        directory.chmod(0o700)
    users: list[tuple[str, str, dict[str, object] | None]] = [
        (ADMIN, "admin", None),
        (WORKER, "worker", permissions("worker", settings)),
        (READER, "reader", permissions("reader", settings)),
        *(
            (name, f"producer {settings.prefix}.{pattern}",
             producer_permissions(settings, pattern))
            for name, pattern in producers
        ),
    ]  # fmt: skip
    entries, creds, roles = [], {}, {}
    for name, role, block in users:
        seed, public = _new_seed()
        path = directory / f"{name}.creds"
        _write_secret(
            path,
            f"# eventstore credentials of user {name!r} ({role}) on stream {settings.name}\n"
            "# a secret: keep it 0600, give it to that user only (--creds / EVENTSTORE_CREDS)\n"
            f"{seed}\n",
        )
        creds[name], roles[name] = str(path), role
        entry: dict[str, object] = {"nkey": public}
        if block is not None:
            entry["permissions"] = block
        entries.append(f"      # {name}: {role}\n      {json.dumps(entry)}")
    include = directory / AUTH_INCLUDE
    include.write_text(
        "# written by `eventstore auth init`: users of the account, public keys only.\n"
        f"# stream {settings.name}, subjects {settings.prefix}.>; run it with\n"
        f"# `eventstore server --auth {directory}` or include it in your nats-server config.\n"
        f"accounts {{\n  {ACCOUNT}: {{\n    jetstream: enabled\n    users: [\n"
        + "\n".join(entries)
        + "\n    ]\n  }\n}\n",
        encoding="utf-8",
    )
    (directory / ".gitignore").write_text("# secrets: never commit them\n*\n")
    return AuthProfile(include=str(include), creds=creds, roles=roles)


def _include_line(path: Path, beside: Path) -> str:
    # nats-server resolves an include relative to the including file, even an absolute one.
    return f'include "{os.path.relpath(path.resolve(), beside.resolve())}"\n'


def server_config(
    base: Path,
    into: Path,
    *,
    include: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Path:
    """Write ``into/eventstore-server.conf``: ``base`` plus the auth ``include`` and a TLS
    block; its path. ``ConfigError`` for a file that is not there."""
    for what, path in (("auth include", include), ("TLS certificate", tls_cert),
                       ("TLS key", tls_key)):  # fmt: skip
        if path is not None and not path.is_file():
            raise ConfigError(f"{what} {path} not found")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")
    text = _include_line(base, into)
    if include is not None:
        text += _include_line(include, into)
    if tls_cert is not None and tls_key is not None:
        text += (
            f"tls {{\n  cert_file: {json.dumps(str(tls_cert.resolve()))}\n"
            f"  key_file: {json.dumps(str(tls_key.resolve()))}\n  timeout: 5\n}}\n"
        )
    target = into / SERVER_CONF
    target.write_text(text, encoding="utf-8")
    return target
