"""The console as an ASGI application (Starlette): routes, content negotiation, the token
check, error pages, and the server-sent event streams of the live pages.

Every page answers HTML, or its data as JSON with ``Accept: application/json`` or
``?format=json``. An error a user can cause (a bad filter, an unknown aggregate, no worker,
no server) is a page (or ``{"error": ...}``) with its HTTP status, never a traceback: our
exceptions are mapped in ``_STATUS``; anything else is logged and answered 500 in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.console import html, views
from consumers.console.backend import Backend
from consumers.console.settings import ConsoleSettings
from eventstore import (
    AggregateNotFound,
    EventStoreError,
    InvalidEvent,
    InvalidPoint,
    InvalidRequest,
    Malformed,
    NotConnected,
    RequestTimeout,
    UnknownProjection,
    cancel_and_wait,
)

__all__ = ["COOKIE", "build_app"]

log = structlog.get_logger("consumers.console")

COOKIE = "eventstore_console"
STATIC = Path(__file__).parent / "static"
_KEEPALIVE = 15.0  # seconds between two SSE comments on a quiet stream
_encode = msgspec.json.Encoder().encode

# Our exceptions by what the user should do: fix the request (4xx), wait for the worker or the
# server (503), retry (504).
_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (AggregateNotFound, 404, "Not found"),
    (InvalidPoint, 400, "Not in the history"),
    (InvalidRequest, 400, "Bad request"),
    (InvalidEvent, 400, "Bad request"),
    (UnknownProjection, 503, "No worker answers"),
    (NotConnected, 503, "NATS server unreachable"),
    (RequestTimeout, 504, "Timed out"),
    (EventStoreError, 502, "The store failed"),
)

Handler = Callable[[Request], Awaitable[Any]]


def _wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _json(data: Any, status: int = 200) -> Response:
    return Response(_encode(data), status_code=status, media_type="application/json")


def _error(request: Request, status: int, title: str, message: str) -> Response:
    if _wants_json(request):
        return _json({"error": {"status": status, "title": title, "message": message}}, status)
    return HTMLResponse(html.error_page(status, title, message), status_code=status)


def page(
    render: Callable[[Request, Any], str],
    data: Handler,
    as_json: Callable[[Any], Any] = lambda got: got,
) -> Handler:
    """A route: ``data(request)`` as JSON (through ``as_json``), or rendered as HTML; errors
    as error pages."""

    async def endpoint(request: Request) -> Response:
        try:
            got = await data(request)
        except Exception as exc:
            return _failure(request, exc)
        if _wants_json(request):
            return _json(as_json(got))
        return HTMLResponse(render(request, got))

    return endpoint


def _failure(request: Request, exc: Exception) -> Response:
    for kind, status, title in _STATUS:
        if isinstance(exc, kind):
            return _error(request, status, title, " ".join(str(exc).split()))
    log.error("console page failed", path=request.url.path, exc_info=exc)
    return _error(request, 500, "Console error", f"{type(exc).__name__}: the console's log has it")


class TokenGate:
    """With a token: a request must carry it (``Authorization: Bearer``, ``?token=`` once,
    then the cookie this sets), else 401. Plain ASGI, so event streams pass untouched."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _ok(self, given: str | None) -> bool:
        return (
            given is not None
            and self.token is not None
            and hmac.compare_digest(given.encode(), self.token.encode())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        bearer = request.headers.get("authorization", "")
        by_header = bearer[7:] if bearer.lower().startswith("bearer ") else None
        if self._ok(by_header) or self._ok(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        by_query = request.query_params.get("token")
        if self._ok(by_query):
            cookie = Response()
            cookie.set_cookie(COOKIE, by_query or "", httponly=True, samesite="strict")
            extra = [(k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]

            async def with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            await self.app(scope, receive, with_cookie)
            return
        response = _error(
            request, 401, "Token required",
            "this console needs its token: open it once with ?token=..., or send "
            "Authorization: Bearer ...",
        )  # fmt: skip
        await response(scope, receive, send)


def _sse(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"


Source = Callable[[asyncio.Queue[bytes]], Coroutine[Any, Any, None]]


async def _stream(source: Source) -> AsyncIterator[bytes]:
    """Server-sent events from ``source`` (which puts encoded events on the queue), with a
    comment now and then so proxies keep a quiet stream open; an error ends the stream
    with an ``error`` event (the browser's EventSource reconnects by itself)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)
    task = asyncio.create_task(source(queue))
    yield b"retry: 1000\n\n"
    try:
        while True:
            if task.done() and queue.empty():
                exc = task.exception() if not task.cancelled() else None
                message = " ".join(str(exc).split()) if exc else "the stream ended"
                yield _sse("error", {"message": message})
                return
            try:
                async with asyncio.timeout(_KEEPALIVE if not task.done() else 0.01):
                    yield await queue.get()
            except TimeoutError:
                yield b": keepalive\n\n"
    finally:
        await cancel_and_wait(task)


def build_app(settings: ConsoleSettings, backend: Backend | None = None) -> Starlette:
    """The console's ASGI app on ``settings`` (``backend``: a shared one, e.g. in tests)."""
    be = backend or Backend(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await be.start()
        try:
            yield
        finally:
            await be.close()

    async def overview_data(request: Request) -> Any:
        return await views.overview(be)

    async def aggregates_data(request: Request) -> Any:
        q = request.query_params
        where = views.parse_where([w for w in q.getlist("where") if w.strip()])
        limit = views.parse_version(q.get("limit"), "limit")
        limit = 50 if limit is None else limit
        return await views.aggregates_view(be, q.get("type"), where, q.get("cursor"), limit)

    def render_aggregates(request: Request, got: Any) -> str:
        wheres = [w for w in request.query_params.getlist("where") if w.strip()]
        return html.aggregates_page(got, wheres)

    async def aggregate_data(request: Request) -> Any:
        t, i = request.path_params["type"], request.path_params["id"]
        q = request.query_params
        version, at = views.parse_version(q.get("version")), views.parse_time(q.get("at"))
        if version is not None or at is not None:
            point = await views.point_view(be, t, i, version, at)
            if _wants_json(request):
                return point
            return {"aggregate": await views.aggregate_view(be, t, i), "point": point}
        return {"aggregate": await views.aggregate_view(be, t, i), "point": None}

    def render_aggregate(request: Request, got: Any) -> str:
        return html.aggregate_page(got["aggregate"], got["point"])

    # JSON of the page without a point is the aggregate alone (not wrapped).
    aggregate_page = page(render_aggregate, aggregate_data, lambda got: got.get("aggregate", got))

    async def tail_data(request: Request) -> Any:
        return await views.recent_events(be, request.query_params.get("type"))

    async def aggregate_live(request: Request) -> Response:
        t, i = request.path_params["type"], request.path_params["id"]

        async def source(queue: asyncio.Queue[bytes]) -> None:
            client = await be.client()
            async for rec in client.watch(be.settings.projection, t, i, latest=True):
                await queue.put(_sse("state", msgspec.to_builtins(rec)))

        return StreamingResponse(_stream(source), media_type="text/event-stream")

    async def tail_live(request: Request) -> Response:
        kind = request.query_params.get("type") or None
        start = views.parse_version(request.query_params.get("from_seq"), "from_seq")

        async def source(queue: asyncio.Queue[bytes]) -> None:
            store = await be.store()

            def bad(m: Malformed) -> None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(_sse("quarantined", views.malformed_row(m)))

            begin = start if start is not None else await store.head() + 1
            async for ev in store.follow(begin, kind, on_malformed=bad):
                await queue.put(_sse("event", views.event_row(ev)))

        return StreamingResponse(_stream(source), media_type="text/event-stream")

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(request, 404, "Not found", f"no page at {request.url.path}")

    routes = [
        Route("/", page(lambda r, d: html.overview_page(d), overview_data)),
        Route("/aggregates", page(render_aggregates, aggregates_data)),
        Route("/aggregates/{type}/{id:path}", aggregate_page),
        Route("/tail", page(lambda r, d: html.tail_page(d), tail_data)),
        Route("/live/aggregates/{type}/{id:path}", aggregate_live),
        Route("/live/tail", tail_live),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TokenGate, token=settings.token)],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )
