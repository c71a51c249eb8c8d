"""``eventstore rules``: set and show the rules stored with the log (``eventstore.rules``).

``rules set FILE [--comment TEXT] [--expect-version N]`` stores the ``[machines]`` and
``[projections.resolvers]`` tables of a TOML file as the next rules version, in force from its
stream sequence on, and prints it as one JSON line. The file is checked first (the same
``ConfigError`` lines as every config file), every resolver spec fully (``module:object`` is
imported here); a version conflict (someone set the rules meanwhile, or ``--expect-version``
is not the stored version) is one line and exit 1. A machine whose aggregate type has no
event in the log yet, and a resolver for a projection this configuration does not run, get a
warning line on stderr (a typo?), not an error.

``rules show [--history] [--at SEQ]`` prints the version in force now (or at stream sequence
SEQ), or one line per version with ``--history``: version, seq, recorded_at, producer,
comment, digest, machines, resolvers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from consumers.cli_queries import configured_projections
from consumers.cliutil import EXIT_OK, command, emit, non_empty, non_negative_int, open_store, run
from eventstore import ConfigError, EventStore, Rules, RuleVersion
from projections import BUILTIN_PROJECTIONS, resolver_from_spec

__all__ = ["cmd_rules_set", "cmd_rules_show", "register", "rules_output"]


def rules_output(version: RuleVersion | None) -> dict[str, Any]:
    """One rules version as the JSON object the ``rules`` commands print (version 0: none)."""
    if version is None:
        version = RuleVersion(version=0, seq=0)
    out: dict[str, Any] = {
        "version": version.version,
        "seq": version.seq,
        "recorded_at": version.recorded_at,
        "producer": version.producer or None,
        "comment": version.comment,
        "digest": version.digest if version.version else None,
    }
    out.update(version.rules.to_data())
    return out


def _projection_names(args: argparse.Namespace) -> set[str]:
    """The projections this configuration runs (the built-in ones if it cannot be loaded)."""
    try:
        return {p.name for p in configured_projections(args)[0]}
    except ConfigError:
        return set(BUILTIN_PROJECTIONS)


async def _typos(store: EventStore, rules: Rules, known: set[str]) -> list[str]:
    """A warning per machine whose type has no event yet and per resolver of an unknown
    projection: the likely typos of a rules file."""
    out: list[str] = []
    for name in rules.machines:
        if not await store.reader.last_seq(f"{store.settings.prefix}.{name}.*"):
            out.append(f"[machines.{name}]: no events of type {name!r} yet: a typo?")
    for name in rules.resolvers:
        if name not in known:
            out.append(
                f"[projections.resolvers] {name}: no projection {name!r} is configured here "
                f"(running: {', '.join(sorted(known))}): a typo?"
            )
    return out


def cmd_rules_set(args: argparse.Namespace) -> int:
    rules = Rules.from_toml(args.file)
    for projection, spec in rules.resolvers.items():
        try:
            resolver_from_spec(spec)  # module:object must import and be a resolver
        except ConfigError as exc:
            raise ConfigError(f"{args.file}: [projections.resolvers] {projection}: {exc}") from exc
    known = _projection_names(args)

    async def go() -> RuleVersion:
        async with open_store(args, local_rules=False) as store:
            for warning in await _typos(store, rules, known):
                sys.stderr.write(f"eventstore: warning: {warning}\n")
            sys.stderr.flush()
            return await store.set_rules(
                rules, comment=args.comment, expected_version=args.expect_version
            )

    emit(rules_output(run(go())))
    return EXIT_OK


def cmd_rules_show(args: argparse.Namespace) -> int:
    async def go() -> list[RuleVersion | None]:
        async with open_store(args, local_rules=False) as store:
            book = store.rules
            if args.history:
                return list(book.history)
            return [book.at(args.at) if args.at is not None else book.current]

    for version in run(go()):
        emit(rules_output(version))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``eventstore rules set|show`` to the ``eventstore`` parser."""
    p = command(
        subparsers,
        "rules",
        help="set or show the rules stored with the log: state machines and resolvers",
    )
    sub = p.add_subparsers(dest="rules_command", metavar="set|show", parser_class=type(p))
    sub.required = True
    s = command(
        sub, "set", help="store the [machines] and [projections.resolvers] of a TOML file as "
        "the next rules version (one JSON line)",
    )  # fmt: skip
    s.add_argument("file", metavar="FILE", type=non_empty, help="TOML file with the rule tables")
    s.add_argument("--comment", metavar="TEXT", help="why the rules change (recorded with them)")
    s.add_argument(
        "--expect-version", type=non_negative_int, metavar="N",
        help="fail unless the stored rules are at version N (default: the version read now)",
    )  # fmt: skip
    s.set_defaults(func=cmd_rules_set)
    s = command(sub, "show", help="the rules in force (JSON): version, who, when, what")
    s.add_argument("--history", action="store_true", help="every version, one line each")
    s.add_argument(
        "--at", type=non_negative_int, metavar="SEQ", help="the version in force at seq SEQ"
    )
    s.set_defaults(func=cmd_rules_show)
