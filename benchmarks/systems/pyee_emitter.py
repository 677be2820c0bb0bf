"""pyee: one ``AsyncIOEventEmitter``; each subscriber registers an async
handler for its topic (``ee.on(topic, handler)``); ``ee.emit(topic, event)``
schedules every handler call as its own task (pyee's model: there is no
per-subscriber buffer, so no bound and no consumer task to be slow)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from anyio.abc import TaskGroup
from pyee.asyncio import AsyncIOEventEmitter

from ._base import Adapter, Handler, Pace


class PyeeEmitter(Adapter):
    overflow = "none: a task per delivery (a slow handler runs concurrently)"

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.ee: AsyncIOEventEmitter | None = None

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.ee = AsyncIOEventEmitter()
        try:
            yield
        finally:
            self.ee.remove_all_listeners()
            self.ee = None

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        assert self.ee is not None

        async def on_event(event: Any) -> None:
            handler(event)
            if pace is not None and pace.active:
                await asyncio.sleep(pace.seconds)

        self.ee.on(topic, on_event)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        await self.subscribe(None, topic, _ignore)  # type: ignore[arg-type]

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        assert self.ee is not None
        emit_ = self.ee.emit

        def emit(event: Any) -> None:
            emit_(topic, event)

        return emit


def _ignore(event: Any) -> bool:
    return False


def make(name: str, backend: str) -> Adapter:
    return PyeeEmitter(name, backend)
