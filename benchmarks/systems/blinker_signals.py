"""blinker: one ``Signal``; each subscriber connects a receiver for its topic
(``connect(receiver, sender=topic)``, blinker's per-sender routing) that hands
the event to the subscriber's own ``asyncio.Queue``, consumed in its task.

- ``blinker-sync``: ``signal.send(topic, event=...)`` to sync receivers doing
  ``put_nowait`` (a full queue drops the incoming event);
- ``blinker-async``: ``await signal.send_async(topic, event=...)`` to async
  receivers doing ``await queue.put`` (a full queue makes the publisher wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from anyio.abc import TaskGroup
from blinker import Signal

from ._base import Adapter, Handler, Pace, consume_queue


class BlinkerSync(Adapter):
    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.signal = Signal()
        self.maxsize = 0
        self.dropped = 0

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.signal = Signal()
        self.maxsize = buffer or 0
        try:
            yield
        finally:
            self.signal.receivers.clear()

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(self.maxsize)
        self.signal.connect(self._receiver(queue), sender=topic, weak=False)
        tg.start_soon(consume_queue, queue.get, handler, pace)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(self.maxsize)
        self.signal.connect(self._receiver(queue), sender=topic, weak=False)

    def _receiver(self, queue: asyncio.Queue[Any]) -> Callable[..., Any]:
        put = queue.put_nowait
        full = asyncio.QueueFull

        def receive(sender: Any, event: Any) -> None:
            try:
                put(event)
            except full:
                self.dropped += 1

        return receive

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        send = self.signal.send

        def emit(event: Any) -> None:
            send(topic, event=event)

        return emit


class BlinkerAsync(BlinkerSync):
    async_emit = True
    overflow = "publisher waits (await queue.put)"

    def _receiver(self, queue: asyncio.Queue[Any]) -> Callable[..., Any]:
        put = queue.put

        async def receive(sender: Any, event: Any) -> None:
            await put(event)

        return receive

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        send_async = self.signal.send_async

        async def emit(event: Any) -> None:
            await send_async(topic, event=event)

        return emit


def make(name: str, backend: str) -> Adapter:
    return (
        BlinkerAsync(name, backend) if "async" in name else BlinkerSync(name, backend)
    )
