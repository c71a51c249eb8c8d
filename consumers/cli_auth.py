"""``eventstore auth init``: the secure profile (``eventstore.auth``), and the options of
``eventstore server`` that run it (``--auth DIR``, ``--tls-cert``, ``--tls-key``).

``auth init --out DIR [--producer NAME[:PATTERN]] ...`` writes ``DIR/auth.conf`` (the server
include: public keys and permissions) and one ``DIR/<user>.creds`` per user, and prints one
JSON line: the include and each user's file and role. Every other command then takes
``--creds DIR/<user>.creds`` (``consumers.cli_connect``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from consumers.cli_connect import security
from consumers.cliutil import (
    EXIT_OK,
    CliError,
    add_global_options,
    command,
    directory,
    emit,
    stream_settings,
)
from eventstore import ConfigError, init_auth, producer_grant

__all__ = ["add_server_options", "register", "server_security"]


def grant(text: str) -> tuple[str, str]:
    """argparse type: ``NAME[:PATTERN]`` (a usage error if bad)."""
    try:
        return producer_grant(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_auth_init(args: argparse.Namespace) -> int:
    profile = init_auth(args.out, stream_settings(args), args.grants or ())
    emit(
        {
            "include": profile.include,
            "users": {u: {"creds": c, "role": profile.roles[u]} for u, c in profile.creds.items()},
            "run": f"eventstore server --auth {args.out}",
        }
    )
    return EXIT_OK


def add_server_options(p: argparse.ArgumentParser) -> None:
    """``server --auth DIR --tls-cert FILE --tls-key FILE``."""
    p.add_argument(
        "--auth", type=directory, metavar="DIR",
        help="run with the users of `eventstore auth init --out DIR` (DIR/auth.conf); the "
        "server's own connection uses DIR/admin.creds",
    )  # fmt: skip
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")


def server_security(args: argparse.Namespace) -> dict[str, Any]:
    """The ``embedded_server`` keywords of ``server --auth/--tls-cert/--tls-key``."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if (cert is None) != (key is None):
        raise CliError("--tls-cert and --tls-key go together: give both")
    return {
        "auth": getattr(args, "auth", None),
        "tls": (str(cert), str(key)) if cert is not None and key is not None else None,
        "tls_ca": security(args)["tls_ca"],
    }


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``eventstore auth init`` to the ``eventstore`` parser."""
    p = command(subparsers, "auth", help="the secure profile: users, permissions, credentials")
    sub = p.add_subparsers(dest="auth_command", metavar="init", parser_class=type(p))
    sub.required = True
    about = (
        "write a server include (an account, users admin, worker, reader and one per "
        "--producer, public nkeys only) and one DIR/<user>.creds per user"
    )
    # Its --producer is a user grant, not the writer's name: it replaces the global option.
    s = sub.add_parser("init", help=about, description=about, conflict_handler="resolve")
    add_global_options(s, suppress=True)
    s.add_argument("--out", type=directory, required=True, metavar="DIR",
                   help="where to write auth.conf and the .creds files (mode 0700)")  # fmt: skip
    s.add_argument(
        "--producer", dest="grants", action="append", type=grant, metavar="NAME[:PATTERN]",
        help="a producer user allowed to append only on PREFIX.PATTERN (TYPE, TYPE.ID, NATS "
        "wildcards; default >); repeatable",
    )  # fmt: skip
    s.set_defaults(func=cmd_auth_init)
