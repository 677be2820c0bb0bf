"""broadcaster: ``Broadcast("memory://")``; each subscriber holds
``broadcast.subscribe(topic)`` open and iterates it in its own task; the
publisher awaits ``broadcast.publish(topic, event)`` (the memory backend queues
it; a listener task copies it into every subscriber's unbounded queue)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from broadcaster import Broadcast

from ._base import Adapter, Handler, Pace


class BroadcasterMemory(Adapter):
    async_emit = True
    overflow = "unbounded queues (nothing dropped, memory grows)"

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.broadcast: Broadcast | None = None

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        async with Broadcast("memory://") as broadcast:
            self.broadcast = broadcast
            yield
        self.broadcast = None

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
        assert self.broadcast is not None
        async with self.broadcast.subscribe(topic) as subscriber:
            task_status.started()
            get = subscriber.get
            while True:
                event = (await get()).message
                if handler(event):
                    return
                if pace is not None and pace.active:
                    await anyio.sleep(pace.seconds)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        assert self.broadcast is not None
        await stack.enter_async_context(self.broadcast.subscribe(topic))

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        assert self.broadcast is not None
        publish = self.broadcast.publish

        async def emit(event: Any) -> None:
            await publish(topic, event)

        return emit


def make(name: str, backend: str) -> Adapter:
    return BroadcasterMemory(name, backend)
