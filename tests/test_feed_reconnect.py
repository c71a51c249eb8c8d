"""The change feed across drops of the worker's own connection (the server stays up): a real
worker process reaches the server through a TCP proxy the test cuts, discarding what it
holds, while a producer appends; a plain subscriber and a watcher, both connected straight to
the server, still end with every aggregate's final version (the watcher with every version
exactly once, in order), because a flush that completes on a new connection does not confirm
what the old one may have lost: the feed re-publishes the states past its confirmed mark."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from urllib.parse import urlsplit

from helpers_projections import start_worker, tail
from helpers_serving import wait_folded, wait_serving
from test_feed import subscribe, until
from test_watching import Seen, assert_exactly_once, collect, finals

from consumers import ProjectionClient, Watcher
from eventstore import AppendRequest, EventStore, NewEvent

AGGREGATES = 300


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream``; ``cut()`` aborts every connection at once
    (both sides, whatever is buffered discarded) and keeps accepting new ones. What the client
    sends is held ``hold`` seconds per chunk, as a slow network would, so a cut loses some."""

    def __init__(self, upstream: str, hold: float = 0.01) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 4222
        self.hold = hold
        self.server: asyncio.Server | None = None
        self.links: list[
            tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Task[None]]]
        ] = []
        self.cuts = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.transport.abort()
            return
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, self.hold)),
            asyncio.create_task(self._pipe(up_reader, writer, 0.0)),
        ]
        self.links.append((writer, up_writer, tasks))

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if hold:
                    await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def cut(self) -> None:
        links, self.links = self.links, []
        for client, upstream, tasks in links:
            client.transport.abort()
            upstream.transport.abort()
            for task in tasks:
                task.cancel()
        self.cuts += 1

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def produce(store: EventStore, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    r = 0
    while not stop.is_set():
        await store.append_many(
            AppendRequest("agent", f"a{rng.randrange(AGGREGATES)}", [NewEvent("E", {"r": r})])
            for _ in range(20)
        )
        r += 1
        await asyncio.sleep(0.005)


async def test_final_versions_survive_cuts_of_the_workers_connection(
    store: EventStore, tmp_path: Path
) -> None:
    """Six cuts of the worker's connection while appends go on (the last one as the producer
    stops, so the final versions of its last batches are what the old connection held): the
    plain subscriber ends with every aggregate's final version of the worker's SQLite, the
    watcher with versions 1..N of each exactly once, in order."""
    proxy = CuttableProxy(store.url)
    await proxy.start()
    db, log = tmp_path / "w.db", tmp_path / "w.log"
    nc, got = await subscribe(store.url, store.settings.name)
    proc = start_worker(proxy.url, store.settings, db, log)
    stop = asyncio.Event()
    writer: asyncio.Task[None] | None = None
    watching: asyncio.Task[None] | None = None
    ready: asyncio.Task[bool] | None = None
    try:
        for i in range(0, AGGREGATES, 3):  # a log already holding states, as the watch lists
            await store.append("agent", f"a{i}", NewEvent("E", {"r": -1}))
        await wait_folded(db, await store.head(), proc, log)
        await wait_serving(db, proc, log)
        watcher = Watcher(ProjectionClient(store), "entities")
        seen = Seen()
        watching = asyncio.create_task(collect(watcher.__aiter__(), seen))
        ready = asyncio.create_task(watcher.ready.wait())
        await asyncio.wait({ready, watching}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert watcher.ready.is_set(), watching.exception() if watching.done() else "no listing"
        writer = asyncio.create_task(produce(store, stop, seed=3))
        rng = random.Random(5)
        for k in range(6):
            await asyncio.sleep(rng.uniform(0.4, 0.9))
            assert proc.poll() is None, tail(log)
            if k == 5:
                stop.set()
            proxy.cut()
        await writer
        await wait_folded(db, await store.head(), proc, log)
        final = finals(db)
        assert len(final) > AGGREGATES * 0.9
        await until(
            lambda: all(v in got.versions()[k] for k, v in final.items()),
            "every final version reached the plain subscriber",
            timeout=60,
        )
        await until(lambda: seen.complete(final), "every final version watched", timeout=60)
        assert_exactly_once(seen, final)
        assert "re-published" in log.read_text(), tail(log)
    finally:
        stop.set()
        for task in (writer, watching, ready):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 20)
        await proxy.close()
        await nc.close()
