"""The projection worker: one library object that runs projections over the log until told to
stop, built the same way by every entry point.

``Worker.from_config(url=..., stream=..., db=..., config=..., projections=[...])`` reads the
``[projections]`` load list and runner settings of the config file plus the options given;
``await worker.run_until(stop)`` connects, folds until ``stop`` is set and closes. The state
machines and resolvers it folds with are the rules stored with the log (``store.rules``), the
same for every process; a config file whose ``[machines]`` or ``[projections.resolvers]``
differ from them is refused at connect. ``eventstore worker``, ``eventstore up`` and ``python
-m consumers.cli_worker`` (what the crash tests kill) all build one.

On SIGTERM or SIGINT it finishes the batch in hand, commits it with its checkpoint, and exits
0; a restart (or a SIGKILL and a restart) resumes from the checkpoint in SQLite, so every event
takes effect exactly once.

While it runs it serves its projections over NATS (``consumers.queryservice``) and publishes
a notification per changed aggregate after every commit (``consumers.feed``); both start after
the database is open and before the fold follows the log (so before ``READY=1``), and stop
after the last batch is committed.

Under systemd (``$NOTIFY_SOCKET`` set) it speaks the notify protocol (``consumers.notify``):
``READY=1`` once caught up with the log's head at start (and serving queries), ``STATUS=``,
``WATCHDOG=1`` while the fold loop is healthy, ``STOPPING=1`` on SIGTERM.

One worker per database: it holds ``<db>.lock`` while it runs, so a second one on the same
file exits 1 at once, naming the first (``DatabaseLocked``); the lock dies with the process,
SIGKILL included. A database folded from another stream is refused (``ForeignDatabase``);
``reset=True`` (``--reset``) drops the file's projection data and folds from seq 1 instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from consumers.connection import CONNECT_TIMEOUT, connect_store
from consumers.feed import ChangeFeed
from consumers.metrics import DEFAULT_METRICS_HOST, worker_metrics
from consumers.notify import supervise
from consumers.queryservice import QueryService
from consumers.reactors import Reactor, ReactorRunner, load_reactors
from eventstore import (
    DEFAULT_URL,
    EventStore,
    StreamSettings,
    cancel_and_wait,
    get_logger,
    load_upcasters,
    read_local_rules,
)
from projections import (
    Projection,
    ProjectionDB,
    Runner,
    RunnerSettings,
    load_config,
    load_projections,
)

__all__ = ["WORKER_PRODUCER", "Worker"]

log = get_logger("consumers.worker")

WORKER_PRODUCER = "projections-worker"


class Worker:
    """A projection worker: where the log is, which database it folds into, with which
    projections and runner settings (``config``: the file checked against the log's rules).

    ``run_until(stop)`` is the one way to run it. ``async with worker:`` connects it first
    (``worker.store`` is then open) and closes it on the way out; ``run_until`` outside one
    connects and closes by itself.
    """

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        stream: StreamSettings | None = None,
        db: str | Path = "./eventstore.db",
        projections: Sequence[Projection[Any]],
        config: str | Path | None = None,
        settings: RunnerSettings | None = None,
        reset: bool = False,
        producer: str = WORKER_PRODUCER,
        connect_timeout: float = CONNECT_TIMEOUT,
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_METRICS_HOST,
        reactors: Sequence[Reactor] = (),
        creds: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.url = url
        self.creds, self.tls_ca = creds, tls_ca  # a secured server (ConnectSettings)
        self.reactors = list(reactors)  # run beside the projections (consumers.reactors)
        self.stream = stream or StreamSettings()
        self.db = Path(db)
        self.projections = list(projections)
        self.config = config
        self._local_rules = read_local_rules(config)  # a broken file: before connecting
        self.upcasters = load_upcasters(config)  # [upcasters] modules, imported before folding
        self.settings = settings
        self.reset = reset
        self.producer = producer
        self.connect_timeout = connect_timeout
        self.metrics_port, self.metrics_host = metrics_port, metrics_host  # None: no metrics
        self.store: EventStore | None = None
        self.runner: Runner | None = None
        self.log = log.bind(db=str(self.db), stream=self.stream.name)

    @classmethod
    def from_config(
        cls,
        *,
        url: str = DEFAULT_URL,
        stream: StreamSettings | None = None,
        db: str | Path = "./eventstore.db",
        config: str | Path | None = None,
        projections: Sequence[str] = (),
        reset: bool = False,
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_METRICS_HOST,
        reactors: Sequence[str] = (),
        creds: str | None = None,
        tls_ca: str | None = None,
    ) -> Worker:
        """The worker a config file (``config``, else ``EVENTSTORE_CONFIG``, else none) and
        these options describe: its ``[projections]`` load list plus
        ``projections`` (names or ``module:object``), its runner settings.

        A broken config or an unknown projection is a ``ConfigError`` here, before anything
        connects."""
        tables = load_config(config)
        return cls(
            url=url,
            stream=stream,
            db=db,
            projections=load_projections(projections, tables),
            config=config,
            settings=tables.runner_settings(),
            reset=reset,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            reactors=load_reactors(reactors),
            creds=creds,
            tls_ca=tls_ca,
        )

    async def __aenter__(self) -> Worker:
        self.store = await connect_store(
            self.url,
            producer=self.producer,
            stream=self.stream,
            timeout=self.connect_timeout,
            creds=self.creds,
            tls_ca=self.tls_ca,
        )
        try:
            if self._local_rules is not None:
                self._local_rules.check(self.store.rules)
        except BaseException:
            await self.store.close()
            self.store = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store, self.store = self.store, None
        if store is not None:
            await store.close()

    async def run_until(
        self, stop: asyncio.Event, *, on_ready: Callable[[Runner], None] | None = None
    ) -> int:
        """Fold the log into the database until ``stop`` is set (finishing and committing the
        batch in hand); returns the final checkpoint. ``on_ready`` is called once the worker
        has opened its database and is about to follow the log."""
        if self.store is None:
            async with self:
                return await self.run_until(stop, on_ready=on_ready)
        store = self.store
        async with await ProjectionDB.open(self.db, lock=True) as db:
            runner = Runner(store, db, self.projections, settings=self.settings)
            self.runner = runner
            await runner.open(reset=self.reset)
            head = await store.head()
            self.log.info(
                "worker ready",
                projections=[p.name for p in self.projections],
                checkpoint=runner.checkpoint,
                head=head,
            )
            service = QueryService(store, runner)
            feed = ChangeFeed(store, runner)
            await service.start()
            feed.worker = service.id
            try:
                await feed.start()  # re-publishes what a crash kept from subscribers
            except BaseException:
                await service.stop()
                raise
            if on_ready is not None:
                on_ready(runner)
            task = asyncio.create_task(runner.run(follow=True))
            reacting = [asyncio.create_task(ReactorRunner(store, r).run_until(stop))
                        for r in self.reactors]  # fmt: skip
            stopper = asyncio.create_task(stop.wait())
            try:
                async with (
                    supervise(runner, head=head) as systemd,  # no-op without NOTIFY_SOCKET
                    worker_metrics(runner, self.db, self.metrics_port, self.metrics_host),
                ):
                    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if not task.done():
                        systemd.stopping()
                        runner.stop()
                    checkpoint = await task
            finally:
                stopper.cancel()
                if reacting:  # they end (checkpoint written) once stop is set; else, now
                    stop.set()
                    _, late = await asyncio.wait(reacting, timeout=10)
                    await cancel_and_wait(*late)
                    await asyncio.gather(*reacting, return_exceptions=True)
                if not task.done():
                    await cancel_and_wait(task)
                await feed.stop()
                await service.stop()
            self.log.info("worker stopped", checkpoint=checkpoint, applied=runner.events_applied)
            return checkpoint
