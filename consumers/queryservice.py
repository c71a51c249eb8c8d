"""The query service: a running worker answers queries about its projections over NATS.

``QueryService(store, runner)`` registers a NATS micro service named ``eventstore``
(version = the package's, metadata: stream, projections, db), so ``$SRV.PING`` / ``$SRV.INFO``
/ ``$SRV.STATS`` (``nats micro ls``) list it, with the endpoints of ``consumers.protocol`` for
each projection. Every worker of a stream subscribes with micro's queue group, so several
workers of one projection answer as one: any of them may die.

Each request runs in a task of its own (a ``min_seq`` wait never holds up the others) and
gets exactly one reply: the answer, or an error reply (micro's ``Nats-Service-Error`` headers
and a JSON ``{"error": {...}}`` body) with a code of ``protocol.CODES``. Nothing a client sends
can make it hang or leak a traceback: bodies are size-checked and decoded into strict structs,
errors of ours become their codes, anything else is ``internal`` (logged here with its
traceback). Reads use a read-only connection of their own (WAL: they never block the fold's
commits); past states and history are the projections library's time travel on this database.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from consumers import protocol as wire
from eventstore import (
    AggregateNotFound,
    EventStore,
    EventStoreError,
    InvalidEvent,
    InvalidPoint,
    InvalidRequest,
    UnknownProjection,
    cancel_and_wait,
    encode_id,
    validate_aggregate_type,
)
from projections import (
    CommitInfo,
    Point,
    Projection,
    ProjectionDB,
    Runner,
    StateRecord,
    TimeTravel,
    current_state,
    projection_counts,
    query_states,
    states_between,
)

__all__ = ["QueryService", "service_version"]

log = structlog.get_logger("consumers.queryservice")

_encode = msgspec.json.Encoder().encode
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "state": msgspec.json.Decoder(wire.StateRequest),
    "history": msgspec.json.Decoder(wire.HistoryRequest),
    "list": msgspec.json.Decoder(wire.ListRequest),
    "changes": msgspec.json.Decoder(wire.ChangesRequest),
    "status": msgspec.json.Decoder(wire.StatusRequest),
    "range": msgspec.json.Decoder(wire.RangeRequest),
}
_STOP_GRACE = 2.0  # seconds in-flight requests get to finish at stop
_ENVELOPE = 2048  # bytes of a range reply besides its items, at most


def service_version() -> str:
    """The package's version (micro wants semver)."""
    try:
        return importlib.metadata.version("eventstore")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class _Fail(Exception):
    def __init__(
        self, code: str, message: str, *, checkpoint: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.body = wire.ErrorBody(code=code, message=message, checkpoint=checkpoint, reason=reason)


def _one_line(text: str, limit: int = 1000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class QueryService:
    """A worker's projections served over NATS (see the module doc)."""

    def __init__(self, store: EventStore, runner: Runner) -> None:
        self.store = store
        self.runner = runner
        self.db_path = runner.db.path
        self.stream = store.settings.name
        self.projections = {p.name: p for p in runner.projections}
        self.service: Service | None = None
        self._db: ProjectionDB | None = None
        self._lock = asyncio.Lock()  # one read transaction at a time on the read connection
        self._committed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._travel: dict[str, TimeTravel] = {}
        self._log = log.bind(stream=self.stream, db=str(self.db_path))

    @property
    def id(self) -> str:
        return self.service.id if self.service is not None else ""

    async def start(self) -> None:
        self._db = db = await self.runner.db.sibling(readonly=True)
        self._travel = {n: TimeTravel(self.store, p, db) for n, p in self.projections.items()}
        self.runner.on_commit.append(self._on_commit)
        names = sorted(self.projections)
        self.service = await add_service(
            self.store.nc,
            name=wire.SERVICE_NAME,
            version=service_version(),
            description=f"eventstore projections of stream {self.stream}",
            metadata={
                "stream": self.stream,
                "projections": ",".join(names),
                "db": str(self.db_path),
            },
        )
        for name in names:
            for op in wire.OPS:
                await self.service.add_endpoint(
                    name=re.sub(r"[^A-Za-z0-9_-]", "_", f"{name}-{op}"),
                    subject=wire.endpoint_subject(self.stream, name, op),
                    handler=self._handler(name, op),
                    metadata={"projection": name, "op": op},
                )
        await self.store.nc.flush()
        self._log.info("query service started", id=self.id, projections=names)

    async def stop(self) -> None:
        """Stop taking requests, let those in flight finish briefly, close the connection."""
        with contextlib.suppress(ValueError):
            self.runner.on_commit.remove(self._on_commit)
        service, self.service = self.service, None
        if service is not None:
            with contextlib.suppress(Exception):  # a connection already gone
                await service.stop()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=_STOP_GRACE)
            await cancel_and_wait(*pending)
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def _on_commit(self, info: CommitInfo) -> None:
        async with self._committed:
            self._committed.notify_all()

    # -- dispatch --------------------------------------------------------------------------

    def _handler(self, name: str, op: str) -> Callable[[Request], Awaitable[None]]:
        async def handle(request: Request) -> None:
            task = asyncio.create_task(self._serve(request, name, op))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return handle

    async def _serve(self, request: Request, name: str, op: str) -> None:
        try:
            try:
                body = self._decode(request.data, op)
                await self._wait(name, body.min_seq, body.timeout)
                reply = await getattr(self, f"_{op}")(name, body)
                payload = _encode(reply)
                limit = self.store.nc.max_payload
                if len(payload) > limit:
                    raise _Fail(
                        "too_large",
                        f"the reply is {len(payload)} bytes, above the server's max_payload "
                        f"({limit}): ask for fewer items (limit)",
                    )
            except _Fail:
                raise
            except asyncio.CancelledError:
                raise _Fail("internal", "the worker is stopping: retry") from None
            except Exception as exc:
                raise self._translate(exc, name, op) from exc
            await request.respond(payload)
        except _Fail as fail:
            body_ = fail.body
            with contextlib.suppress(Exception):  # the requester or the connection went away
                await request.respond_error(
                    body_.code, _one_line(body_.message), _encode(wire.ErrorReply(error=body_))
                )

    def _decode(self, data: bytes, op: str) -> Any:
        if len(data) > wire.MAX_REQUEST_BYTES:
            raise _Fail(
                "bad_request",
                f"request of {len(data)} bytes; at most {wire.MAX_REQUEST_BYTES} are accepted",
            )
        try:
            body = _DECODERS[op].decode(data or b"{}")
        except msgspec.ValidationError as exc:
            raise _Fail("bad_request", f"invalid {op} request: {exc}") from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _Fail("bad_request", f"{op} request is not a JSON object: {exc}") from None
        if isinstance(body, wire.StateRequest | wire.HistoryRequest | wire.RangeRequest):
            validate_aggregate_type(body.aggregate_type)
            encode_id(body.aggregate_id)
        if isinstance(body, wire.RangeRequest) and (body.to_version or 1 << 63) < body.from_version:
            raise _Fail("bad_request", f"range: to_version {body.to_version} < from_version "
                        f"{body.from_version}")  # fmt: skip
        return body

    def _translate(self, exc: Exception, name: str, op: str) -> _Fail:
        if isinstance(exc, AggregateNotFound):
            return _Fail("not_found", str(exc))
        if isinstance(exc, InvalidPoint):
            return _Fail("bad_request", str(exc), reason="invalid_point")
        if isinstance(exc, InvalidRequest):
            return _Fail(exc.code, str(exc))
        if isinstance(exc, InvalidEvent):
            return _Fail("bad_request", str(exc))
        if isinstance(exc, UnknownProjection):
            return _Fail("unknown_projection", str(exc))
        if isinstance(exc, EventStoreError):
            self._log.warning("query failed", projection=name, op=op, error=str(exc))
            return _Fail("internal", str(exc))
        self._log.exception("query failed unexpectedly", projection=name, op=op)
        return _Fail("internal", f"{type(exc).__name__} in the worker (see its log)")

    async def _wait(self, name: str, min_seq: int | None, timeout: float | None) -> None:
        """Return once ``name`` has applied ``min_seq``, or fail ``timeout`` after its bound."""
        if min_seq is None or self.runner.checkpoints()[name] >= min_seq:
            return
        bound = timeout if timeout is not None else wire.DEFAULT_TIMEOUT
        try:
            async with asyncio.timeout(bound), self._committed:
                await self._committed.wait_for(lambda: self.runner.checkpoints()[name] >= min_seq)
        except TimeoutError:
            reached = self.runner.checkpoints()[name]
            raise _Fail(
                "timeout",
                f"projection {name} on stream {self.stream} has applied the log up to seq "
                f"{reached}, not yet seq {min_seq}, after waiting {bound:g}s",
                checkpoint=reached,
            ) from None

    # -- the endpoints ---------------------------------------------------------------------

    def _projection(self, name: str) -> Projection[Any]:
        return self.projections[name]

    @property
    def db(self) -> ProjectionDB:
        if self._db is None:
            raise _Fail("internal", "the query service is not running")
        return self._db

    async def _state(self, name: str, req: wire.StateRequest) -> wire.StateReply:
        checkpoint = self.runner.checkpoints()[name]  # read before: the answer reflects it
        point = Point(version=req.version, seq=req.seq, at=req.at)
        if point.latest:
            async with self._lock:
                state = await current_state(
                    self.db, self._projection(name), req.aggregate_type, req.aggregate_id
                )
        else:
            state = await self._travel[name].state_at(
                req.aggregate_type, req.aggregate_id, version=req.version, seq=req.seq, at=req.at
            )
        return wire.StateReply(
            checkpoint=checkpoint,
            projection=name,
            aggregate_type=state.aggregate_type,
            aggregate_id=state.aggregate_id,
            version=state.version,
            seq=state.seq,
            state=state.state,
            vclock=state.vclock,
            lamport=state.lamport,
            recorded_at=state.recorded_at,
            snapshot_version=state.snapshot_version,
            replayed=state.replayed,
            rules_version=state.rules_version,
            past=not point.latest,
        )

    async def _history(self, name: str, req: wire.HistoryRequest) -> wire.HistoryReply:
        checkpoint = self.runner.checkpoints()[name]
        first, stop = req.from_version, req.from_version + req.limit  # one past the page
        start = Point(version=first - 1) if first > 1 else None
        entries = await self._travel[name].history(
            req.aggregate_type, req.aggregate_id, start, Point(version=stop)
        )
        cut = next(
            (i for i, e in enumerate(entries) if e.version is not None and e.version >= stop),
            None,
        )
        return wire.HistoryReply(
            checkpoint=checkpoint,
            projection=name,
            aggregate_type=req.aggregate_type,
            aggregate_id=req.aggregate_id,
            entries=entries if cut is None else entries[:cut],
            next_version=None if cut is None else stop,
        )

    async def _range(self, name: str, req: wire.RangeRequest) -> wire.RangeReply:
        """One replay for the whole page (``projections.states_between``); the page stops at
        ``limit`` states or before the reply would pass the server's max_payload."""
        checkpoint = self.runner.checkpoints()[name]
        key = (req.aggregate_type, req.aggregate_id)
        last = req.to_version or (1 << 63) - 1
        got = await states_between(self._travel[name], *key, req.from_version, last, req.limit + 1)
        budget = self.store.nc.max_payload - _ENVELOPE
        items: list[StateRecord] = []
        for past in got[: req.limit]:
            item = StateRecord(projection=name, aggregate_type=past.aggregate_type,
                               aggregate_id=past.aggregate_id, version=past.version,
                               seq=past.seq, state=past.state)  # fmt: skip
            budget -= len(_encode(item)) + 1
            if budget < 0 and items:
                break
            items.append(item)
        more = len(items) < len(got)  # cut by the limit or by the size: the rest is next
        return wire.RangeReply(
            checkpoint=checkpoint, projection=name, aggregate_type=key[0], aggregate_id=key[1],
            items=items, next_version=items[-1].version + 1 if more else None,
        )  # fmt: skip

    async def _list(
        self, name: str, req: wire.ListRequest, since: int | None = None
    ) -> wire.PageReply:
        async with self._lock:
            page = await query_states(
                self.db,
                name,
                aggregate_type=req.aggregate_type,
                where=req.where,
                since=since,
                limit=req.limit,
                cursor=req.cursor,
            )
        return wire.PageReply(
            checkpoint=page.checkpoint, items=page.items, next_cursor=page.next_cursor
        )

    async def _changes(self, name: str, req: wire.ChangesRequest) -> wire.PageReply:
        return await self._list(name, req, since=req.since)

    async def _status(self, name: str, req: wire.StatusRequest) -> wire.StatusReply:
        checkpoints = self.runner.checkpoints()
        head = await self.store.head()
        counts = await projection_counts(self.db, name)
        return wire.StatusReply(
            checkpoint=checkpoints[name],
            projection=name,
            head=head,
            lag=max(0, head - checkpoints[name]),
            projections=checkpoints,
            stream=self.stream,
            db=str(self.db_path),
            worker=self.id,
            failed={n: f.error for n, f in self.runner.failures.items()},
            aggregates=counts.aggregates,
            conflicts=counts.conflicts,
            quarantined=counts.quarantined,
        )
