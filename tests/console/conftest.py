"""The console's tests: a real nats-server (the session's), a real worker process, the
console as a real ``eventstore console`` process on a free loopback port, and a real headless
Chromium driven through selenium (Debian's ``chromium`` and ``chromium-driver``; ``make test``
installs them when missing: these tests never skip)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_projections import tail
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from eventstore import StreamSettings, free_port

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots are refreshed only when asked (EVENTSTORE_SCREENSHOTS=docs/console),
# so a test run leaves the tree clean; otherwise they go to a temporary directory.
SHOTS = Path(os.environ.get("EVENTSTORE_SCREENSHOTS") or tempfile.mkdtemp(prefix="console-shots-"))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, and background tabs kept running (the live test watches two windows at once).
ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1100",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)


def cli(url: str, settings: StreamSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """``eventstore`` (``python -m consumers.cli``) on ``settings``' stream."""
    command = [sys.executable, "-m", "consumers.cli", "--url", url, "--stream", settings.name,
               "--prefix", settings.prefix, *args]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def start_console(
    url: str, settings: StreamSettings, log: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """An ``eventstore console`` process on a free loopback port; (process, base URL)."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    command = [sys.executable, "-m", "consumers.cli", "--url", url, "--stream", settings.name,
               "--prefix", settings.prefix, "console", "--port", str(port), *extra]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=base | (env or {}), stdout=out, stderr=subprocess.STDOUT
        )
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc: subprocess.Popen[bytes], base: str, log: Path, path: str = "/") -> None:
    """Until the console answers ``path`` (it died, or 60 s: fail, with its log)."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, tail(log)
        try:
            status, _ = get(base + path)
            if status < 500:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, tail(log)
        time.sleep(0.1)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, body: JSON when it is JSON, else text) of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            status, body, kind = res.status, res.read(), res.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    text = body.decode()
    return status, json.loads(text) if "json" in kind else text


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """A real headless Chromium (its clock in UTC, so the time picker reads UTC)."""
    assert Path(CHROMEDRIVER).exists(), "install chromium and chromium-driver (make test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ARGS:
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": "UTC"})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    """Save the whole page (beyond the window too) as ``SHOTS/<name>.png`` (with
    ``EVENTSTORE_SCREENSHOTS=docs/console``: the README's pictures)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    (SHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
