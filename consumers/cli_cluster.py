"""``eventstore cluster local``: a three-node JetStream cluster on loopback, in the foreground.

For trying clustering on one machine and for tests: ``--nodes 3 --dir DIR [--port P]`` starts
the nodes (``eventstore.LocalCluster``: stores under ``DIR/n1`` ..., clients on ``P``, ``P+1``
..., routes on ``P+2000`` ...), prints one JSON line ``{"urls": [...], "nodes": [{"name",
"url", "pid"}, ...]}`` once a JetStream meta leader is elected, and runs until SIGINT or
SIGTERM, which stops every node (exit 0). A node that dies meanwhile (a ``kill -9`` to try a
failover) is logged and the others go on; only when none is left does the command fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from consumers.cliutil import (
    EXIT_OK,
    command,
    directory,
    emit,
    port_number,
    run,
    shutdown_signals,
)
from eventstore import EventStoreError, LocalCluster, get_logger

__all__ = ["cmd_cluster_local", "register", "run_cluster"]

log = get_logger("consumers.cluster")


async def run_cluster(cluster: LocalCluster, stop: asyncio.Event, poll: float = 0.2) -> None:
    """Start ``cluster``, print its description, wait for ``stop``; stop every node after.

    ``EventStoreError`` when every node has died before ``stop`` was set."""
    await asyncio.to_thread(cluster.start)  # the spawner thread forks the nodes
    try:
        emit(cluster.describe())
        gone: set[str] = set()
        while not stop.is_set():
            for name, server in zip(cluster.names, cluster.servers, strict=True):
                proc = server.proc
                if name not in gone and proc is not None and proc.poll() is not None:
                    gone.add(name)
                    log.warning("cluster node exited", node=name, url=server.url,
                                code=proc.returncode, log=str(server.log_path))  # fmt: skip
            if len(gone) == len(cluster.servers):
                with contextlib.suppress(TimeoutError):  # Ctrl-C reaches the nodes too
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set():
                    return
                raise EventStoreError(
                    f"every node of the cluster has exited; see the node logs under "
                    f"{cluster.directory}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
    finally:
        await asyncio.to_thread(cluster.stop)


def cmd_cluster_local(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir, nodes=args.nodes, port=args.port)

    async def go() -> None:
        with shutdown_signals() as stop:
            await run_cluster(cluster, stop)

    run(go())
    return EXIT_OK


def node_count(text: str) -> int:
    """argparse type: how many nodes, 1 to 9 (3 is the cluster the issue asks for)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be 1 to 9 (use 3), got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``eventstore cluster local`` to the ``eventstore`` parser."""
    p = command(subparsers, "cluster", help="a JetStream cluster to try clustering with")
    sub = p.add_subparsers(dest="cluster_command", metavar="local", parser_class=type(p))
    sub.required = True
    s = command(
        sub,
        "local",
        help="run a JetStream cluster on loopback in the foreground; the first line is JSON "
        "with its URLs",
    )
    s.add_argument("--nodes", type=node_count, default=3, help="how many nodes (default 3)")
    s.add_argument(
        "--dir", type=directory, required=True, help="the nodes' stores: DIR/n1, DIR/n2, ..."
    )
    s.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="first client port (the others follow; routes at PORT+2000 ...); default: free ports",
    )
    s.set_defaults(func=cmd_cluster_local)
