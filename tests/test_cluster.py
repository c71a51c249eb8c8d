"""Clustering without failover: the local cluster, URL lists, replica counts, the CLI.

The tests that kill nodes are in ``test_cluster_failover.py``; these share one three-node
cluster (real nats-servers on free loopback ports), each with a stream of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_cluster import local_cluster

from consumers.clioptions import nats_url, replica_count
from eventstore import (
    ConfigError,
    EventStore,
    LocalCluster,
    NewEvent,
    StreamMisconfigured,
    StreamSettings,
    server_urls,
)
from eventstore.cluster import ROUTE_OFFSET, cluster_config
from eventstore.server import find_nats_server, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _r3(settings: StreamSettings) -> StreamSettings:
    return StreamSettings(name=settings.name, prefix=settings.prefix, replicas=3)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# -- pure parts ---------------------------------------------------------------------------------


def test_server_urls_split_a_list_and_refuse_an_empty_entry() -> None:
    """A comma-separated URL is a list of servers; a stray comma is an error, not a server."""
    assert server_urls("nats://a:1") == ["nats://a:1"]
    assert server_urls("nats://a:1, nats://b:2") == ["nats://a:1", "nats://b:2"]
    for bad in ("nats://a:1,", ",nats://a:1", "nats://a:1,,nats://b:2"):
        with pytest.raises(ConfigError, match="empty entry"):
            server_urls(bad)


def test_url_option_takes_several_servers_and_checks_each() -> None:
    """``--url`` accepts a cluster's URLs; a bad one among them is a usage error naming it."""
    assert (
        nats_url("nats://127.0.0.1:4222,127.0.0.1:4223") == "nats://127.0.0.1:4222,127.0.0.1:4223"
    )
    with pytest.raises(argparse.ArgumentTypeError, match="'http://x:1' is not a NATS"):
        nats_url("nats://127.0.0.1:4222,http://x:1")
    with pytest.raises(argparse.ArgumentTypeError, match="invalid port"):
        nats_url("nats://a:4222,nats://b:99999")
    with pytest.raises(argparse.ArgumentTypeError, match="is not a NATS"):
        nats_url("nats://a:4222,")
    with pytest.raises(argparse.ArgumentTypeError, match="mixes websocket"):
        nats_url("nats://a:4222,ws://b:80")


def test_replica_count_is_one_to_five() -> None:
    """``--replicas`` takes what JetStream can keep: 1 to 5 copies."""
    assert replica_count("3") == 3
    for bad in ("0", "6", "three", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            replica_count(bad)


def test_node_configuration_names_the_node_and_every_route() -> None:
    """A node's configuration is the base text plus its name and the routes to all nodes."""
    text = cluster_config("jetstream {}\n", "n2", 6223, ["127.0.0.1:6222", "127.0.0.1:6223"])
    assert text.startswith("jetstream {}")
    assert "server_name: n2" in text and "listen: 127.0.0.1:6223" in text
    assert "nats-route://127.0.0.1:6222" in text and "nats-route://127.0.0.1:6223" in text


def test_port_lays_out_client_and_route_ports(tmp_path: Path) -> None:
    """``--port P``: clients on P, P+1, P+2, routes from P+2000; a P without room is refused."""
    c = LocalCluster(tmp_path, port=14222)
    assert c.urls == [f"nats://127.0.0.1:{p}" for p in (14222, 14223, 14224)]
    assert c.route_ports == [14222 + ROUTE_OFFSET + i for i in range(3)]
    assert c.url == ",".join(c.urls)
    with pytest.raises(ConfigError, match="no room"):
        LocalCluster(tmp_path, port=65000)
    with pytest.raises(ConfigError, match="1 to 9 nodes"):
        LocalCluster(tmp_path, nodes=0)


# -- on a running cluster -----------------------------------------------------------------------


async def test_ensure_creates_r3_and_replicated_clock_and_lease_buckets(
    cluster: LocalCluster, settings: StreamSettings
) -> None:
    """``replicas=3`` creates the stream with three copies on a cluster, and the producer's
    clock bucket and the lease bucket with three too."""
    async with await EventStore.connect(cluster.url, producer="r3", stream=_r3(settings)) as s:
        await s.append("agent", "a1", NewEvent("Started"))
        async with s.lock("job", ttl=5):
            pass
        info = await s.js.stream_info(settings.name)
        clocks = await s.js.stream_info(f"KV_eventstore_clocks_{settings.name}")
        leases = await s.js.stream_info(f"KV_LEASES_{settings.name}")
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    assert clocks.config.num_replicas == 3
    assert leases.config.num_replicas == 3


async def test_ensure_refuses_a_stream_with_fewer_replicas_than_asked(
    cluster: LocalCluster, settings: StreamSettings
) -> None:
    """A stream kept with one copy is refused by a store that asks for three, naming both
    counts and how to raise it; asking for one on an R3 stream is fine."""
    async with await EventStore.connect(cluster.url, producer="r1", stream=settings) as s:
        await s.append("agent", "a1", NewEvent("Started"))
    with pytest.raises(StreamMisconfigured, match="num_replicas is 1, fewer than the 3 asked"):
        await EventStore.connect(cluster.url, producer="r3", stream=_r3(settings))
    other = StreamSettings(name=settings.name + "_b", prefix=settings.prefix + "b", replicas=3)
    async with await EventStore.connect(cluster.url, stream=other):
        pass
    one = StreamSettings(name=other.name, prefix=other.prefix, replicas=1)
    async with await EventStore.connect(cluster.url, stream=one) as s:
        assert (await s.js.stream_info(other.name)).config.num_replicas == 3


async def test_connect_skips_a_dead_url_in_the_list(
    cluster: LocalCluster, settings: StreamSettings
) -> None:
    """A list whose first server does not answer still connects, to one that does."""
    dead = f"nats://127.0.0.1:{free_port()}"
    url = ",".join([dead, *cluster.urls])
    async with await EventStore.connect(url, producer="p", stream=_r3(settings)) as s:
        r = await s.append("agent", "a1", NewEvent("Started"))
    assert r.version == 1


async def test_every_command_takes_the_cluster_url(
    cluster: LocalCluster, settings: StreamSettings
) -> None:
    """``--url a,b,c --replicas 3`` works for publish and history; ``--replicas 5`` against
    that R3 stream is one stderr line and exit 1."""
    base = ["--url", cluster.url, "--stream", settings.name, "--prefix", settings.prefix]
    pub = cli(*base, "--replicas", "3", "publish", "agent", "a1", "Started")
    assert pub.returncode == 0, pub.stderr
    hist = cli(*base, "history", "agent", "a1")
    assert hist.returncode == 0, hist.stderr
    assert [json.loads(line)["type"] for line in hist.stdout.splitlines()] == ["Started"]
    more = cli(*base, "--replicas", "5", "history", "agent", "a1")
    assert more.returncode == 1
    assert more.stderr.count("\n") == 1 and "fewer than the 5 asked" in more.stderr
    assert "Traceback" not in more.stderr


# -- the command --------------------------------------------------------------------------------


def test_cluster_local_prints_its_nodes_and_stops_them_all_on_sigterm(tmp_path: Path) -> None:
    """``eventstore cluster local``: the first line is the JSON of URLs and nodes (live pids
    that a client can use), and SIGTERM stops all three nodes and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    with subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", "cluster", "local", "--nodes", "3", "--dir",
         str(tmp_path / "c")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            assert len(first["urls"]) == 3
            assert [n["name"] for n in first["nodes"]] == ["n1", "n2", "n3"]
            assert [n["url"] for n in first["nodes"]] == first["urls"]
            pids = [n["pid"] for n in first["nodes"]]
            for pid in pids:
                os.kill(pid, 0)  # alive
            tag = uuid.uuid4().hex[:8]
            url = ",".join(first["urls"])
            where = ["--url", url, "--stream", f"L_{tag}", "--prefix", f"l{tag}"]
            pub = cli(*where, "--replicas", "3", "publish", "agent", "a1", "Started")
            assert pub.returncode == 0, pub.stderr
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            for pid in pids:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
        finally:
            if proc.poll() is None:
                proc.kill()


# -- systemd units for three hosts ------------------------------------------------------------


def test_systemd_render_cluster_writes_each_hosts_units_and_server_config(tmp_path: Path) -> None:
    """``systemd render --cluster h1,h2,h3``: per host, units that ``systemd-analyze verify``
    accepts, a nats.conf that nats-server accepts (its name, routes to all three, clients on
    every interface) and an environment listing every host with three replicas; two hosts
    are refused in one line."""
    out = tmp_path / "units"
    done = cli("systemd", "render", "--out", str(out), "--cluster", "h1,h2,h3")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["h1", "h2", "h3"]
    for host in ("h1", "h2", "h3"):
        conf = (out / host / "nats.conf").read_text()
        assert f"server_name: {host}" in conf and "listen: 0.0.0.0:4222" in conf
        assert all(f"nats-route://{h}:6222" in conf for h in ("h1", "h2", "h3"))
        assert "sync_interval: always" in conf
        checked = subprocess.run(
            [find_nats_server(), "-c", str(out / host / "nats.conf"), "-t"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        env = (out / host / "eventstore.env").read_text()
        assert "EVENTSTORE_URL=nats://h1:4222,nats://h2:4222,nats://h3:4222" in env
        assert "EVENTSTORE_REPLICAS=3" in env
        unit = (out / host / "nats-server.service").read_text()
        assert "-c /etc/eventstore/nats.conf" in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        worker = out / "h2" / "eventstore-worker@main.service"
        shutil.copy(out / "h2" / "eventstore-worker@.service", worker)
        ok = subprocess.run([analyze, "verify", str(out / "h2" / "nats-server.service"),
                             str(worker)], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
    two = cli("systemd", "render", "--out", str(tmp_path / "two"), "--cluster", "h1,h2")
    assert two.returncode == 1 and two.stderr.count("\n") == 1 and "needs 3" in two.stderr
