"""aiopubsub: one ``Hub`` and ``Publisher``; each subscriber is a
``Subscriber`` subscribed to its topic's key and awaiting ``consume()`` in its
own task. Its queues are unbounded (no buffer bound to set)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiopubsub
from anyio.abc import TaskGroup

from ._base import Adapter, Handler, Pace, consume_queue


class AiopubsubHub(Adapter):
    overflow = "unbounded queues (nothing dropped, memory grows)"

    def __init__(self, name: str, backend: str) -> None:
        super().__init__(name, backend)
        self.hub = aiopubsub.Hub()
        self.publisher = aiopubsub.Publisher(self.hub, prefix=aiopubsub.Key("bench"))
        self.count = 0

    @asynccontextmanager
    async def open(self, *, buffer: int | None) -> AsyncIterator[None]:
        self.hub = aiopubsub.Hub()
        self.publisher = aiopubsub.Publisher(self.hub, prefix=aiopubsub.Key("bench"))
        yield

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        self.count += 1
        subscriber = aiopubsub.Subscriber(self.hub, f"subscriber-{self.count}")
        subscriber.subscribe(aiopubsub.Key("bench", topic))
        consume = subscriber.consume

        async def get() -> Any:
            _key, event = await consume()
            return event

        tg.start_soon(consume_queue, get, handler, pace)

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        self.count += 1
        subscriber = aiopubsub.Subscriber(self.hub, f"subscriber-{self.count}")
        subscriber.subscribe(aiopubsub.Key("bench", topic))
        stack.callback(subscriber.unsubscribe, aiopubsub.Key("bench", topic))

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        publish = self.publisher.publish

        def emit(event: Any) -> None:
            publish(topic, event)

        return emit


def make(name: str, backend: str) -> Adapter:
    return AiopubsubHub(name, backend)
