"""The seed: the old bus, ``purpose_agent.runtime.event_bus.EventBus``,
benchmarked unmodified from its runnable copy (added to ``sys.path`` here only).

Each subscriber iterates ``bus.subscribe(run_id=topic)`` (an async generator
over a bounded ``asyncio.Queue``, which registers when first iterated and polls
with ``asyncio.wait_for(queue.get(), 0.5)``); the publisher calls ``bus.emit``.
From threads: ``bus.emit`` directly, as its docstring says it is thread-safe.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anyio.abc import TaskGroup

from ._base import Adapter, Handler, Pace

# The seed lies in shared/, beside the repository root (PURPOSE_BUS_SEED overrides).
SEED = Path(
    os.environ.get(
        "PURPOSE_BUS_SEED",
        Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "runnable",
    )
)
if str(SEED) not in sys.path:
    sys.path.append(str(SEED))

from purpose_agent.runtime.event_bus import EventBus  # noqa: E402
from purpose_agent.runtime.events import EventKind, PAEvent  # noqa: E402


class SeedBus(Adapter):
    overflow = "drop newest; a terminal event evicts the oldest"

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.bus: EventBus | None = None

    def make_events(
        self, topic: str, count: int, *, lane: str = "main", terminal: bool = False
    ) -> list[Any]:
        events = [
            PAEvent(
                kind=EventKind.TOKEN, payload={"text": "x"}, run_id=topic, lane_id=lane
            )
            for _ in range(count)
        ]
        if terminal:
            events.append(
                PAEvent(kind=EventKind.RUN_FINISHED, run_id=topic, lane_id=lane)
            )
        return events

    def is_terminal(self, event: Any) -> bool:
        return bool(event.is_terminal)

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.bus = EventBus(max_queue_size=buffer or 0)  # 0: an unbounded Queue
        try:
            yield
        finally:
            self.bus.close()
            self.bus = None

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        bus = self.bus
        assert bus is not None
        registered = bus.subscriber_count + 1
        tg.start_soon(self._consume, bus, topic, handler, pace)
        while bus.subscriber_count < registered:  # it registers when iterated
            await asyncio.sleep(0)

    @staticmethod
    async def _consume(
        bus: EventBus, topic: str, handler: Handler, pace: Pace | None
    ) -> None:
        async for event in bus.subscribe(run_id=topic):
            if handler(event):
                return
            if pace is not None and pace.active:
                await asyncio.sleep(pace.seconds)

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        assert self.bus is not None
        return self.bus.emit

    def thread_emitter(self, topic: str) -> Callable[[Any], None] | None:
        assert self.bus is not None
        return self.bus.emit


def make(name: str, backend: str) -> Adapter:
    return SeedBus(name, backend)
