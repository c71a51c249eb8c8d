"""``eventstore console`` as a process: an exposed address without a token is refused, a
token guards every request (header, or ``?token=`` once and then the cookie), and a NATS
server restart only makes pages say so (503) until the console recovers by itself."""

from __future__ import annotations

import asyncio
import http.cookiejar
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import ROOT, cli, get, start_console, stop, wait_up
from helpers_projections import tail

from eventstore import EmbeddedServer, EventStore, NewEvent, StreamSettings


def test_a_non_loopback_host_without_a_token_is_refused(
    nats_url: str, settings: StreamSettings
) -> None:
    """``--host 0.0.0.0`` without a token: one stderr line naming --token, exit 2, nothing
    listens; ``--host`` a name is treated as exposed too."""
    for host in ("0.0.0.0", "example.org"):
        done = cli(nats_url, settings, "console", "--host", host, "--port", "1")
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--token" in lines[0] and "Traceback" not in done.stderr


def test_the_token_guards_every_request(
    nats_url: str, settings: StreamSettings, tmp_path: Path
) -> None:
    """With a token (from EVENTSTORE_CONSOLE_TOKEN, on 0.0.0.0): 401 without it or with a
    wrong one; a Bearer header passes; ``?token=`` once sets a cookie that passes after."""
    log = tmp_path / "console.log"
    proc, base = start_console(
        nats_url, settings, log, "--host", "0.0.0.0", env={"EVENTSTORE_CONSOLE_TOKEN": "s3cret"}
    )
    try:
        wait_up(proc, base, log, "/static/console.css?token=s3cret")
        status, body = get(base + "/tail?format=json")
        assert status == 401 and "token" in body["error"]["message"]
        assert get(base + "/tail?format=json&token=wrong")[0] == 401
        assert get(base + "/tail", {"Authorization": "Bearer nope"})[0] == 401
        assert get(base + "/tail?format=json", {"Authorization": "Bearer s3cret"})[0] == 200
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(base + "/tail?token=s3cret", timeout=30) as res:
            assert res.status == 200
        with opener.open(base + "/tail?format=json", timeout=30) as res:
            assert res.status == 200  # the cookie alone
    finally:
        stop(proc)


async def test_the_console_survives_a_nats_restart(
    private_server: EmbeddedServer, settings: StreamSettings, tmp_path: Path
) -> None:
    """Server killed: pages answer 503 naming the server, quickly; restarted: the console
    answers again by itself, with the events appended after the restart."""
    url = private_server.url
    async with await EventStore.connect(url, producer="tester", stream=settings) as store:
        await store.append("agent", "a", NewEvent("Created", {"n": 1}))
    log = tmp_path / "console.log"
    proc, base = start_console(url, settings, log)
    try:
        wait_up(proc, base, log, "/tail?format=json")
        assert get(base + "/tail?format=json")[1]["head"] == 1
        private_server.kill()
        deadline = time.monotonic() + 60
        while True:  # the connection notices the loss within nats-py's ping interval
            status, body = get(base + "/tail?format=json")
            if status == 503:
                break
            assert status == 200 and time.monotonic() < deadline, (status, tail(log))
            await asyncio.sleep(0.2)
        assert "NATS" in body["error"]["title"] and proc.poll() is None
        private_server.start()
        async with await EventStore.connect(url, producer="tester", stream=settings) as store:
            await store.append("agent", "a", NewEvent("Noted", {"n": 2}))
        deadline = time.monotonic() + 60
        while get(base + "/tail?format=json")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, tail(log)
            await asyncio.sleep(0.2)
        assert get(base + "/tail?format=json")[1]["head"] == 2
    finally:
        stop(proc)


def test_console_help_lists_its_options() -> None:
    """``eventstore console --help`` names --port, --host and --token."""
    done = subprocess.run(
        [sys.executable, "-m", "consumers.cli", "console", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    assert all(opt in done.stdout for opt in ("--port", "--host", "--token"))
