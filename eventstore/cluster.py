"""A JetStream cluster on loopback: three (or more) embedded nats-servers with routes between them.

``eventstore cluster local`` and the failover tests use it to try what production runs on three
hosts: Raft-replicated streams (R3) that survive the loss of any one node. Each node is an
``EmbeddedServer`` (its own store directory, lock and death signal) whose configuration is the
project's ``nats.conf`` followed by a ``server_name`` and a ``cluster`` block naming every
node's route port. nats-server resolves ``include`` relative to the including file, so the
node file carries a copy of the base text instead of including it.

A node reports "Server is ready" before the cluster has a JetStream meta leader; ``start``
waits for one (a log line of any node) so that the caller can create a replicated stream at
once. ``kill(i)`` and ``restart(i)`` are for failover tests: a restarted node keeps its store
and ports and catches up from the others.

``server_urls`` splits a comma-separated URL (``nats://a:4222,nats://b:4222``), the form every
command's ``--url`` and ``EventStore.connect`` accept: nats-py takes a list of servers and
fails over between them (it also learns the others from the cluster itself).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

import msgspec

from eventstore.errors import ConfigError, ServerError
from eventstore.server import EmbeddedServer, check_port, default_config_path, free_port

__all__ = ["ClusterNode", "LocalCluster", "cluster_config", "server_urls"]

CLUSTER_NAME = "eventstore"
ROUTE_OFFSET = 2000  # --port P: clients on P, P+1, ...; routes on P+2000, ... (4222 -> 6222)
_META_LEADER = (b"Self is new JetStream cluster metadata leader", b"new metadata leader")


def server_urls(url: str) -> list[str]:
    """The server URLs of a comma-separated ``url`` (one URL: a list of one); ConfigError on
    an empty entry, so a stray comma is never taken for a server."""
    parts = [part.strip() for part in url.split(",")]
    if not all(parts):
        raise ConfigError(
            f"server URL list {url!r} has an empty entry: separate URLs by single commas, "
            "e.g. nats://127.0.0.1:4222,nats://127.0.0.1:4223"
        )
    return parts


def cluster_config(
    base: str, name: str, route_port: int, routes: list[str], *, host: str = "127.0.0.1",
    cluster: str = CLUSTER_NAME,
) -> str:  # fmt: skip
    """One node's configuration: ``base`` (the text of nats.conf) plus its cluster block."""
    lines = ",\n    ".join(f"nats-route://{r}" for r in routes)
    return (
        f"{base.rstrip()}\n\n"
        "# -- cluster (written by eventstore) --\n"
        f"server_name: {name}\n"
        "cluster {\n"
        f"  name: {cluster}\n"
        f"  listen: {host}:{route_port}\n"
        f"  routes: [\n    {lines}\n  ]\n"
        "}\n"
    )


class ClusterNode(msgspec.Struct, frozen=True):
    """What ``eventstore cluster local`` prints of one node."""

    name: str
    url: str
    pid: int


class LocalCluster:
    """``nodes`` nats-servers with JetStream, clustered on ``host``, stores under ``directory``.

    ``port`` is the first client port (the others follow it, routes at ``port + 2000`` on);
    None picks free ports. ``start`` returns once every node runs and a meta leader exists;
    ``stop`` stops all (SIGTERM), ``kill(i)``/``restart(i)`` one node.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        nodes: int = 3,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: str | Path | None = None,
    ) -> None:
        if isinstance(nodes, bool) or not 1 <= nodes <= 9:
            raise ConfigError(f"a local cluster has 1 to 9 nodes, got {nodes!r} (use 3)")
        if port is not None and not 1 <= port <= 65535 - ROUTE_OFFSET - nodes:
            raise ConfigError(f"cluster port {port} leaves no room for {nodes} nodes' ports")
        self.directory = Path(directory)
        self.host = host
        base = Path(config) if config else default_config_path()
        try:
            base_text = base.read_text()
        except OSError as exc:
            raise ConfigError(f"NATS configuration {base} cannot be read: {exc.strerror}") from exc
        if port is None:
            picked: set[int] = set()
            while len(picked) < 2 * nodes:  # free_port may hand out a port twice
                picked.add(free_port())
            clients, routes = sorted(picked)[:nodes], sorted(picked)[nodes:]
        else:
            clients = [port + i for i in range(nodes)]
            routes = [port + ROUTE_OFFSET + i for i in range(nodes)]
        self.route_ports = routes
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self._base_text = base_text
        self.servers = [
            EmbeddedServer(
                self.directory / name, port=client, config=self._config_path(name), host=host
            )
            for name, client in zip(self.names, clients, strict=True)
        ]

    def _config_path(self, name: str) -> Path:
        return self.directory / name / "node.conf"

    def _write_configs(self) -> None:
        peers = [f"{self.host}:{p}" for p in self.route_ports]
        for name, route in zip(self.names, self.route_ports, strict=True):
            path = self._config_path(name)
            text = cluster_config(self._base_text, name, route, peers, host=self.host)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            except OSError as exc:
                raise ServerError(
                    f"cannot write the node configuration {path}: {exc.strerror}; choose "
                    "another --dir"
                ) from exc

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``--url`` and ``EventStore.connect`` take."""
        return ",".join(self.urls)

    def describe(self) -> dict[str, object]:
        """The first line ``eventstore cluster local`` prints: URLs, names, pids."""
        nodes = [
            ClusterNode(name, s.url, s.proc.pid if s.proc is not None else 0)
            for name, s in zip(self.names, self.servers, strict=True)
        ]
        return {"urls": self.urls, "nodes": nodes}

    def start(self, timeout: float = 30.0) -> str:
        """Start every node and wait until each knows the JetStream meta leader; the
        comma-separated URL."""
        for route in self.route_ports:
            check_port(self.host, route)
        self._write_configs()
        offsets = [self._log_size(s) for s in self.servers]
        try:
            for server in self.servers:
                server.start(timeout)
            self._wait_meta_leader(offsets, timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    @staticmethod
    def _log_size(server: EmbeddedServer) -> int:
        return server.log_path.stat().st_size if server.log_path.exists() else 0

    def _wait_meta_leader(self, offsets: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            known = 0  # nodes that know the meta leader: all, so any can take requests
            for server, offset in zip(self.servers, offsets, strict=True):
                if server.proc is not None and server.proc.poll() is not None:
                    raise ServerError(
                        f"cluster node {server.store_dir.name} exited with code "
                        f"{server.proc.returncode}; see {server.log_path}"
                    )
                with server.log_path.open("rb") as fh:
                    fh.seek(offset)
                    text = fh.read()
                known += any(marker in text for marker in _META_LEADER)
            if known == len(self.servers):
                return
            time.sleep(0.05)
        raise ServerError(
            f"the cluster elected no JetStream meta leader within {timeout:g}s; see the node "
            f"logs under {self.directory}"
        )

    def index(self, url_or_name: str) -> int:
        """The node a URL or a name (``n2``) designates."""
        for i, (name, url) in enumerate(zip(self.names, self.urls, strict=True)):
            if url_or_name in (name, url):
                return i
        raise ConfigError(f"no node {url_or_name!r} in this cluster ({', '.join(self.names)})")

    def kill(self, node: int) -> None:
        """SIGKILL one node (a crash); its store stays for ``restart``."""
        self.servers[node].kill()

    def restart(self, node: int, timeout: float = 30.0) -> None:
        """Start a node again on its store, ports and configuration."""
        self.servers[node].start(timeout)

    def stop(self) -> None:
        """Stop every node that runs (SIGTERM, SIGKILL after 10 s)."""
        for server in self.servers:
            server.stop()

    def wait(self) -> list[int]:
        """Wait for every node to exit; their exit codes."""
        return [s.wait() for s in self.servers if s.proc is not None]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
