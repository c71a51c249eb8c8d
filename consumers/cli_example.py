"""``eventstore example NAME [--keep]``: run one worked example on a private embedded server.

It starts nats-server on a free loopback port with a store in a fresh temporary directory,
runs ``python -m examples.NAME --url <that server>`` as a child process (its output passes
through: narration, then one JSON line of the figures it checked; ``--url`` is the one option
every example takes), stops the server and exits with the example's code. ``--keep`` keeps
the directory and prints where it is: ``nats/`` is the server's store, the whole log the
example wrote (``eventstore server --store-dir DIR/nats`` serves it again), and ``tmp/`` the
child's ``TMPDIR``.

The examples are applications on the public API, not part of the library: this command finds
them by name in the installed ``examples`` package (``importlib.util.find_spec``) and never
imports them, so ``consumers`` depends on them no more than on any other application.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from consumers.cliutil import command, run, stream_settings
from consumers.serve import embedded_server
from eventstore import EventStoreError, free_port

__all__ = ["available_examples", "cmd_example", "register"]


def available_examples() -> list[str]:
    """The names of the runnable examples (packages of ``examples`` with a ``__main__``)."""
    try:
        spec = importlib.util.find_spec("examples")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    found = {
        p.parent.name
        for where in spec.submodule_search_locations
        for p in Path(where).glob("*/__main__.py")
    }
    return sorted(found)


def example_name(text: str) -> str:
    """argparse type: the name of an available example."""
    names = available_examples()
    if text not in names:
        listed = ", ".join(names) if names else "none (the examples package is not installed)"
        raise argparse.ArgumentTypeError(f"unknown example {text!r}; the examples are {listed}")
    return text


async def _run_example(args: argparse.Namespace, workdir: Path) -> int:
    async with embedded_server(workdir / "nats", free_port(), stream_settings(args)) as server:
        print(f"eventstore example {args.name}: nats-server on {server.url}", flush=True)
        tmp = workdir / "tmp"  # what the example writes in temporary directories lands here
        tmp.mkdir()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"examples.{args.name}", "--url", server.url,
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
        try:
            return await child.wait()
        finally:
            if child.returncode is None:
                child.terminate()
                await child.wait()


def cmd_example(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix=f"eventstore-example-{args.name}-"))
    try:
        code = run(_run_example(args, workdir))
    finally:
        if args.keep:
            sys.stderr.write(
                f"eventstore example: kept {workdir} (the server's store, the whole log: "
                f"eventstore server --store-dir {workdir / 'nats'})\n"
            )
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if code < 0:  # the example died of a signal
        raise EventStoreError(f"example {args.name} was killed by signal {-code}")
    return code


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``eventstore example NAME [--keep]`` to the ``eventstore`` parser."""
    p = command(
        subparsers,
        "example",
        help="run a worked example (awa_network, paddler, ...) on a private embedded server",
    )
    p.add_argument("name", metavar="NAME", type=example_name, help="e.g. awa_network, paddler")
    p.add_argument(
        "--keep", action="store_true", help="keep the server's store (the example's whole log)"
    )
    p.set_defaults(func=cmd_example)
