"""The connection options every command takes for a secured server: ``--creds`` and
``--tls-ca``, kept apart from ``consumers.cliutil`` (which adds them to the global options) so
that neither module imports the other.

* ``--creds FILE`` / ``EVENTSTORE_CREDS``: the user's credentials file of ``eventstore auth
  init`` (``DIR/<user>.creds``);
* ``--tls-ca FILE`` / ``EVENTSTORE_TLS_CA``: the PEM file of the CA that signed the server's
  certificate (TLS on).

``security(args)`` is what every connection of a command passes on (``EventStore.connect``,
``ProjectionClient.connect``, the worker). The files are checked when a command connects, so a
missing or malformed one is one line on stderr (``ConfigError``) before anything hangs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypedDict

__all__ = ["Security", "add_connection_options", "security"]


class Security(TypedDict):
    """The connect options of a secured server (``ConnectSettings.creds``/``tls_ca``)."""

    creds: str | None
    tls_ca: str | None


def _path(text: str) -> str:
    if not text.strip() or "\0" in text:
        raise argparse.ArgumentTypeError("must be a file path")
    return text


def add_connection_options(
    group: argparse._ArgumentGroup, default: Callable[[str | None], str | None]
) -> None:
    """Add ``--creds`` and ``--tls-ca`` to the global options ``group`` (``default`` turns an
    environment value into the option's default, or suppresses it on a sub-command)."""
    group.add_argument(
        "--creds",
        default=default(os.environ.get("EVENTSTORE_CREDS") or None),
        type=_path,
        metavar="FILE",
        help="credentials of a secured server: a DIR/<user>.creds of `eventstore auth init` "
        "(env EVENTSTORE_CREDS)",
    )
    group.add_argument(
        "--tls-ca",
        default=default(os.environ.get("EVENTSTORE_TLS_CA") or None),
        type=_path,
        metavar="FILE",
        help="PEM file of the CA that signed the server's TLS certificate (env EVENTSTORE_TLS_CA)",
    )


def security(args: argparse.Namespace) -> Security:
    """The ``creds``/``tls_ca`` connect options the command line gave (None: not given)."""
    return {"creds": getattr(args, "creds", None), "tls_ca": getattr(args, "tls_ca", None)}
