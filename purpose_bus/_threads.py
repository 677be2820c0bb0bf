"""The hand-off from other threads to the bus's event loop.

A thread that emits checks and guards the event itself, then appends it to a
bounded FIFO queue and, if the loop side is asleep, wakes it by writing one byte
to a socket pair (a backend-neutral wake-up: the loop side waits with
:func:`anyio.wait_readable`, which works on asyncio, uvloop and trio, and
nothing that could raise runs inside the event loop's own callbacks). One task
on the loop drains the queue in batches: one wake-up for many events.

When the queue is full, the emitting thread blocks until there is room
(backpressure for threads, never for the loop). Closing delivers everything
already queued, then releases blocked threads with :exc:`BusClosed`.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ._events import Event
from ._exceptions import BusClosed

if TYPE_CHECKING:
    from ._bus import EventBus

__all__ = ["ThreadHandoff"]

logger = logging.getLogger("purpose_bus")

_Item = tuple[Event, "Future[Event | None] | None"]


class ThreadHandoff:
    """A bounded queue of events from other threads, drained on the loop."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._size = size
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._sleeping = False
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._done: anyio.Event | None = None  # made on the loop, in open()

    # -- the calling thread ---------------------------------------------------

    def put(self, event: Event) -> None:
        """Check, guard and queue *event* without waiting for the loop; block
        while the queue is full.

        :raises TypeError: if *event* is not an Event
        :raises BusClosed: if the bus is not open, or closes while this waits
        :raises EventRejected: if a strict bus's guards refuse it
        """
        if self._accepted_here(event):
            self._enqueue((event, None))

    def publish(self, event: Event) -> Event | None:
        """Queue *event*, wait until the loop has published it and return what
        :meth:`EventBus.publish` returned (raising what it raised)."""
        if not self._accepted_here(event):
            return None
        future: Future[Event | None] = Future()
        self._enqueue((event, future))
        return future.result()

    def _accepted_here(self, event: Event) -> bool:
        bus = self._bus
        bus._check(event)
        return bus._guarded(event) is not None

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            while len(self._queue) >= self._size and not self._closed:
                self._not_full.wait()
            if self._closed:
                raise BusClosed("the bus is closed")
            self._queue.append(item)
            wake = self._sleeping
            self._sleeping = False
        if wake:
            self._wake()

    def _wake(self) -> None:
        writer = self._writer
        if writer is not None:
            try:
                writer.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # a wake-up is already pending, or the bus is closing

    # -- the loop -------------------------------------------------------------

    def open(self, task_group: TaskGroup) -> None:
        """Start draining in *task_group* (called by the bus as it opens)."""
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._done = anyio.Event()
        task_group.start_soon(self._drain, name="purpose_bus thread hand-off")

    async def close(self) -> None:
        """Deliver what is queued, release blocked threads with
        :exc:`BusClosed`, stop draining. Called by the bus as it closes."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()
        if self._done is None:
            return
        self._wake()
        self._bus._force_room()
        await self._done.wait()
        assert self._reader is not None and self._writer is not None
        self._reader.close()
        self._writer.close()

    async def _drain(self) -> None:
        assert self._reader is not None and self._done is not None
        try:
            while True:
                with self._lock:
                    batch = self._queue
                    if not batch:
                        if self._closed:
                            return
                        self._sleeping = True
                    else:
                        self._queue = deque()
                        self._not_full.notify_all()
                if batch:
                    await self._deliver(batch)
                else:
                    await anyio.wait_readable(self._reader)
                    self._consume_wakeups()
        finally:
            self._done.set()

    def _consume_wakeups(self) -> None:
        assert self._reader is not None
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    async def _deliver(self, batch: deque[_Item]) -> None:
        publish = self._bus._publish_handed_off
        for event, future in batch:
            if future is None:
                try:
                    await publish(event, strict=False)
                except Exception:
                    logger.exception(
                        "could not deliver a %s event from a thread", event.kind
                    )
                continue
            try:
                future.set_result(await publish(event, strict=True))
            except Exception as exc:
                future.set_exception(exc)
