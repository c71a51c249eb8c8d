"""Failing fast on a permission violation instead of waiting out a timeout.

nats-py reports a permission violation only to the connection's error callback; the request
that caused it then waits for its whole timeout. The store's error callback hands the message
to ``FailFast.violation``, which cancels the block running on a matching subject, and the
block raises ``PermissionDenied`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from eventstore.errors import PermissionDenied

__all__ = ["FailFast", "refused_publish", "subject_matches"]

_PERM_RE = re.compile(r"for (publish|subscription) to \"?([^\"'\s]+)", re.I)


def refused_publish(message: str) -> str | None:
    """The subject a permission-violation error names for a publish (None for any other)."""
    m = _PERM_RE.search(message)
    return m.group(2) if m and m.group(1).lower() == "publish" else None


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subject is one a permission error names (nats-py lowercases those)."""
    pt, st = pattern.lower().split("."), subject.lower().split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


class FailFast:
    """The one block in flight that a permission violation may cancel (one batch at a time)."""

    def __init__(self) -> None:
        # Which subjects the running block uses, and its task.
        self._inflight: tuple[Callable[[str], bool], asyncio.Task[Any]] | None = None
        self._denied_subject: str | None = None  # the violation that cancelled it
        self._violations: set[str] = set()  # denied subjects reported during this batch

    def clear(self) -> None:
        """Forget the violations reported so far (a new batch starts)."""
        self._violations.clear()

    def violation(self, message: str) -> None:
        """Called from the connection's error callback: fail the matching block now."""
        pattern = refused_publish(message)
        if pattern is None:
            return
        self._violations.add(pattern)
        if self._inflight is None:
            return
        refused, task = self._inflight
        if refused(pattern) and not task.done():
            self._denied_subject = pattern
            task.cancel()

    @contextlib.asynccontextmanager
    async def block(self, refused: Callable[[str], bool], detail: str = "") -> AsyncIterator[None]:
        """Run the block so that a permission violation on a subject ``refused`` accepts
        raises ``PermissionDenied`` at once."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("FailFast.block runs inside an asyncio task")
        for pattern in self._violations:  # refused while the middle of a batch was on its way
            if refused(pattern):
                raise PermissionDenied(pattern, "publish", detail)
        self._inflight = (refused, task)
        self._denied_subject = None
        try:
            yield
        except asyncio.CancelledError:
            if self._denied_subject is not None:
                task.uncancel()
                raise PermissionDenied(self._denied_subject, "publish", detail) from None
            raise
        finally:
            self._inflight = None
