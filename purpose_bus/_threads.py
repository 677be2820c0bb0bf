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
from typing import TYPE_CHECKING, TypeVar, cast

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint

from ._events import Event
from ._exceptions import BusClosed

if TYPE_CHECKING:
    from ._bus import BusSeam

__all__ = ["ThreadHandoff"]

logger = logging.getLogger("purpose_bus")

E = TypeVar("E", bound=Event)

_Item = tuple[Event, "Future[Event | None] | None"]
#: The drain yields to the scheduler once per this many events of a batch.
_YIELD_EVERY = 256


class ThreadHandoff:
    """A bounded queue of events from other threads, drained on the loop."""

    def __init__(self, seam: BusSeam, size: int) -> None:
        self._seam = seam
        self._size = size
        self._queue: deque[_Item] = deque()  # filled by threads, under the lock
        self._pending: deque[_Item] = deque()  # being delivered, on the loop
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

    def publish(self, event: E) -> E | None:
        """Queue *event*, wait until the loop has published it and return what
        :meth:`EventBus.publish` returned (raising what it raised)."""
        if not self._accepted_here(event):
            return None
        future: Future[Event | None] = Future()
        self._enqueue((event, future))
        return cast("E | None", future.result())  # the stamped copy of *event*

    def _accepted_here(self, event: Event) -> bool:
        return self._seam.admit_from_thread(event)

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
        :exc:`BusClosed`, stop draining. Called by the bus as it closes.

        If the drain task was cancelled with events still queued (its task group
        was cancelled from outside), they are delivered here, synchronously."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()
        if self._done is None:
            return
        self._wake()
        self._seam.release_waiters()
        await self._done.wait()
        with self._lock:
            self._pending.extend(self._queue)
            self._queue.clear()
        while self._pending:
            self._deliver_now(*self._pending.popleft())
        assert self._reader is not None
        assert self._writer is not None
        self._reader.close()
        self._writer.close()

    async def _drain(self) -> None:
        assert self._reader is not None
        assert self._done is not None
        try:
            while True:
                with self._lock:
                    if self._queue:
                        self._pending, self._queue = self._queue, self._pending
                        self._not_full.notify_all()
                    elif self._closed:
                        return
                    else:
                        self._sleeping = True
                if self._pending:
                    await self._deliver()
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

    async def _deliver(self) -> None:
        """Deliver the pending batch in order. An item leaves ``_pending`` only
        once it is delivered, so a cancelled drain leaves the rest to close()."""
        seam = self._seam
        pending = self._pending
        count = 0
        while pending:
            count += 1
            if count % _YIELD_EVERY == 0:
                await checkpoint()
            event, future = pending[0]
            if future is None and not seam.may_wait():
                self._deliver_now(event, None)  # nothing can make it wait
            else:
                try:
                    result = await seam.deliver_handed_off(
                        event, strict=future is not None
                    )
                except Exception as exc:
                    self._failed(event, future, exc)
                else:
                    if future is not None:
                        future.set_result(result)
            pending.popleft()

    def _deliver_now(self, event: Event, future: Future[Event | None] | None) -> None:
        try:
            result = self._seam.deliver_now(event, strict=future is not None)
        except Exception as exc:
            self._failed(event, future, exc)
        else:
            if future is not None:
                future.set_result(result)

    @staticmethod
    def _failed(
        event: Event, future: Future[Event | None] | None, exc: Exception
    ) -> None:
        if future is None:
            logger.error("could not deliver a %s event", event.kind, exc_info=exc)
        else:
            future.set_exception(exc)
