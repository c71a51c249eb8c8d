"""Which rules a projection database was folded with, and the check that they are the log's.

A projection database records the rules in force at its highest checkpoint (``meta`` keys
``rules_version`` and ``rules_digest``, written in the transaction of the batch that reached
it). Opening it compares that record with what the log says for that checkpoint: another
digest, or no record at all in a non-empty database whose checkpoint the log's rules precede
(a database folded by an earlier release with a local ``[machines]`` / resolvers config), is a
``RulesMismatch``. Nothing is folded into such a file or answered from it silently: rebuild
it (``eventstore rebuild``) or start over (``--reset``).
"""

from __future__ import annotations

from eventstore import RuleBook, RulesMismatch
from projections.db import ProjectionDB
from projections.recorder import Recorder

__all__ = ["check_rules", "rules_meta", "rules_problem"]

VERSION_KEY = "rules_version"
DIGEST_KEY = "rules_digest"


def rules_meta(book: RuleBook, seq: int) -> dict[str, str]:
    """The ``meta`` rows that record the rules in force at ``seq``."""
    version = book.at(seq)
    return {
        VERSION_KEY: str(version.version if version is not None else 0),
        DIGEST_KEY: book.digest_at(seq),
    }


async def rules_problem(db: ProjectionDB, book: RuleBook) -> tuple[str, str, int] | None:
    """``(what the file recorded, what the log says, checkpoint)`` if ``db`` was folded with
    other rules than the log's at its highest checkpoint, else None (reads only)."""
    checkpoint = await Recorder(db).max_checkpoint()
    version, digest = await db.meta(VERSION_KEY), await db.meta(DIGEST_KEY)
    expected = book.describe_at(checkpoint)
    if digest is None:
        if checkpoint > 0 and book.at(checkpoint) is not None:
            return (
                "no recorded rules (folded before the rules were stored with the log, with "
                "whatever local [machines] and resolvers its worker had)",
                expected,
                checkpoint,
            )
        return None
    if digest != book.digest_at(checkpoint):
        return f"rules version {version} (digest {digest})", expected, checkpoint
    return None


async def check_rules(db: ProjectionDB, book: RuleBook) -> None:
    """``RulesMismatch`` naming the file, both rule versions and the remedy, if ``db`` was
    folded with other rules than the log's (see the module docstring)."""
    if (problem := await rules_problem(db, book)) is not None:
        raise RulesMismatch(str(db.path), *problem)
