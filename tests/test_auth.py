"""The secure profile run for real: a server with the include of ``eventstore auth init``, each
user doing its job with its own credentials file, and every boundary of issue 14 refused with
PermissionDenied or a ConfigError in bounded time, the log unchanged afterwards.

"Expired" credentials: the profile uses plain nkeys, which have no expiry (a user is revoked
by removing its key from auth.conf and reloading the server). What stands in for it here is
a missing, an unreadable and a malformed creds file, and a key the server does not know."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nkeys
import pytest
from helpers_projections import ROOT, start_worker

from consumers import ProjectionClient, WorkerProcess
from eventstore import (
    AuthProfile,
    ConfigError,
    EmbeddedServer,
    EventStore,
    EventStoreError,
    NewEvent,
    PermissionDenied,
    Rules,
    StreamSettings,
    init_auth,
    producer_grant,
    read_creds,
)
from eventstore.server import free_port
from projections import EntitiesProjection, ProjectionDB, Runner, verify

SETTINGS = StreamSettings(name="SECURE", prefix="sec")


@pytest.fixture
def profile(tmp_path: Path) -> AuthProfile:
    return init_auth(tmp_path / "auth", SETTINGS, [producer_grant("agents:task"),
                                                   producer_grant("ops")])  # fmt: skip


@pytest.fixture
def server(tmp_path: Path, profile: AuthProfile) -> Iterator[EmbeddedServer]:
    s = EmbeddedServer(tmp_path / "nats", port=free_port(), include=profile.include)
    s.start()
    yield s
    s.stop()


async def _as(server: EmbeddedServer, profile: AuthProfile, user: str, **kw: Any) -> EventStore:
    kw.setdefault("presence", False)
    return await EventStore.connect(
        server.url, producer=user, stream=SETTINGS, creds=profile.creds[user], **kw
    )


async def _seed(server: EmbeddedServer, profile: AuthProfile) -> int:
    """The admin creates the stream; five events; the head."""
    async with await _as(server, profile, "admin") as admin:
        for i in range(5):
            await admin.append("task", f"t-{i}", NewEvent("Created", {"n": i}))
        return await admin.head()


async def _unchanged(server: EmbeddedServer, profile: AuthProfile, head: int, tmp: Path) -> None:
    """The log holds exactly ``head`` events, versions 1.. per aggregate, and a fold of it by
    the worker user verifies."""
    async with await _as(server, profile, "admin") as admin:
        assert await admin.head() == head
        info = await admin.js.stream_info(SETTINGS.name)
        assert (info.state.messages, info.state.first_seq) == (head, 1)
    async with (
        await _as(server, profile, "worker") as worker,
        await ProjectionDB.open(tmp / f"verify-{time.monotonic_ns()}.db") as db,
    ):
        assert await Runner(worker, db, [EntitiesProjection()]).catch_up() == head
        report = await verify(worker, db, [EntitiesProjection()])
        assert report.ok, report


def test_auth_init_writes_public_keys_only_and_private_creds(
    profile: AuthProfile, tmp_path: Path
) -> None:
    """auth.conf names every user by public key and holds no seed; each creds file is 0600 in a
    0700 directory ignored by git; a second init into the same directory is refused."""
    directory = tmp_path / "auth"
    conf = Path(profile.include).read_text()
    assert set(profile.creds) == {"admin", "worker", "reader", "agents", "ops"}
    for user, path in profile.creds.items():
        seed = read_creds(path)
        public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
        assert seed not in conf and public in conf, user
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert not re.search(r"S[A-Z][A-Z2-7]{56}", conf)  # no seed of any kind
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / ".gitignore").read_text().splitlines()[-1] == "*"
    assert profile.roles["agents"] == "producer sec.task.*"
    with pytest.raises(ConfigError, match="already holds a profile"):
        init_auth(directory, SETTINGS)
    for bad in ("admin", "Bad Name", "x:a.b.c", "x:_rules", "x:a>"):
        with pytest.raises(ConfigError):
            producer_grant(bad)


async def test_each_user_does_its_job(
    server: EmbeddedServer, profile: AuthProfile, tmp_path: Path
) -> None:
    """The producer appends on its pattern and takes a lock; the unrestricted producer appends
    anywhere; the admin sets the rules; the reader reads; the worker folds."""
    await _seed(server, profile)
    async with await _as(server, profile, "agents", presence=True) as agent:
        r = await agent.append("task", "t-9", NewEvent("Created"))
        async with agent.leases.lock("deploy", owner="agents", ttl=5) as lease:
            assert lease.token > 0
            await agent.append("task", "t-9", NewEvent("Locked"), lease=lease)
        assert r.version == 1
    async with await _as(server, profile, "ops", presence=True) as ops:
        assert (await ops.append("infra", "db", NewEvent("Provisioned"))).version == 1
    async with await _as(server, profile, "admin") as admin:
        version = await admin.set_rules(Rules(), comment="the admin may")
        assert version.version >= 1
    async with await _as(server, profile, "reader") as reader:
        assert [e.type async for e in reader.read("task", "t-9")] == ["Created", "Locked"]
    await _unchanged(server, profile, 9, tmp_path)  # 5 + 2 + 1 + the rules


async def test_a_producer_outside_its_pattern_is_refused(
    server: EmbeddedServer, profile: AuthProfile, tmp_path: Path
) -> None:
    """Appending another type through the library is PermissionDenied within seconds, and so is
    publishing there with a raw nats-py client on the same credentials: nothing is stored."""
    head = await _seed(server, profile)
    async with await _as(server, profile, "agents", append_timeout=20) as agent:
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match=r"sec\.infra"):
            await agent.append("infra", "db", NewEvent("Forged"))
        assert time.monotonic() - started < 4.0
    errors: list[str] = []

    async def collect(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        server.url, nkeys_seed_str=read_creds(profile.creds["agents"]), error_cb=collect
    )
    try:
        js = nc.jetstream()
        with pytest.raises(nats.errors.TimeoutError):  # refused: never stored, never acked
            await js.publish("sec.infra.db", b'{"forged": true}', timeout=1.0)
        await nc.publish("sec._rules.current", b"{}")
        await nc.flush()
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert any('"sec.infra.db"' in e for e in errors), errors
    assert any('"sec._rules.current"' in e for e in errors), errors
    await _unchanged(server, profile, head, tmp_path)


@pytest.mark.parametrize("user", ["agents", "ops", "worker"])
async def test_only_the_admin_changes_the_rules(
    server: EmbeddedServer, profile: AuthProfile, user: str
) -> None:
    """A producer (even one allowed every type) and the worker are refused the rules aggregate:
    ``set_rules`` is PermissionDenied and the rules stay at the admin's version."""
    await _seed(server, profile)
    async with await _as(server, profile, user, append_timeout=20) as store:
        before = store.rules.version
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match="_rules"):
            await store.set_rules(Rules(), comment="not mine to set")
        assert time.monotonic() - started < 4.0
    async with await _as(server, profile, "admin") as admin:
        assert admin.rules.version == before
        assert await admin.head() == 5


async def test_nobody_deletes_or_purges_and_only_the_admin_edits_the_stream(
    server: EmbeddedServer, profile: AuthProfile, tmp_path: Path
) -> None:
    """Every user but the admin is refused deleting, purging and updating the stream and
    deleting a message by the server's permissions; the admin is refused deleting and purging
    messages by the stream itself (deny_delete, deny_purge); the log is unchanged."""
    head = await _seed(server, profile)
    apis = ["STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "STREAM.MSG.DELETE"]
    for user in ("worker", "reader", "agents", "ops"):
        errors: list[str] = []

        async def collect(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            server.url, nkeys_seed_str=read_creds(profile.creds[user]), error_cb=collect
        )
        try:
            for api in apis:
                subject = f"$JS.API.{api}.{SETTINGS.name}"
                with pytest.raises(nats.errors.TimeoutError):
                    await nc.request(subject, b'{"seq": 1}', timeout=0.5)
                assert any(subject.lower() in e.lower() for e in errors), (user, subject, errors)
        finally:
            await nc.close()
    async with await _as(server, profile, "admin") as admin:
        for api, body in (("STREAM.MSG.DELETE", b'{"seq": 1}'), ("STREAM.PURGE", b"{}")):
            reply = await admin.nc.request(f"$JS.API.{api}.{SETTINGS.name}", body, timeout=5)
            assert b'"error"' in reply.data, reply.data  # the stream denies it
    await _unchanged(server, profile, head, tmp_path)


async def test_unknown_keys_and_bad_creds_files_are_refused_at_once(
    server: EmbeddedServer, profile: AuthProfile, tmp_path: Path
) -> None:
    """A key the server does not know (the nkey form of a wrong password) is PermissionDenied
    within seconds; a missing, unreadable or malformed creds file is a ConfigError naming the
    file before anything connects; no credentials at all is PermissionDenied."""
    head = await _seed(server, profile)
    stranger = tmp_path / "stranger.creds"
    stranger.write_text(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())
    for creds in (str(stranger), None):
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match="connect"):
            await EventStore.connect(server.url, stream=SETTINGS, creds=creds, presence=False)
        assert time.monotonic() - started < 4.0
    seed = read_creds(profile.creds["ops"])
    account = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()
    cases = {
        "missing": (tmp_path / "nope.creds", "not found"),
        "unreadable": (tmp_path, "cannot be read"),  # a directory: unreadable even for root
        "empty": (tmp_path / "empty.creds", "malformed"),
        "garbage": (tmp_path / "garbage.creds", "malformed"),
        "two seeds": (tmp_path / "two.creds", "malformed"),
        "account seed": (tmp_path / "account.creds", "malformed"),
        "bad checksum": (tmp_path / "checksum.creds", "malformed"),
        "binary": (tmp_path / "binary.creds", "malformed"),
    }
    (tmp_path / "empty.creds").write_text("# nothing\n")
    (tmp_path / "garbage.creds").write_text("hello world\n")
    (tmp_path / "two.creds").write_text(f"{seed}\n{seed}\n")
    (tmp_path / "account.creds").write_text(account)
    (tmp_path / "checksum.creds").write_text(seed[:-2] + ("AA" if seed[-2:] != "AA" else "BB"))
    (tmp_path / "binary.creds").write_bytes(b"\xff\xfe\x00")
    for name, (path, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as caught:
            await EventStore.connect(server.url, stream=SETTINGS, creds=str(path))
        assert str(path) in str(caught.value), name
        with pytest.raises(ConfigError, match=message):
            await ProjectionClient.connect(server.url, stream=SETTINGS.name, creds=str(path))
    await _unchanged(server, profile, head, tmp_path)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", "--stream", SETTINGS.name, "--prefix",
         SETTINGS.prefix, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=base | (env or {}),
    )  # fmt: skip


def _refusal(proc: subprocess.CompletedProcess[str], error: str) -> str:
    """Exit 1 and the last stderr line ``eventstore: ERROR: ...``, no traceback."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"eventstore: {error}: "), proc.stderr
    return line


def test_the_cli_runs_the_profile_end_to_end(tmp_path: Path) -> None:
    """`auth init` then `server --auth DIR`: the producer publishes with --creds, is refused
    another type and the rules (one line each, exit 1), a missing creds file is one line, the
    reader reads with EVENTSTORE_CREDS, and the admin's `rules set` works."""
    auth = tmp_path / "auth"
    init = _cli("auth", "init", "--out", str(auth), "--producer", "agents:task")
    assert init.returncode == 0, init.stderr
    assert '"agents":{"creds":' in init.stdout
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", "--stream", SETTINGS.name, "--prefix",
         SETTINGS.prefix, "server", "--auth", str(auth), "--port", str(port), "--store-dir",
         str(tmp_path / "nats")],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()
        agents, reader = str(auth / "agents.creds"), str(auth / "reader.creds")
        ok = _cli("--url", url, "--creds", agents, "publish", "task", "t-1", "Created")
        assert ok.returncode == 0, ok.stderr
        _refusal(
            _cli("--url", url, "--creds", agents, "publish", "infra", "db", "Forged"),
            "PermissionDenied",
        )
        rules = tmp_path / "rules.toml"
        rules.write_text('[machines.task]\ninitial = "New"\ntransitions = [["New", "Done"]]\n')
        _refusal(_cli("--url", url, "--creds", agents, "rules", "set", str(rules)),
                 "PermissionDenied")  # fmt: skip
        missing = _cli("--url", url, "--creds", str(tmp_path / "gone.creds"), "history", "task",
                       "t-1")  # fmt: skip
        assert "gone.creds not found" in _refusal(missing, "ConfigError")
        assert len(missing.stderr.strip().splitlines()) == 1
        read = _cli("--url", url, "history", "task", "t-1", env={"EVENTSTORE_CREDS": reader})
        assert read.returncode == 0 and '"type":"Created"' in read.stdout, read.stderr
        admin = str(auth / "admin.creds")
        assert _cli("--url", url, "--creds", admin, "rules", "set", str(rules)).returncode == 0
        count = _cli("--url", url, "--creds", reader, "history", "task", "t-1")
        assert count.stdout.count("\n") == 1  # the refused appends stored nothing
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        log.close()
        if server.stdout is not None:
            server.stdout.close()


async def test_the_worker_user_folds_serves_and_runs_a_reactor(
    server: EmbeddedServer, profile: AuthProfile, tmp_path: Path
) -> None:
    """A real worker process with the worker's creds (--creds) folds the log, answers
    a reader-creds ProjectionClient, and runs a reactor (a lease, appends): every Ordered gets
    its Shipped."""
    await _seed(server, profile)
    log = tmp_path / "worker.log"
    proc = start_worker(server.url, SETTINGS, tmp_path / "w.db", log, "--reactor",
                        "reactor_sample:Shipper", "--creds", profile.creds["worker"],
                        env={"PYTHONPATH": str(ROOT / "tests")})  # fmt: skip
    try:
        async with await _as(server, profile, "ops", presence=True) as ops:
            for i in range(3):
                await ops.append("order", f"o-{i}", NewEvent("Ordered"))
        async with await ProjectionClient.connect(
            server.url, stream=SETTINGS.name, creds=profile.creds["reader"]
        ) as client:
            deadline = time.monotonic() + 30
            while True:
                shipped = await _shipments(server, profile)
                status = None
                with contextlib.suppress(EventStoreError):  # not serving yet
                    status = await client.status()
                if len(shipped) == 3 and status is not None and status.checkpoint >= 11:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.2)
            got = await client.state("order", "o-1")
            assert got.version == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


async def _shipments(server: EmbeddedServer, profile: AuthProfile) -> list[str]:
    async with await _as(server, profile, "reader") as reader:
        return [e.aggregate_id async for e in reader.read_all(aggregate_type="shipment")]


async def test_a_worker_process_started_from_python_takes_the_worker_creds(
    server: EmbeddedServer, profile: AuthProfile, tmp_path: Path
) -> None:
    """``WorkerProcess(creds=...)`` hands the creds to the child and to its own readiness
    check: it starts on the secured server and serves what the admin appended; without them
    the child is refused and ``start`` says so instead of waiting."""
    head = await _seed(server, profile)
    async with WorkerProcess(
        server.url, stream=SETTINGS, directory=tmp_path / "ok", creds=profile.creds["worker"]
    ) as worker:
        async with await ProjectionClient.connect(
            server.url, stream=SETTINGS.name, creds=profile.creds["reader"]
        ) as client:
            assert (await client.status()).checkpoint == head
            assert (await client.state("task", "t-2")).version == 1
        assert worker.running
    bare = WorkerProcess(server.url, stream=SETTINGS, directory=tmp_path / "bare")
    with pytest.raises(EventStoreError):
        await bare.start(timeout=30)
    assert not bare.running
