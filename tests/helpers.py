"""Small helpers the async test modules share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs

from purpose_bus import Event, MessageDelta, Subscription


def delta(text: str = "x", run_id: str = "r1", lane_id: str = "main") -> MessageDelta:
    """A message delta for *run_id* and *lane_id*."""
    return MessageDelta(run_id=run_id, lane_id=lane_id, text=text)


def drain(sub: Subscription[Event]) -> list[Event]:
    """Everything *sub* hands out without waiting (replayed events included)."""
    events: list[Event] = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return events


def texts(events: list[Event]) -> list[str]:
    """The texts of the message deltas among *events*."""
    return [e.text for e in events if isinstance(e, MessageDelta)]


async def cancelled_while_waiting(receive: Callable[[], Awaitable[object]]) -> bool:
    """Start *receive* (``sub.receive`` or ``sub.receive_batch``), wait until
    it blocks, cancel it; return whether it was still waiting (it must be)."""
    done: list[object] = []

    async def receiver() -> None:
        done.append(await receive())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    return not done


def unchecked(event: Event, **fields: object) -> Event:
    """A copy of *event* with *fields* set past admission (as only
    ``object.__setattr__`` on a frozen event can): for testing what the codec
    and the bus do with an event that was never checked."""
    copy = attrs.evolve(event)
    for name, value in fields.items():
        object.__setattr__(copy, name, value)
    return copy
