"""A live view: the current states a watch follows, held in memory (seed 004's L1 cache,
invalidated by event rather than by TTL).

``await ProjectionClient.view("entities", aggregate_type="agent")`` loads every matching
state (``list``) and keeps it current with a ``latest``-mode ``consumers.watching.Watcher``
in a task of its own: ``get`` is a dictionary lookup, never a request.

``seq`` is the watcher's floor: every change committed at or before ``seq`` to an aggregate
the view follows is in the view. So an aggregate whose state in the view has a lower seq did
not change between its seq and ``seq``, and one the view does not hold had no state at
``seq``. It moves with each notification that closes its commit for the view's filter (the
last one of its aggregate type in the batch, or of the whole batch for a view of every type:
with the one-event batches of a quiet stream, every notification), and with each heartbeat
(a commit that changed none of the view's aggregates moves it only then). It never moves
within a batch: a notification of one aggregate does not say that the batch's others arrived.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType

import structlog

from consumers.watching import DEFAULT_BUFFER, DEFAULT_PATIENCE, Key, Queries, Watcher
from eventstore import cancel_and_wait
from projections import StateRecord

__all__ = ["LiveView", "OnChange"]

log = structlog.get_logger("consumers.liveview")

OnChange = Callable[[StateRecord], Awaitable[None] | None]


class LiveView:
    """The current state of every aggregate a watch follows, in memory (``latest`` mode):
    ``get`` never touches the network; ``seq`` is the checkpoint it is known to reflect.
    ``on_change(record)`` (a function or a coroutine function) runs after each change is
    applied: invalidate a cache by event, not by TTL."""

    def __init__(
        self,
        client: Queries,
        projection: str,
        aggregate_type: str | None = None,
        *,
        on_change: OnChange | None = None,
        buffer: int = DEFAULT_BUFFER,
        patience: float = DEFAULT_PATIENCE,
    ) -> None:
        self.aggregate_type = aggregate_type
        self.on_change = on_change
        self.watcher = Watcher(
            client, projection, aggregate_type, latest=True, buffer=buffer, patience=patience
        )
        self.states: dict[Key, StateRecord] = {}
        self.error: BaseException | None = None  # why it stopped following, if it did
        self._task: asyncio.Task[None] | None = None

    @property
    def seq(self) -> int:
        """Every change up to this stream sequence is in the view (see the module doc)."""
        return self.watcher.floor

    async def start(self) -> LiveView:
        """Follow the feed; returns once the initial states are loaded (or raises why not)."""
        self._task = task = asyncio.create_task(self._follow())
        ready = asyncio.create_task(self.watcher.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await task  # raises what stopped it
        return self

    async def _follow(self) -> None:
        try:
            async for rec in self.watcher:
                self.states[rec.aggregate_type, rec.aggregate_id] = rec
                if self.on_change is not None:
                    result = self.on_change(rec)
                    if inspect.isawaitable(result):
                        await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            log.warning("live view stopped following", error=str(exc))
            raise

    def get(self, aggregate_id: str, aggregate_type: str | None = None) -> StateRecord | None:
        """The aggregate's current state as last notified (None: no state)."""
        kind = aggregate_type or self.aggregate_type
        if kind is None:
            raise ValueError("this view follows several aggregate types: name aggregate_type")
        return self.states.get((kind, aggregate_id))

    def __len__(self) -> int:
        return len(self.states)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def __aenter__(self) -> LiveView:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
