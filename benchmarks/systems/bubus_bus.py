"""bubus: an ``EventBus(parallel_handlers=True)``; each subscriber registers an
async handler for the event class (``bus.on(BenchDelta, handler)``), run as its
own task per event; the publisher calls ``bus.dispatch(event)``.

bubus processes events one at a time (every handler of an event finishes
before the next event starts) and refuses a dispatch with ``RuntimeError`` once
100 events are pending: the publisher then yields and retries. It routes by
event type only, so the idle-subscribers scenario is n/a.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from anyio.abc import TaskGroup
from bubus import BaseEvent, EventBus

from ._base import Adapter, Handler, Pace


class BenchDelta(BaseEvent[None]):
    run_id: str = ""
    lane_id: str = "main"
    text: str = "x"
    terminal: bool = False


_names = itertools.count(1)


class BubusBus(Adapter):
    async_emit = True
    no_topics = "routes by event type only"
    overflow = "publisher waits (dispatch refused at 100 pending, retried)"

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.bus: EventBus | None = None

    def make_events(
        self, topic: str, count: int, *, lane: str = "main", terminal: bool = False
    ) -> list[Any]:
        events = [BenchDelta(run_id=topic, lane_id=lane) for _ in range(count)]
        if terminal:
            events.append(BenchDelta(run_id=topic, lane_id=lane, terminal=True))
        return events

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.bus = EventBus(name=f"bench_{next(_names)}", parallel_handlers=True)
        try:
            yield
        finally:
            await self.bus.stop(clear=True)
            self.bus = None

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        assert self.bus is not None

        async def on_event(event: Any) -> None:
            handler(event)
            if pace is not None and pace.active:
                await asyncio.sleep(pace.seconds)

        on_event.__name__ = on_event.__qualname__ = f"subscriber_{next(_names)}"
        self.bus.on(BenchDelta, on_event)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        await self.subscribe(None, topic, _ignore)  # type: ignore[arg-type]

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        assert self.bus is not None
        dispatch = self.bus.dispatch

        async def emit(event: Any) -> None:
            while True:
                try:
                    dispatch(event)
                except RuntimeError as exc:
                    if "capacity" not in str(exc):
                        raise
                    await asyncio.sleep(0)
                else:
                    return

        return emit


def _ignore(event: Any) -> bool:
    return False


def make(name: str, backend: str) -> Adapter:
    return BubusBus(name, backend)
