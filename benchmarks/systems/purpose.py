"""purpose_bus: an ``EventBus`` with a ``subscribe(run_id=topic)`` per
subscriber, ``async for`` over it in the subscriber's task; ``bus.emit``.

The ``-batch`` systems consume with ``async for batch in sub.batches()`` (one
cancellation check per batch of ready events) and call the handler for each
event of the batch; everything else is the same."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from purpose_bus import Event, EventBus, Subscription

from ._base import Adapter, Handler, Pace

#: "Large enough that nothing is dropped" (the sender's stream is unbounded).
UNBOUNDED = 1 << 40


class PurposeBus(Adapter):
    overflow = "DROP_OLDEST (terminal events never dropped)"

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.bus: EventBus | None = None

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        async with EventBus(buffer_size=buffer or UNBOUNDED) as bus:
            self.bus = bus
            yield
        self.bus = None

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        await tg.start(self._consume, topic, handler, pace)

    async def _consume(
        self,
        topic: str,
        handler: Handler,
        pace: Pace | None,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        assert self.bus is not None
        async with self.bus.subscribe(run_id=topic) as sub:
            task_status.started()
            await self._deliver(sub, handler, pace)

    async def _deliver(
        self, sub: Subscription[Event], handler: Handler, pace: Pace | None
    ) -> None:
        """Hand *sub*'s events to *handler* until it says stop: ``async for``."""
        async for event in sub:
            if handler(event):
                return
            if pace is not None and pace.active:
                await anyio.sleep(pace.seconds)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        assert self.bus is not None
        await stack.enter_async_context(self.bus.subscribe(run_id=topic))

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        assert self.bus is not None
        return self.bus.emit

    def thread_emitter(self, topic: str) -> Callable[[Any], None] | None:
        assert self.bus is not None
        return self.bus.emit  # thread-safe: the bus's own hand-off


class PurposeBusBatch(PurposeBus):
    """Consumes a batch of ready events per ``receive_batch`` call."""

    async def _deliver(
        self, sub: Subscription[Event], handler: Handler, pace: Pace | None
    ) -> None:
        async for batch in sub.batches():
            for event in batch:
                if handler(event):
                    return
                if pace is not None and pace.active:
                    await anyio.sleep(pace.seconds)


def make(name: str, backend: str) -> Adapter:
    if name.endswith("-batch"):
        return PurposeBusBatch(name, backend)
    return PurposeBus(name, backend)
