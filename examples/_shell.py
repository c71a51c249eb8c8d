"""The shell every example shares, so that each example's ``__main__`` holds only its story.

What is the same in all of them lives here once: the claims they check (``Checks``: one
``[ok]``/``[FAILED]`` line each, the exit code is their AND), the command line (``--url`` from
``EVENTSTORE_URL``; with a stream of its own also ``--stream``, ``--prefix``, ``--dir``), the
refusal of a stream that already holds events, storing the example's rules with the log, the
worker process it starts, and ``run_example``: the ``main`` that runs the story, prints the
final JSON line and maps a failure to one stderr line and exit 1 (never a traceback).

Like the examples themselves, this module uses only the packages' public API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from consumers import ProjectionClient, WorkerProcess
from eventstore import DEFAULT_URL, EventStore, EventStoreError, Rules, StreamSettings
from projections import Projection, ProjectionDB, verify

__all__ = [
    "ROOT",
    "Checks",
    "Context",
    "fresh_stream",
    "parser",
    "run_example",
    "store_rules",
    "verify_worker",
    "worker",
]

ROOT = Path(__file__).resolve().parents[1]  # the directory that holds ``examples``


class Checks:
    """Every claim an example makes, printed as it is checked and kept for the JSON line; the
    exit code is their AND (a claim that failed once stays failed, whatever it says later)."""

    def __init__(self) -> None:
        self._claims: list[tuple[str, bool]] = []

    def check(self, claim: str, ok: bool, detail: str = "") -> bool:
        ok = bool(ok)
        self._claims.append((claim, ok))
        why = f": {detail}" if detail and not ok else ""
        print(f"  [{'ok' if ok else 'FAILED'}] {claim}{why}")
        return ok

    @property
    def results(self) -> dict[str, bool]:
        """Claim -> whether it held (a claim checked twice: its last outcome)."""
        return dict(self._claims)

    @property
    def passed(self) -> int:
        return sum(ok for _, ok in self._claims)

    @property
    def failed(self) -> list[str]:
        return [claim for claim, ok in self._claims if not ok]

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self._claims)


@dataclass(frozen=True)
class Context:
    """What a run of an example gets: the server, its stream, a directory for the worker's
    files (``--dir``, else a temporary one) and the checks."""

    url: str
    settings: StreamSettings
    workdir: Path
    checks: Checks


Report = Literal["claims", "counts"]
Run = Callable[[Context], Awaitable[dict[str, Any]]]


def parser(
    name: str, doc: str | None, stream: StreamSettings, *, own_stream: bool
) -> argparse.ArgumentParser:
    """``python -m examples.NAME [--url URL]``, and with ``own_stream`` ``[--stream S]
    [--prefix P] [--dir DIR]`` (the example refuses a stream that holds events)."""
    p = argparse.ArgumentParser(
        prog=f"python -m examples.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        default=os.environ.get("EVENTSTORE_URL", DEFAULT_URL),
        help=f"NATS server URL (env EVENTSTORE_URL, default {DEFAULT_URL})",
    )
    if own_stream:
        p.add_argument(
            "--stream", default=stream.name, help=f"a stream of its own (default {stream.name})"
        )
        p.add_argument("--prefix", default=None, help="subject prefix (default: the stream, lower)")
        p.add_argument("--dir", default=None, help="keep the worker's files here (default: temp)")
    return p


async def fresh_stream(store: EventStore, rules: Rules, comment: str) -> int:
    """Refuse a stream with history (an example that needs a stream of its own would mix its
    figures with an earlier run's), then store the example's rules with the log; their
    version."""
    if await store.head() > 0:
        raise EventStoreError(
            f"stream {store.settings.name} already holds events (an earlier run?): the example "
            "needs a stream of its own, give another with --stream NAME"
        )
    return (await store.set_rules(rules, comment=comment)).version


async def store_rules(store: EventStore, rules: Rules, comment: str) -> int | None:
    """Store the example's rules with the log unless they are already the current ones (a
    second run on the same stream changes nothing); the version stored, else None."""
    current = store.rules.current
    if current is not None and current.rules == rules:
        return None
    return (await store.set_rules(rules, comment=comment)).version


@contextlib.asynccontextmanager
async def worker(
    ctx: Context, *, check_stop: bool = False, **options: Any
) -> AsyncIterator[WorkerProcess]:
    """A real ``eventstore worker`` process on the example's stream, its files in the run's
    directory, started (folded to the head, serving) and stopped with SIGTERM after; with
    ``check_stop`` the clean stop (exit 0) is one of the example's claims."""
    process = WorkerProcess(
        ctx.url, stream=ctx.settings, directory=ctx.workdir, pythonpath=[ROOT], **options
    )
    await process.start()
    try:
        yield process
    finally:
        code = await process.stop()
        if check_stop:
            ctx.checks.check("the worker stopped cleanly on SIGTERM (exit 0)", code == 0, str(code))


async def verify_worker(
    ctx: Context,
    store: EventStore,
    client: ProjectionClient,
    process: WorkerProcess,
    projection: Projection[Any],
) -> bool:
    """Once the worker has folded the head: an independent fold of the log (``verify``) equals
    its database, one of the example's claims."""
    await client.wait_for(await store.head(), timeout=30)
    async with await ProjectionDB.open(process.db, readonly=True) as db:
        report = await verify(store, db, [projection])
    return ctx.checks.check(
        "verify: an independent fold of the log equals the worker's database",
        report.ok,
        str(report.mismatches[:3]),
    )


def run_example(
    name: str,
    doc: str | None,
    run: Run,
    argv: list[str] | None = None,
    *,
    stream: StreamSettings,
    own_stream: bool = False,
    report: Report = "counts",
) -> int:
    """The example's ``main``: parse, run the story, print its figures as the last line (with
    the checks: ``claims`` gives each claim and whether it held, ``counts`` how many passed
    and which failed), exit 0 only if every check held; a failure is one stderr line, exit 1."""
    args = parser(name, doc, stream, own_stream=own_stream).parse_args(argv)
    if own_stream:
        stream = StreamSettings(name=args.stream, prefix=args.prefix or args.stream.lower())
    checks = Checks()

    async def story(workdir: Path) -> dict[str, Any]:
        return await run(Context(args.url, stream, workdir, checks))

    try:
        if getattr(args, "dir", None) is not None:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
            figures = asyncio.run(story(Path(args.dir)))
        else:
            with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
                figures = asyncio.run(story(Path(tmp)))
    except (EventStoreError, OSError, subprocess.SubprocessError) as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"examples.{name}: {type(exc).__name__}: {message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    if report == "claims":
        figures["checks"] = checks.results
    else:
        figures["checks_passed"] = checks.passed
        figures["failed"] = checks.failed
    figures["ok"] = checks.ok
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0 if checks.ok else 1
