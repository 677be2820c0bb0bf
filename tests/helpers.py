"""Small helpers the async test modules share."""

from __future__ import annotations

import asyncio
import gc
import sys
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


async def all_tasks_blocked() -> None:
    """:func:`anyio.wait_all_tasks_blocked`, without its 0.1 s sleeps on asyncio:
    there it looks again after one scheduler round (``sleep(0)``) instead, so a
    test that waits for quiescence often costs microseconds, not 100 ms. On trio
    it is trio's own (exact) check."""
    try:
        this = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        await anyio.wait_all_tasks_blocked()
        return
    await asyncio.sleep(0)
    while True:
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]  # as anyio does
            if waiter is None or waiter.done():
                await asyncio.sleep(0)
                break
        else:
            return


async def cancelled_while_waiting(receive: Callable[[], Awaitable[object]]) -> bool:
    """Start *receive* (``sub.receive`` or ``sub.receive_batch``), wait until
    it blocks, cancel it; return whether it was still waiting (it must be)."""
    done: list[object] = []

    async def receiver() -> None:
        done.append(await receive())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await all_tasks_blocked()
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


def calls_made(action: Callable[[], object]) -> int:
    """How many Python and C function calls *action* makes: a count of the work
    done that, unlike a timing, is exact (for tests of what an operation's cost
    may grow with). The cyclic garbage collector is paused meanwhile, so the
    finalizers a collection might run are not counted: the same action in the
    same state always gives the same count."""
    count = 0

    def profile(frame: object, what: str, arg: object) -> None:
        nonlocal count
        if what in ("call", "c_call"):
            count += 1

    collecting = gc.isenabled()
    gc.disable()
    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
        if collecting:
            gc.enable()
    return count


def http_scope(
    path: str,
    hosts: list[bytes],
    server: tuple[str, int] | None = ("127.0.0.1", 8000),
    query: bytes = b"",
) -> dict[str, object]:
    """The ASGI scope of a ``GET`` of *path* (with the query string *query*)
    from a loopback client, with one ``Host`` header per item of *hosts*
    (none, one, or several)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", value) for value in hosts],
        "client": ("127.0.0.1", 50000),
        "server": server,
    }
