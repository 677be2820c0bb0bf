"""What every adapter provides, and the small pieces they share.

An adapter wraps one library so the scenarios can drive it the same way:

- ``open(buffer=...)``: an async context manager around one bus (or hub, or
  routing table); ``buffer`` is each subscriber's bound (``None``: large enough
  that nothing is dropped);
- ``subscribe(tg, topic, handler, pace=...)``: start one subscriber consuming
  in its own task in *tg* (or, for callback libraries, register its handler) and
  return once it is registered, so no event published afterwards can miss it;
  the subscriber calls ``handler(event)`` per event and stops when it returns
  true; with a :class:`Pace` it sleeps after each event while the pace is active;
- ``emitter(topic)``: the publisher's call, made once before timing; sync, or
  async when ``async_emit`` is set;
- ``thread_emitter(topic)``: a callable safe to call from another thread, made
  on the loop thread; ``None`` where the library has no way.

Events are built before timing by ``make_events``. Libraries without an event
type of their own carry :mod:`purpose_bus` event objects, so every system moves
the same objects and only the transport differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, ClassVar

from anyio.abc import TaskGroup

__all__ = ["Adapter", "Handler", "NotApplicable", "Pace", "purpose_events"]

#: A subscriber's per-event callback; returns true to stop consuming.
Handler = Callable[[Any], bool]


class NotApplicable(Exception):
    """Raised when a system cannot do a scenario (the reason is the message)."""


class Pace:
    """Makes a subscriber slow: it sleeps ``seconds`` after each event while
    ``active`` is true."""

    __slots__ = ("active", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = True


def purpose_events(
    topic: str, count: int, *, lane: str = "main", terminal: bool = False
) -> list[Any]:
    """*count* ``MessageDelta`` events of run *topic*, then a ``RunFinished`` if
    *terminal*: what the adapters without an event type of their own carry."""
    from purpose_bus import MessageDelta, RunFinished

    events: list[Any] = [
        MessageDelta(run_id=topic, lane_id=lane, text="x") for _ in range(count)
    ]
    if terminal:
        events.append(RunFinished(run_id=topic, lane_id=lane))
    return events


class Adapter:
    """The base: asyncio-only, sync emit, carries purpose_bus events."""

    #: Whether the publisher awaits ``emitter(topic)(event)``.
    async_emit: ClassVar[bool] = False
    #: Whether the library routes by topic (run id), so idle subscribers on
    #: other topics cost nothing; ``None`` or a reason string if it cannot.
    no_topics: ClassVar[str | None] = None
    #: How the system treats a full subscriber buffer (for the slow scenario).
    overflow: ClassVar[str] = "drop newest (raise on full, caught)"

    def __init__(self, name: str, backend: str) -> None:
        self.name = name
        self.backend = backend

    def make_events(
        self, topic: str, count: int, *, lane: str = "main", terminal: bool = False
    ) -> list[Any]:
        return purpose_events(topic, count, lane=lane, terminal=terminal)

    def is_terminal(self, event: Any) -> bool:
        return bool(event.terminal)

    def open(self, *, buffer: int | None) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def subscribe(
        self, tg: TaskGroup, topic: str, handler: Handler, *, pace: Pace | None = None
    ) -> None:
        raise NotImplementedError

    async def register(self, stack: AsyncExitStack, topic: str) -> None:
        """Register a subscriber for *topic* without consuming anything (for the
        memory scenario); undone when *stack* closes."""
        raise NotApplicable("a subscription exists only while it is consumed")

    def emitter(self, topic: str) -> Callable[[Any], Any]:
        raise NotImplementedError

    def thread_emitter(self, topic: str) -> Callable[[Any], None] | None:
        """By default, for asyncio libraries with a sync emit: schedule the emit
        on the loop with ``loop.call_soon_threadsafe`` (what asyncio offers)."""
        if self.backend != "asyncio" or self.async_emit:
            return None
        loop = asyncio.get_running_loop()
        emit = self.emitter(topic)

        def emit_from_thread(event: Any) -> None:
            loop.call_soon_threadsafe(emit, event)

        return emit_from_thread


async def consume_queue(
    get: Callable[[], Awaitable[Any]], handler: Handler, pace: Pace | None
) -> None:
    """The consumer loop over an asyncio queue's ``get``."""
    while True:
        event = await get()
        if handler(event):
            return
        if pace is not None and pace.active:
            await asyncio.sleep(pace.seconds)
