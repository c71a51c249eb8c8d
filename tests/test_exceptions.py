"""Only our errors come out: every nats-py error maps to an ``eventstore.errors`` class (one
table, ``eventstore.jetstream.translate``), and every public call of ``EventStore``, driven
into a dead, a stopped, a refusing server and a closed store, fails with one of ours in a
bounded time (after httpx's ``tests/test_exceptions.py``)."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pytest
from helpers_process import freeze

from eventstore import (
    AggregateNotFound,
    AppendRequest,
    AppendTimeout,
    ConfigError,
    EmbeddedServer,
    EventStore,
    EventStoreError,
    InvalidEvent,
    NewEvent,
    NotConnected,
    PermissionDenied,
    RequestTimeout,
    Retryable,
    ServerError,
    StreamSettings,
)
from eventstore import directget as directget_module
from eventstore import reader as reader_module
from eventstore.jetstream import translate
from eventstore.server import free_port


def _nats_error_classes() -> list[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in (nats.errors, nats.js.errors):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException):
                found.add(obj)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def _instance(cls: type[BaseException]) -> BaseException:
    try:
        return cls()
    except TypeError:  # it needs arguments: give each required one a placeholder
        required = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return cls(*["x"] * len(required))


@pytest.mark.parametrize("cls", _nats_error_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_nats_error_maps_to_one_of_ours(cls: type[BaseException]) -> None:
    """Each error class nats-py defines translates to a named subclass of EventStoreError."""
    err = translate(_instance(cls), what="a request", url="nats://x:1", timeout=1.0)
    assert isinstance(err, EventStoreError)
    assert type(err) is not EventStoreError


_DRIVER_ERRORS: list[tuple[BaseException, dict[str, Any], type[EventStoreError]]] = [
    (nats.errors.TimeoutError(), {}, RequestTimeout),
    (nats.errors.TimeoutError(), {"what": "append", "subject": "e.a.b"}, AppendTimeout),
    (TimeoutError(), {}, RequestTimeout),
    (TimeoutError(), {}, RequestTimeout),
    (nats.js.errors.FetchTimeoutError(), {}, RequestTimeout),
    (nats.errors.NoServersError(), {}, NotConnected),
    (nats.errors.ConnectionClosedError(), {}, NotConnected),
    (nats.errors.ConnectionReconnectingError(), {}, NotConnected),
    (nats.errors.StaleConnectionError(), {}, NotConnected),
    (nats.errors.NoRespondersError(), {}, NotConnected),
    (ConnectionRefusedError(), {}, NotConnected),
    (OSError("network unreachable"), {}, NotConnected),
    (nats.errors.AuthorizationError(), {}, PermissionDenied),
    (nats.errors.SecureConnRequiredError(), {}, ConfigError),
    (nats.errors.MaxPayloadError(), {}, InvalidEvent),
    (nats.errors.BadSubjectError(), {}, InvalidEvent),
    (nats.js.errors.ServiceUnavailableError(code=503), {}, NotConnected),
    (nats.js.errors.APIError(code=503, err_code=10076), {}, NotConnected),
    (nats.js.errors.NotFoundError(code=404, err_code=10059), {}, ServerError),
    (nats.js.errors.BadRequestError(code=400, err_code=10071), {}, ServerError),
    (nats.js.errors.ServerError(code=500, err_code=10077), {}, ServerError),
    (nats.js.errors.KeyWrongLastSequenceError(), {}, ServerError),
    (msgspec.DecodeError("bad json"), {}, ServerError),
    (ValueError("anything else"), {}, ServerError),
]


@pytest.mark.parametrize(("exc", "context", "ours"), _DRIVER_ERRORS, ids=lambda v: repr(v)[:40])
def test_translation_table(
    exc: BaseException, context: dict[str, Any], ours: type[EventStoreError]
) -> None:
    """The table sends each driver error to the class a caller reacts to (retry, fix, give up)."""
    assert type(translate(exc, url="nats://x:1", timeout=2.0, **context)) is ours


def test_a_closed_connection_is_not_connected_whatever_the_error() -> None:
    """Once the connection is closed for good, any failure is NotConnected (not retried)."""
    err = translate(nats.errors.TimeoutError(), url="nats://x:1", closed=True)
    assert isinstance(err, NotConnected) and isinstance(err, Retryable)


def test_our_errors_pass_through_unchanged() -> None:
    """An error that is ours already is returned as it is."""
    mine = AggregateNotFound("task", "t-1", "no events")
    assert translate(mine) is mine


def test_the_full_store_refusal_says_what_to_do() -> None:
    """A store-full refusal (10023) is a ServerError that tells the operator what to do."""
    exc = nats.js.errors.APIError(code=500, err_code=10023, description="insufficient resources")
    assert "free disk space" in str(translate(exc, what="append to e.a.b"))


# -- failures driven through every public call, against real servers --------------------------

Call = Callable[[EventStore], Awaitable[Any]]
LIVE = {"follow"}  # may keep waiting for the server to come back: no error is fine too
BOUND = 25.0  # seconds every call gets to fail (or, for LIVE calls, to keep waiting)


async def _drain(it: AsyncIterator[Any]) -> None:
    async for _ in it:
        pass


def _calls(url: str, settings: StreamSettings, **connect: Any) -> dict[str, Call]:
    since = datetime(2020, 1, 1, tzinfo=UTC)

    async def connect_again(_: EventStore) -> None:
        s = await EventStore.connect(url, stream=settings, connect_timeout=2.0, **connect)
        await s.close()

    async def append_many(s: EventStore) -> None:
        got = await s.append_many(
            [
                AppendRequest("task", "f-1", [NewEvent("A")]),
                AppendRequest("task", "f-2", [NewEvent("B")]),
            ]
        )
        for r in got:
            if isinstance(r, EventStoreError):
                raise r

    return {
        "append": lambda s: s.append("task", "f-1", NewEvent("A")),
        "append_many": append_many,
        "read": lambda s: _drain(s.read("task", "f-1")),
        "read_by_seq": lambda s: _drain(s.read_by_seq("task", "f-1")),
        "read_by_time": lambda s: _drain(s.read_by_time("task", "f-1", since)),
        "read_all": lambda s: _drain(s.read_all()),
        "follow": lambda s: _drain(s.follow()),
        "raw": lambda s: _drain(s.raw()),
        "raw_aggregate": lambda s: _drain(s.raw_aggregate("task", "f-1")),
        "head": lambda s: s.head(),
        "version": lambda s: s.version("task", "f-1"),
        "exists": lambda s: s.exists("task", "f-1"),
        "stream_identity": lambda s: s.stream_identity(),
        "ensure": lambda s: s.ensure(),
        "connect": connect_again,
    }


async def _drive(store: EventStore, calls: dict[str, Call]) -> dict[str, BaseException | None]:
    """Run every call at once; what each raised (None: it returned, or is still waiting)."""
    tasks = {name: asyncio.create_task(call(store)) for name, call in calls.items()}
    started = time.monotonic()
    _, pending = await asyncio.wait(tasks.values(), timeout=BOUND)
    out: dict[str, BaseException | None] = {}
    for name, task in tasks.items():
        if task in pending:
            where = io.StringIO()
            task.print_stack(file=where)
            assert name in LIVE, (
                f"{name} neither failed nor returned within {BOUND}s:\n{where.getvalue()}"
            )
            task.cancel()
            out[name] = None
            continue
        out[name] = task.exception()
    await asyncio.gather(*pending, return_exceptions=True)
    assert time.monotonic() - started < BOUND + 5
    return out


def _only_ours(outcomes: dict[str, BaseException | None], *, must_fail: set[str]) -> None:
    foreign = {n: repr(e) for n, e in outcomes.items() if e and not isinstance(e, EventStoreError)}
    assert not foreign, f"errors that are not ours came out: {foreign}"
    silent = {n for n in must_fail if outcomes[n] is None}
    assert not silent, f"these calls did not fail: {silent}"


@pytest.fixture
def few_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unanswered direct gets give up after two tries, not six: the test stays short."""
    monkeypatch.setattr(directget_module, "_TRIES", 2)


@pytest.fixture
def stream() -> StreamSettings:
    return StreamSettings(name="FAILS", prefix="fails")


async def _seeded(url: str, stream: StreamSettings) -> EventStore:
    store = await EventStore.connect(url, producer="fails", stream=stream, append_timeout=3.0)
    await store.append("task", "f-1", NewEvent("A"))
    return store


ALL = set(_calls("", StreamSettings()).keys())


@pytest.mark.slow
async def test_a_killed_server_gives_only_our_errors(
    private_server: EmbeddedServer, stream: StreamSettings, few_tries: None
) -> None:
    """Server killed: every call fails with an EventStoreError (follow may wait), in time."""
    store = await _seeded(private_server.url, stream)
    try:
        private_server.kill()
        outcomes = await _drive(store, _calls(private_server.url, stream))
        _only_ours(outcomes, must_fail=ALL - LIVE)
        assert not {
            n: e for n, e in outcomes.items() if e is not None and not isinstance(e, Retryable)
        }
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_stopped_server_gives_only_our_errors(
    private_server: EmbeddedServer, stream: StreamSettings, few_tries: None
) -> None:
    """Server stopped (SIGSTOP: requests time out): only EventStoreErrors, in bounded time."""
    store = await _seeded(private_server.url, stream)
    proc = private_server.proc
    assert proc is not None
    freeze(proc.pid)
    try:
        outcomes = await _drive(store, _calls(private_server.url, stream))
        _only_ours(outcomes, must_fail=ALL - LIVE)
        assert not {
            n: e for n, e in outcomes.items() if e is not None and not isinstance(e, Retryable)
        }
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await store.close()


@pytest.mark.slow
async def test_a_server_stopped_after_the_head_lookup_ends_a_bounded_read(
    private_server: EmbeddedServer, stream: StreamSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server freezes between a bounded read's head lookup and its consumer create: the
    read gives up with a Retryable error once subscribing has failed for SUBSCRIBE_PATIENCE,
    where it used to retry forever."""
    store = await _seeded(private_server.url, stream)
    proc = private_server.proc
    assert proc is not None
    looked_up = store.reader.last_seq

    async def then_stop(subject: str | None = None) -> int:
        got = await looked_up(subject)
        freeze(proc.pid)
        return got

    monkeypatch.setattr(store.reader, "last_seq", then_stop)
    started = time.monotonic()
    try:
        with pytest.raises(Retryable):
            await asyncio.wait_for(_drain(store.raw()), BOUND)
        took = time.monotonic() - started
        assert reader_module.SUBSCRIBE_PATIENCE <= took < BOUND
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await store.close()


@pytest.fixture
def refusing_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server whose user ``nobody`` may use nothing but its own inboxes."""
    users = [
        {"user": "admin", "password": "admin"},
        {
            "user": "nobody",
            "password": "nobody",
            "permissions": {
                "publish": {"allow": ["_INBOX.>"]},
                "subscribe": {"allow": ["_INBOX.>"]},
            },
        },
    ]
    conf = tmp_path / "refusing.conf"
    conf.write_text(f"jetstream {{}}\nauthorization {{ users = {json.dumps(users)} }}\n")
    server = EmbeddedServer(tmp_path / "nats", port=free_port(), config=conf)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_refusals_give_only_our_errors(
    refusing_server: EmbeddedServer, stream: StreamSettings, few_tries: None
) -> None:
    """A user refused every JetStream subject gets only EventStoreErrors, in bounded time."""
    url = refusing_server.url
    admin = await _seeded(url.replace("nats://", "nats://admin:admin@"), stream)
    await admin.close()
    store = await EventStore.connect(
        url, producer="nobody", stream=stream, ensure=False, append_timeout=3.0,
        user="nobody", password="nobody",
    )  # fmt: skip
    try:
        calls = _calls(url, stream, user="nobody", password="nobody")
        outcomes = await _drive(store, calls)
        _only_ours(outcomes, must_fail=ALL - LIVE)
    finally:
        await store.close()


async def test_a_closed_store_gives_not_connected(nats_url: str, settings: StreamSettings) -> None:
    """After close, every call fails at once with NotConnected, never a nats-py error."""
    store = await EventStore.connect(nats_url, producer="closed", stream=settings)
    await store.close()
    calls = {n: c for n, c in _calls(nats_url, settings).items() if n != "connect"}
    started = time.monotonic()
    outcomes = await _drive(store, calls)
    _only_ours(outcomes, must_fail=set(calls))
    assert all(isinstance(e, NotConnected) for e in outcomes.values()), outcomes
    assert time.monotonic() - started < 5.0
    with pytest.raises(NotConnected, match="closed"):
        _ = store.vclock
