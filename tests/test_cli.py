"""The ``eventstore`` console script, run as a real subprocess against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import nats

from eventstore import EmbeddedServer, StreamSettings
from eventstore.events import PRODUCER_RE
from eventstore.server import free_port

SCRIPT = Path(sys.executable).parent / "eventstore"
BASE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "consumers.cli"]
ENVELOPE_KEYS = {
    "id", "type", "aggregate_type", "aggregate_id", "version", "schema", "occurred_at",
    "producer", "lamport", "vclock", "transition", "data", "causation_id", "correlation_id",
    "metadata",
}  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["EVENTSTORE_LOG_LEVEL"] = "warning"
    env.update(extra)
    return env


def _globals(url: str, settings: StreamSettings) -> list[str]:
    return ["--url", url, "--stream", settings.name, "--prefix", settings.prefix]


def cli(
    url: str, settings: StreamSettings, *args: str, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``eventstore --url ... --stream ... --prefix ... ARGS`` and capture its output."""
    return subprocess.run(
        [*BASE, *_globals(url, settings), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def assert_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    return err[0]


class LineReader:
    """Reads a pipe in a thread so that a test can wait for a line with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):  # the test closed the pipe
            for line in iter(pipe.readline, ""):
                self._q.put(line)
        self._q.put(None)

    def next(self, timeout: float = 15.0) -> str:
        line = self._q.get(timeout=timeout)
        assert line is not None, "the process closed its output"
        return line

    def until(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.01, deadline - time.monotonic()))
            if text in line:
                return line


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from any of its threads)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


@contextlib.contextmanager
def spawn(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Start ``eventstore ARGS`` with piped output; never leave it (or its children) behind."""
    proc = subprocess.Popen(
        [*BASE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for child in _children(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
        proc.wait(30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_publish_then_history_round_trip(nats_url: str, settings: StreamSettings) -> None:
    """publish prints id/seq/version/duplicate, and history gives back each envelope with seq."""
    first = cli(nats_url, settings, "publish", "agent", "asst_qa", "AgentCreated",
                "--data", '{"model": "gpt-4"}', "--metadata", '{"actor": "ops"}')  # fmt: skip
    assert first.returncode == 0, first.stderr
    out1 = json.loads(first.stdout)
    assert set(out1) == {"id", "seq", "version", "duplicate"}
    assert out1["version"] == 1 and out1["duplicate"] is False
    second = cli(nats_url, settings, "publish", "agent", "asst_qa", "StartRequested",
                 "--transition", "Created:Starting", "--producer", "asst_ops")  # fmt: skip
    assert second.returncode == 0, second.stderr
    out2 = json.loads(second.stdout)
    assert out2["version"] == 2 and out2["seq"] > out1["seq"]

    hist = cli(nats_url, settings, "history", "agent", "asst_qa")
    assert hist.returncode == 0, hist.stderr
    events = lines(hist.stdout)
    assert [e["id"] for e in events] == [out1["id"], out2["id"]]
    assert [e["seq"] for e in events] == [out1["seq"], out2["seq"]]
    assert set(events[0]) == ENVELOPE_KEYS | {"seq", "recorded_at"}
    assert events[0]["data"] == {"model": "gpt-4"}
    assert events[0]["metadata"] == {"actor": "ops"}
    assert events[0]["producer"].startswith("cli-")
    assert PRODUCER_RE.fullmatch(events[0]["producer"])
    assert events[1]["producer"] == "asst_ops"
    assert events[1]["transition"] == {"from": "Created", "to": "Starting"}
    recorded = datetime.fromisoformat(events[1]["recorded_at"])
    assert recorded.tzinfo is not None and abs(datetime.now(UTC) - recorded).total_seconds() < 60

    # Global options work after the sub-command too; version bounds are inclusive.
    only2 = subprocess.run(
        [*BASE, "history", "agent", "asst_qa", "--from-version", "2", "--to-version", "2",
         *_globals(nats_url, settings)],
        capture_output=True, text=True, timeout=30, env=_env(),
    )  # fmt: skip
    assert only2.returncode == 0, only2.stderr
    assert [e["version"] for e in lines(only2.stdout)] == [2]


def test_expect_version_conflict_names_both_versions(
    nats_url: str, settings: StreamSettings
) -> None:
    """A stale --expect-version exits 1 with one stderr line naming expected and actual."""
    assert cli(nats_url, settings, "publish", "agent", "a1", "AgentCreated").returncode == 0
    ok = cli(nats_url, settings, "publish", "agent", "a1", "Noted", "--expect-version", "1")
    assert ok.returncode == 0, ok.stderr
    stale = cli(nats_url, settings, "publish", "agent", "a1", "Noted", "--expect-version", "1")
    assert stale.returncode == 1
    line = assert_one_error_line(stale)
    assert "VersionConflict" in line
    assert "expected version 1" in line and "actual version 2" in line
    assert stale.stdout == ""
    assert len(lines(cli(nats_url, settings, "history", "agent", "a1").stdout)) == 2


def test_same_id_twice_is_stored_once(nats_url: str, settings: StreamSettings) -> None:
    """Publishing with the same --id twice reports a duplicate and stores one event."""
    eid = f"req-{uuid.uuid4()}"
    one = cli(nats_url, settings, "publish", "agent", "a2", "Started", "--id", eid)
    two = cli(nats_url, settings, "publish", "agent", "a2", "Started", "--id", eid)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    first, second = json.loads(one.stdout), json.loads(two.stdout)
    assert first["duplicate"] is False and second["duplicate"] is True
    assert first["id"] == second["id"] == eid
    assert (first["seq"], first["version"]) == (second["seq"], second["version"])
    events = lines(cli(nats_url, settings, "history", "agent", "a2").stdout)
    assert [e["id"] for e in events] == [eid]


def test_producer_comes_from_the_environment(nats_url: str, settings: StreamSettings) -> None:
    """EVENTSTORE_PRODUCER names the writer; an invalid --producer is refused on one line."""
    ok = cli(nats_url, settings, "publish", "agent", "p1", "Started", EVENTSTORE_PRODUCER="w-7")
    assert ok.returncode == 0, ok.stderr
    (event,) = lines(cli(nats_url, settings, "history", "agent", "p1").stdout)
    assert event["producer"] == "w-7" and set(event["vclock"]) == {"w-7"}
    bad = cli(nats_url, settings, "publish", "agent", "p1", "Started", "--producer", "two words")
    assert bad.returncode == 1
    assert "producer name" in assert_one_error_line(bad)


def test_bad_data_json_is_a_usage_error(nats_url: str, settings: StreamSettings) -> None:
    """--data that is not a JSON object exits 2 with one line saying so, and stores nothing."""
    for bad, says in (('{"oops": ', "not valid JSON"), ("[1, 2]", "must be a JSON object")):
        proc = cli(nats_url, settings, "publish", "agent", "a3", "Started", "--data", bad)
        assert proc.returncode == 2
        line = assert_one_error_line(proc)
        assert "--data" in line and says in line
    assert cli(nats_url, settings, "history", "agent", "a3").stdout == ""


def test_invalid_transition_from_the_stored_machine(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """A transition that the machine set with `rules set` forbids exits 1 with
    InvalidTransition, with no config at all; a config declaring the same [machines] is
    accepted, one declaring others is refused before anything is written."""
    config = tmp_path / "machines.toml"
    config.write_text(
        '[machines.request]\ninitial = "Queued"\n'
        'transitions = [["Queued", "Routed"], ["Routed", "Processing"]]\n'
    )
    assert cli(nats_url, settings, "rules", "set", str(config)).returncode == 0
    ok = cli(nats_url, settings, "--config", str(config), "publish", "request", "r1", "Routed",
             "--transition", "Queued:Routed")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = cli(nats_url, settings, "publish", "request", "r1", "Done",
              "--transition", "Routed:Done")  # fmt: skip
    assert bad.returncode == 1
    line = assert_one_error_line(bad)
    assert "InvalidTransition" in line and "Routed -> Done" in line
    # The same machine from EVENTSTORE_CONFIG is accepted, and held to.
    env_bad = cli(nats_url, settings, "publish", "request", "r1", "Back",
                  "--transition", "Routed:Queued", EVENTSTORE_CONFIG=str(config))  # fmt: skip
    assert env_bad.returncode == 1 and "InvalidTransition" in env_bad.stderr
    other = tmp_path / "other.toml"
    other.write_text('[machines.request]\ninitial = "Queued"\n')
    refused = cli(nats_url, settings, "--config", str(other), "publish", "request", "r1", "X")
    assert refused.returncode == 1
    line = assert_one_error_line(refused)
    assert "ConfigError" in line and "differ from the rules stored with the log (version 1)" in line
    assert f"eventstore rules set {other}" in line
    assert len(lines(cli(nats_url, settings, "history", "request", "r1").stdout)) == 1


def test_no_server_names_the_url_and_how_to_start_one(settings: StreamSettings) -> None:
    """With nothing listening, the error names the URL and `eventstore server`, exit 1."""
    url = f"nats://127.0.0.1:{free_port()}"
    proc = cli(url, settings, "history", "agent", "x")
    assert proc.returncode == 1
    line = assert_one_error_line(proc)
    assert url in line and "eventstore server" in line


def test_tail_follows_events_published_after_it_starts(
    nats_url: str, settings: StreamSettings
) -> None:
    """tail prints events published after it started, one JSON line each, and exits 0 on SIGINT."""
    assert cli(nats_url, settings, "publish", "agent", "old", "Before").returncode == 0
    with spawn(*_globals(nats_url, settings), "--log-level", "info", "tail", "agent") as tail:
        out, err = LineReader(tail.stdout), LineReader(tail.stderr)  # type: ignore[arg-type]
        err.until("tail following")
        published = [
            json.loads(cli(nats_url, settings, "publish", "agent", f"n{i}", "After").stdout)
            for i in range(3)
        ]
        assert cli(nats_url, settings, "publish", "other", "x", "Elsewhere").returncode == 0
        seen = [json.loads(out.next()) for _ in range(3)]
        assert [e["seq"] for e in seen] == [p["seq"] for p in published]
        assert [e["aggregate_id"] for e in seen] == ["n0", "n1", "n2"]
        tail.send_signal(signal.SIGINT)
        assert tail.wait(15) == 0


def _server_proc(
    port: int, store_dir: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return spawn("server", "--port", str(port), "--store-dir", str(store_dir))


def test_server_prints_where_it_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`eventstore server` prints one line, accepts appends, and exits 0 on SIGTERM and SIGINT."""
    port = free_port()
    settings = StreamSettings()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with _server_proc(port, tmp_path / "nats") as proc:
            out = LineReader(proc.stdout)  # type: ignore[arg-type]
            line = out.next(20)
            assert "listening on" in line and f"nats://127.0.0.1:{port}" in line
            assert str(tmp_path / "nats") in line
            url = f"nats://127.0.0.1:{port}"
            pub = cli(url, settings, "publish", "agent", "srv", "Ping")
            assert pub.returncode == 0, pub.stderr
            proc.send_signal(sig)
            assert proc.wait(20) == 0
            assert proc.stdout is not None and proc.stdout.read() == ""
            assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
        with socket.socket() as s:  # the nats-server child is gone too: the port is free
            s.bind(("127.0.0.1", port))
    # Both runs used the same store: the first run's event survived the restart.
    with EmbeddedServer(tmp_path / "nats", port=port) as server:
        kept = lines(cli(server.url, settings, "history", "agent", "srv").stdout)
    assert [e["version"] for e in kept] == [1, 2]


def test_server_refuses_a_port_in_use(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    """`eventstore server` on a busy port exits 1 with one line saying the port is in use."""
    with _server_proc(nats_server.port, tmp_path / "nats") as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"port {nats_server.port}" in err and "in use" in err


def test_server_exits_1_when_nats_server_dies(tmp_path: Path) -> None:
    """If the nats-server child dies, `eventstore server` says so on one line and exits 1."""
    with _server_proc(free_port(), tmp_path / "nats") as proc:
        assert "listening on" in LineReader(proc.stdout).next(20)  # type: ignore[arg-type]
        (child,) = _children(proc.pid)
        os.kill(child, signal.SIGKILL)
        assert proc.wait(20) == 1
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "nats-server exited unexpectedly" in err


def test_demo_runs_and_prints_the_log(tmp_path: Path) -> None:
    """`eventstore demo` exits 0 within seconds and prints every agent's lifecycle as a table."""
    started = time.monotonic()
    proc = subprocess.run(
        [*BASE, "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 20
    out = proc.stdout
    assert "InvalidTransition" in out and "VersionConflict" in out
    header = next(line for line in out.splitlines() if line.startswith("seq"))
    assert header.split() == ["seq", "aggregate", "ver", "type", "transition", "producer",
                              "lamport"]  # fmt: skip
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+\s+agent/", line)]
    # seq 1 holds the demo's rules (the agent lifecycle); then 3 agents x 5 + 1 task
    assert [int(r.split()[0]) for r in rows] == list(range(2, 18))
    for agent in ("asst_qa", "asst_ops", "ocr_pipeline"):
        mine = [r for r in rows if f" agent/{agent} " in r]
        assert [r.split()[3] for r in mine if r.split()[3] != "TaskAssigned"] == [
            "AgentCreated", "StartRequested", "Started", "ProcessingStarted", "Terminated"
        ]  # fmt: skip
        assert re.findall(r"(\w+) -> (\w+)", "\n".join(mine)) == [
            ("Created", "Starting"), ("Starting", "Running"), ("Running", "Processing"),
            ("Processing", "Terminated"),
        ]  # fmt: skip
    assert sum("TaskAssigned" in r for r in rows) == 1
    watched = [json.loads(x.split("watch> ", 1)[1]) for x in out.splitlines() if "watch> " in x]
    assert [(w["aggregate_id"], w["version"]) for w in watched][-3:] == [
        ("asst_new", 1),
        ("asst_new", 2),
        ("asst_new", 3),
    ]  # a subscriber follows the agents live
    assert "stopping the server" in out


async def test_raw_nats_client_event_shows_in_history(
    nats_url: str, settings: StreamSettings
) -> None:
    """An event body built by hand and published with plain nats-py is what history shows."""
    empty = await asyncio.to_thread(cli, nats_url, settings, "history", "agent", "raw agent.1")
    assert empty.returncode == 0 and empty.stdout == ""  # the stream exists now
    event_id = str(uuid.uuid4())
    body = {
        "id": event_id,
        "type": "Started",
        "aggregate_type": "agent",
        "aggregate_id": "raw agent.1",
        "version": 1,
        "schema": 1,
        "occurred_at": "2026-01-13T10:30:00Z",
        "producer": "go-agent",
        "lamport": 7,
        "vclock": {"go-agent": 3},
        "transition": {"from": "Starting", "to": "Running"},
        "data": {"pid": 4242},
    }
    nc = await nats.connect(nats_url)
    try:
        ack = await nc.jetstream().publish(
            f"{settings.prefix}.agent.raw%20agent%2E1",  # ' ' and '.' escaped by hand
            json.dumps(body).encode(),
            stream=settings.name,
            headers={"Nats-Msg-Id": event_id},
        )
    finally:
        await nc.close()
    hist = await asyncio.to_thread(cli, nats_url, settings, "history", "agent", "raw agent.1")
    assert hist.returncode == 0, hist.stderr
    (event,) = lines(hist.stdout)
    assert event["seq"] == ack.seq
    assert {k: event[k] for k in body} == {**body, "occurred_at": "2026-01-13T10:30:00Z"}
    assert event["metadata"] == {} and event["recorded_at"]
