"""``eventstore lock``: take, give back and look at the leases of the log (``eventstore.leases``).

``lock acquire NAME --owner O [--ttl S] [--wait S]`` prints ``{"name", "owner", "token",
"expires_at"}`` and exits 0; when the lock is held (and not freed within ``--wait``), one line
naming the holder and exit 1. Nothing renews a lease taken here: it expires after ``--ttl``
seconds unless released. ``lock release NAME --token T`` gives it back; refused (one line, exit
1) when T is not the current holder's token, so a holder that lost its lease cannot release the
next holder's. ``lock show [NAME]`` prints one JSON line per lease held now (a NAME nobody holds:
its line with null owner, token and expiry).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from consumers.cliutil import EXIT_OK, command, emit, non_empty, non_negative_int, open_store, run
from eventstore import DEFAULT_LEASE_TTL, DEFAULT_MAX_HOLD, LeaseInfo

__all__ = ["cmd_lock_acquire", "cmd_lock_release", "cmd_lock_show", "register"]


def seconds(text: str) -> float:
    """A number of seconds >= 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def cmd_lock_acquire(args: argparse.Namespace) -> int:
    async def go() -> LeaseInfo:
        async with open_store(args, local_rules=False) as store:
            lease = await store.leases.acquire(
                args.name, owner=args.owner, ttl=args.ttl, wait=args.wait, max_hold=args.max_hold
            )
            return lease.info

    emit(run(go()).public())
    return EXIT_OK


def cmd_lock_release(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with open_store(args, local_rules=False) as store:
            await store.leases.release(args.name, args.token)

    run(go())
    emit({"name": args.name, "token": args.token, "released": True})
    return EXIT_OK


def cmd_lock_show(args: argparse.Namespace) -> int:
    async def go() -> list[LeaseInfo]:
        async with open_store(args, local_rules=False) as store:
            return await store.leases.show(args.name)

    found = run(go())
    for info in found:
        emit(info.public())
    if args.name is not None and not found:
        emit({"name": args.name, "owner": None, "token": None, "expires_at": None})
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``eventstore lock acquire|release|show`` to the ``eventstore`` parser."""
    p = command(subparsers, "lock", help="leases and locks with fencing tokens")
    sub = p.add_subparsers(dest="lock_command", metavar="acquire|release|show",
                           parser_class=type(p))  # fmt: skip
    sub.required = True
    s = command(sub, "acquire", help="take a lock (JSON: name, owner, token, expires_at)")
    s.add_argument("name", metavar="NAME", type=non_empty, help="e.g. realm:te_po")
    s.add_argument("--owner", required=True, type=non_empty, help="who holds it")
    s.add_argument(
        "--ttl",
        type=seconds,
        default=DEFAULT_LEASE_TTL,
        metavar="S",
        help=f"expires after S seconds unless released (default {DEFAULT_LEASE_TTL:g})",
    )
    s.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the holder to release it (default 0)",
    )
    s.add_argument(
        "--max-hold",
        type=seconds,
        default=DEFAULT_MAX_HOLD,
        metavar="S",
        help=f"never held longer than S seconds (default {DEFAULT_MAX_HOLD:g})",
    )
    s.set_defaults(func=cmd_lock_acquire)  # fmt: skip
    s = command(sub, "release", help="give a lock back, if T is still its holder's token")
    s.add_argument("name", metavar="NAME", type=non_empty)
    s.add_argument("--token", required=True, type=non_negative_int, metavar="T")
    s.set_defaults(func=cmd_lock_release)
    s = command(sub, "show", help="the locks held now, one JSON line each")
    s.add_argument("name", metavar="NAME", nargs="?", type=non_empty, help="only this one")
    s.set_defaults(func=cmd_lock_show)
