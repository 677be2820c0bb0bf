"""The floor of purpose_bus's design: one AnyIO memory object stream per
subscriber, a dict from topic to send streams, ``send_nowait`` to each.

A full stream (the slow scenario's bound) raises ``WouldBlock``, caught: the
incoming event is dropped, terminal or not. From threads: AnyIO's own way,
``anyio.from_thread.run_sync`` per event (a round trip to the loop each).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._base import Adapter, Handler, Pace


class RawAnyio(Adapter):
    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.routes: dict[str, list[MemoryObjectSendStream[Any]]] = {}
        self.buffer: float = math.inf
        self.dropped = 0

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.routes = {}
        self.buffer = math.inf if buffer is None else buffer
        try:
            yield
        finally:
            for streams in self.routes.values():
                for send in streams:
                    send.close()

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        send, receive = anyio.create_memory_object_stream[Any](self.buffer)
        self.routes.setdefault(topic, []).append(send)
        await tg.start(self._consume, receive, handler, pace)

    @staticmethod
    async def _consume(
        receive: MemoryObjectReceiveStream[Any],
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
                    await anyio.sleep(pace.seconds)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        send, receive = anyio.create_memory_object_stream[Any](self.buffer)
        self.routes.setdefault(topic, []).append(send)
        stack.callback(receive.close)

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        routes = self.routes
        would_block = anyio.WouldBlock

        def emit(event: Any) -> None:
            for send in routes.get(topic, ()):
                try:
                    send.send_nowait(event)
                except would_block:
                    self.dropped += 1

        return emit

    def thread_emitter(self, topic: str) -> Callable[[Any], None] | None:
        token = anyio.lowlevel.current_token()
        emit = self.emitter(topic)
        run_sync = anyio.from_thread.run_sync

        def emit_from_thread(event: Any) -> None:
            run_sync(emit, event, token=token)

        return emit_from_thread


def make(name: str, backend: str) -> Adapter:
    return RawAnyio(name, backend)
