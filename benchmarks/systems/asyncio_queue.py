"""Raw asyncio fan-out: one ``asyncio.Queue`` per subscriber, a dict from topic
to queues, ``put_nowait`` to each (``QueueFull`` caught: the incoming event is
dropped). From threads: ``loop.call_soon_threadsafe`` per event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from anyio.abc import TaskGroup

from ._base import Adapter, Handler, Pace, consume_queue


class AsyncioQueue(Adapter):
    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.routes: dict[str, list[asyncio.Queue[Any]]] = {}
        self.maxsize = 0
        self.dropped = 0

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.routes = {}
        self.maxsize = buffer or 0
        yield

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(self.maxsize)
        self.routes.setdefault(topic, []).append(queue)
        tg.start_soon(consume_queue, queue.get, handler, pace)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(self.maxsize)
        self.routes.setdefault(topic, []).append(queue)

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        routes = self.routes
        full = asyncio.QueueFull

        def emit(event: Any) -> None:
            for queue in routes.get(topic, ()):
                try:
                    queue.put_nowait(event)
                except full:
                    self.dropped += 1

        return emit


def make(name: str, backend: str) -> Adapter:
    return AsyncioQueue(name, backend)
