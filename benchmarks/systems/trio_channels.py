"""Raw trio fan-out: one trio memory channel per subscriber, a dict from topic
to send channels, ``send_nowait`` to each (``WouldBlock`` caught: the incoming
event is dropped). From threads: ``TrioToken.run_sync_soon`` per event."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio
from anyio.abc import TaskGroup, TaskStatus

from ._base import Adapter, Handler, Pace


class TrioChannels(Adapter):
    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.routes: dict[str, list[trio.MemorySendChannel[Any]]] = {}
        self.buffer: float = math.inf
        self.dropped = 0

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.routes = {}
        self.buffer = math.inf if buffer is None else buffer
        yield

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        send, receive = trio.open_memory_channel[Any](self.buffer)
        self.routes.setdefault(topic, []).append(send)
        await tg.start(self._consume, receive, handler, pace)

    @staticmethod
    async def _consume(
        receive: trio.MemoryReceiveChannel[Any],
        handler: Handler,
        pace: Pace | None,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        task_status.started()
        async with receive:
            async for event in receive:
                if handler(event):
                    return
                if pace is not None and pace.active:
                    await trio.sleep(pace.seconds)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        send, receive = trio.open_memory_channel[Any](self.buffer)
        self.routes.setdefault(topic, []).append(send)
        stack.callback(receive.close)

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        routes = self.routes
        would_block = trio.WouldBlock

        def emit(event: Any) -> None:
            for send in routes.get(topic, ()):
                try:
                    send.send_nowait(event)
                except would_block:
                    self.dropped += 1

        return emit

    def thread_emitter(self, topic: str) -> Callable[[Any], None] | None:
        token = trio.lowlevel.current_trio_token()
        emit = self.emitter(topic)

        def emit_from_thread(event: Any) -> None:
            token.run_sync_soon(emit, event)

        return emit_from_thread


def make(name: str, backend: str) -> Adapter:
    return TrioChannels(name, backend)
