"""The console in a real headless browser, against a real server, worker and console process:
each page shows what the worker and the log hold, the slider shows exactly what ``eventstore
state --version V`` prints, and an append shows up live (tail and state) without a reload."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, get, screenshot, start_console, stop, wait_up
from helpers_projections import start_worker
from helpers_serving import sqlite_states, wait_folded, wait_serving
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from eventstore import EventStore, MachineTable, NewEvent, Rules, StreamSettings
from projections import ProjectionDB, projection_counts

LIVE = 2.0  # seconds: "appears within two seconds without a reload" (issue 17)


@dataclass
class Scene:
    url: str
    settings: StreamSettings
    store: EventStore
    db: Path
    base: str  # the console's URL
    worker_log: Path


@pytest.fixture(scope="module")
async def scene(nats_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    """One log (agents with a state machine and concurrent writers, tasks to filter and page,
    one undecodable message), a worker that has folded it and a console reading it."""
    tmp = tmp_path_factory.mktemp("console")
    tag = uuid.uuid4().hex[:10]
    settings = StreamSettings(name=f"C_{tag}", prefix=f"c{tag}")
    url = nats_server.url
    machine = MachineTable("Created", [("Created", "Running"), ("Running", "Stopped")])
    async with (
        await EventStore.connect(url, producer="tester", stream=settings) as store,
        await EventStore.connect(url, producer="alice", stream=settings) as alice,
        await EventStore.connect(url, producer="bob", stream=settings) as bob,
    ):
        await store.set_rules(Rules(machines={"agent": machine}))
        await alice.append("agent", "a", [NewEvent("Created", {"model": "m1", "n": 1})])
        await bob.append("agent", "a", [NewEvent("Tuned", {"model": "m2"})])  # blind: concurrent
        go = NewEvent("Go", {"n": 2}, transition=("Created", "Running"))
        await alice.append("agent", "a", [go], expected_version=2)  # read bob's: causal
        await alice.append("agent", "b", NewEvent("Created", {"model": "m1", "n": 7}))
        for i in range(5):
            await store.append("task", f"t{i}", NewEvent("Queued", {"prio": i % 2, "n": i}))
        await store.js.publish(store.subject("task", "junk"), b"{not json")
        db, log = tmp / "db.sqlite", tmp / "worker.log"
        worker = start_worker(url, settings, db, log)
        console, base = start_console(url, settings, tmp / "console.log")
        try:
            await wait_folded(db, await store.head(), worker, log)
            await wait_serving(db, worker, log)
            wait_up(console, base, tmp / "console.log")
            yield Scene(url, settings, store, db, base, log)
        finally:
            stop(console)
            stop(worker)


def _wait(driver: WebDriver, timeout: float) -> WebDriverWait[WebDriver]:
    """A wait that looks again when the page re-rendered an element between finding it and
    reading it (the console's live parts redraw while a condition is checked)."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))


def _open(driver: WebDriver, url: str, ready: str) -> None:
    driver.get(url)
    _wait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ready))


def _text(driver: WebDriver, selector: str) -> str:
    """The element's text, found again if it was redrawn while being read."""
    for _ in range(50):
        try:
            return str(driver.find_element(By.CSS_SELECTOR, selector).text)
        except StaleElementReferenceException:
            time.sleep(0.02)
    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


async def test_overview_shows_stream_projection_and_services(
    scene: Scene, browser: WebDriver
) -> None:
    """The overview shows the stream's message count, the worker's checkpoint and lag, the
    concurrent and quarantined counts from the log, and the service answering $SRV.PING."""
    head = await scene.store.head()
    _open(browser, scene.base + "/", "#stream")
    _wait(browser, 30).until(
        lambda d: (
            _text(d, "#projections .checkpoint") == str(head)
            and _text(d, "#counted") == str(head)
            and d.find_elements(By.CSS_SELECTOR, "#lag-plot canvas")
            and scene.settings.name in _text(d, "#services")
        )
    )
    assert _text(browser, "#stream-messages") == str(head)
    assert _text(browser, "#projections .lag") == "0"
    assert _text(browser, "#conflicts") == "1"  # bob's blind write
    assert _text(browser, "#quarantined") == "1"  # the undecodable message
    # The table's counts are the worker's own (its status), exactly what its SQLite holds.
    async with await ProjectionDB.open(scene.db, readonly=True) as db:
        held = await projection_counts(db, "entities")
    assert _text(browser, "#projections .conflicts") == str(held.conflicts)
    assert _text(browser, "#projections .quarantined") == str(held.quarantined)
    assert held.quarantined >= 1
    assert scene.settings.name in _text(browser, "#services")
    screenshot(browser, "overview")
    status, data = get(scene.base + "/", {"Accept": "application/json"})
    assert status == 200 and data["stream"]["messages"] == head


async def test_aggregates_list_filters_and_pages(scene: Scene, browser: WebDriver) -> None:
    """The list filters by type and by field value and pages with the query service's cursor."""
    _open(browser, scene.base + "/aggregates?type=task&where=prio=1", "#aggregates")
    ids = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#aggregates a.agg")]
    assert ids == ["t1", "t3"]
    _open(browser, scene.base + "/aggregates?type=task&limit=2", "#aggregates")
    seen = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#aggregates a.agg")]
    while browser.find_elements(By.ID, "next"):
        browser.find_element(By.ID, "next").click()
        _wait(browser, 30).until(lambda d: d.find_elements(By.ID, "aggregates"))
        seen += [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#aggregates a.agg")]
    assert seen == ["t0", "t1", "t2", "t3", "t4"]
    _open(browser, scene.base + "/aggregates", "#aggregates")
    screenshot(browser, "aggregates")
    status, data = get(scene.base + "/aggregates?type=task&where=prio=0&format=json")
    assert status == 200 and [i["aggregate_id"] for i in data["items"]] == ["t0", "t2", "t4"]


async def test_aggregate_page_shows_the_workers_state_history_and_machine(
    scene: Scene, browser: WebDriver
) -> None:
    """The aggregate page shows the state the worker holds, every event with its clocks, the
    concurrent one highlighted with the resolver's decision, and the machine's current state."""
    _open(browser, scene.base + "/aggregates/agent/b", "#state")
    assert json.loads(_text(browser, "#state")) == sqlite_states(scene.db)[("agent", "b")]["state"]
    _open(browser, scene.base + "/aggregates/agent/a", "#history")
    assert json.loads(_text(browser, "#state")) == sqlite_states(scene.db)[("agent", "a")]["state"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert [r.get_attribute("data-version") for r in rows] == ["1", "2", "3"]
    concurrent = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr.concurrent")
    assert [r.get_attribute("data-version") for r in concurrent] == ["2"]
    assert "wins" in concurrent[0].text and "bob" in concurrent[0].text
    current = browser.find_element(By.CSS_SELECTOR, "#machine g.state.current")
    assert current.get_attribute("data-state") == "Running"
    screenshot(browser, "aggregate")


async def test_slider_at_version_v_shows_exactly_eventstore_state_version_v(
    scene: Scene, browser: WebDriver
) -> None:
    """Moving the slider to each version V shows the state ``eventstore state agent a
    --version V`` prints; the time picker at a version's recorded time shows that version."""
    _open(browser, scene.base + "/aggregates/agent/a", "#slider")
    slider = browser.find_element(By.ID, "slider")
    slider.click()
    slider.send_keys(Keys.HOME)
    for version in (1, 2, 3):
        if version > 1:
            slider.send_keys(Keys.RIGHT)
        _wait(browser, 30).until(
            lambda d, v=version: (
                d.find_element(By.ID, "point-state").get_attribute("data-version") == str(v)
            )
        )
        done = cli(scene.url, scene.settings, "state", "agent", "a", "--version", str(version))
        assert done.returncode == 0, done.stderr
        expected = json.loads(done.stdout)
        assert json.loads(_text(browser, "#point-state")) == expected["state"]
        assert f"version {version}, seq {expected['seq']}" in _text(browser, "#point-info")
    diff = browser.find_elements(By.CSS_SELECTOR, "#point-diff tr.change")
    assert [r.text.split()[0] for r in diff] == ["n", "status"]  # v3: n 1 -> 2, Running
    events = [ev async for ev in scene.store.read("agent", "a")]
    at = events[1].recorded_at
    assert at is not None
    picked = (at + timedelta(milliseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    browser.execute_script("document.getElementById('at-picker').value = arguments[0]", picked)
    browser.find_element(By.ID, "at-go").click()
    _wait(browser, 30).until(
        lambda d: d.find_element(By.ID, "point-state").get_attribute("data-version") == "2"
    )
    done = cli(scene.url, scene.settings, "state", "agent", "a", "--version", "2")
    assert json.loads(_text(browser, "#point-state")) == json.loads(done.stdout)["state"]
    assert browser.find_element(By.ID, "slider").get_attribute("value") == "2"


async def test_an_append_appears_in_the_tail_and_the_state_without_a_reload(
    scene: Scene, browser: WebDriver
) -> None:
    """With the aggregate page open in one window and the tail in another, an append shows in
    both within two seconds, without a reload; pause holds new events back; an undecodable
    message shows in the tail's quarantine with its reason."""
    _open(browser, scene.base + "/aggregates/agent/b", "#state")
    page = browser.current_window_handle
    browser.switch_to.new_window("tab")
    _open(browser, scene.base + "/tail", "#tail-rows tr")
    _wait(browser, 30).until(lambda d: _text(d, "#tail-status") == "live")
    browser.switch_to.window(page)
    browser.execute_script("window.__sameDocument = true")
    res = await scene.store.append("agent", "b", NewEvent("Noted", {"n": 8, "note": "live"}))
    appended = time.monotonic()
    _wait(browser, LIVE).until(
        lambda d: (
            _text(d, "#version") == str(res.version)
            and json.loads(_text(d, "#state")).get("note") == "live"
        )
    )
    tab = next(h for h in browser.window_handles if h != page)
    browser.switch_to.window(tab)
    _wait(browser, max(0.1, LIVE - (time.monotonic() - appended))).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#tail-rows tr[data-seq="{res.last_seq}"]')
    )
    browser.switch_to.window(page)
    assert browser.execute_script("return window.__sameDocument") is True  # no reload
    _wait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == res.version
    )
    browser.switch_to.window(tab)
    browser.find_element(By.ID, "pause").click()
    held = await scene.store.append("task", "t9", NewEvent("Queued", {"prio": 5}))
    _wait(browser, 30).until(lambda d: "1 waiting" in _text(d, "#tail-status"))
    assert not browser.find_elements(By.CSS_SELECTOR, f'#tail-rows tr[data-seq="{held.last_seq}"]')
    browser.find_element(By.ID, "pause").click()
    assert browser.find_elements(By.CSS_SELECTOR, f'#tail-rows tr[data-seq="{held.last_seq}"]')
    ack = await scene.store.js.publish(scene.store.subject("task", "junk2"), b"\xff garbage")
    _wait(browser, 30).until(lambda d: str(ack.seq) in _text(d, "#quarantined"))
    assert "undecodable" in _text(browser, "#quarantined")
    screenshot(browser, "tail")
    browser.close()
    browser.switch_to.window(page)


async def test_bad_input_is_a_clear_page_with_its_status(scene: Scene, browser: WebDriver) -> None:
    """An unknown aggregate, a bad filter, a version past the end and an unknown page each
    render one clear message with the right status (JSON too), never a traceback."""
    cases = [
        ("/aggregates/agent/nobody", 404, "agent/nobody"),
        ("/aggregates?where=novalue", 400, "FIELD=VALUE"),
        ("/aggregates?limit=0", 400, "limit must be between 1"),
        ("/aggregates/agent/a?version=99", 400, "no version 99"),
        ("/aggregates/agent/a?at=yesterday", 400, "RFC 3339"),
        ("/aggregates/Agent!/a", 400, "aggregate type"),
        ("/nowhere", 404, "no page at /nowhere"),
    ]
    for path, status, words in cases:
        got, text = get(scene.base + path)
        assert got == status and words in text and "Traceback" not in text, (path, text)
        got, body = get(scene.base + path, {"Accept": "application/json"})
        assert got == status and words in body["error"]["message"], (path, body)
    _open(browser, scene.base + "/aggregates/agent/nobody", "#error")
    assert "agent/nobody" in _text(browser, "#error")
    screenshot(browser, "error")
