"""A subscriber's handle: an async context manager and async iterator over the
events that match its filter."""

from __future__ import annotations

import sys
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled, current_token

from ._events import Event
from ._filters import EventFilter
from ._overflow import Overflow
from ._sender import Gap, OverflowSender, take_up_to
from ._statistics import SubscriptionStatistics

if TYPE_CHECKING:
    from ._bus import EventBus

__all__ = ["YIELD_INTERVAL", "Subscription", "wrong_thread"]

E_co = TypeVar("E_co", bound=Event, covariant=True)
T = TypeVar("T")

#: A receive that finds events buffered hands them out without a scheduler round
#: trip, but yields to the scheduler before it hands out more than this many
#: events since its last yield (counting :meth:`Subscription.receive` and
#: :meth:`Subscription.receive_batch` alike). A burst of fewer events than this
#: is drained in one turn, so a subscriber keeps up with a publisher that yields
#: once per burst (``publish`` yields every 64).
YIELD_INTERVAL = 1024
#: How many replayed events are read from history at a time.
_READ_AHEAD = 64


def _cancellation_check() -> Callable[[], Awaitable[None]]:
    """The cheapest public way to check for cancellation on the running backend:
    trio's own ``checkpoint_if_cancelled`` (three times cheaper than going through
    AnyIO's backend dispatch), else the running AnyIO backend's own (the backend
    class from :func:`anyio.lowlevel.current_token`, which skips AnyIO's lookup
    of the backend on every call)."""
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return trio.lowlevel.checkpoint_if_cancelled  # type: ignore[no-any-return]
    backend = current_token().backend_class
    check = _checks.get(backend)
    if check is None:  # one bound method per backend, shared by subscriptions
        check = _checks[backend] = backend.checkpoint_if_cancelled
    return check


_checks: dict[type, Callable[[], Awaitable[None]]] = {}


_get_ident = threading.get_ident


def wrong_thread(action: str) -> str:
    """The message of the :exc:`RuntimeError` for *action* done off the bus's
    event loop thread."""
    return (
        f"{action} must be called on the event loop the bus runs on (the "
        "thread that entered 'async with EventBus()'); from other threads, "
        "emit with bus.emit() or bus.publish_from_thread(), and subscribe on "
        "the bus's loop"
    )


def _check_max_items(max_items: int) -> None:
    if isinstance(max_items, bool) or not isinstance(max_items, int):
        raise TypeError(f"max_items must be an int, not {type(max_items).__name__}")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, not {max_items}")


class Subscription(Generic[E_co]):
    """The events of one bus that match one filter, in offset order, each at most
    once, as they are accepted; made by :meth:`EventBus.subscribe`.

    Use it as ``async with bus.subscribe(...) as sub:``: it is registered when
    the block is entered (every matching event accepted from then on is delivered
    or counted as dropped) and unregistered at once when the block is left,
    however it is left. An entered subscription that is never closed warns with
    :exc:`ResourceWarning` when it is garbage collected.

    Iteration (or :meth:`receive`) ends with the buffered events consumed when:
    the bus closes; the subscription is scoped to exactly one run and that run's
    terminal event has been accepted (after it is delivered, if it matches the
    filter; at once if the run had already finished and there is nothing left
    to replay). :meth:`close` ends it at once, discarding what is buffered.
    """

    __slots__ = (
        "_after",
        "_buffer",
        "_bus",
        "_cancelled_check",
        "_closed",
        "_entered",
        "_filter",
        "_name",
        "_read_ahead",
        "_replay",
        "_replay_gap",
        "_streak",
        "_thread",
        "cursor",
        "replaying",
    )

    def __init__(
        self,
        bus: EventBus,
        flt: EventFilter,
        *,
        buffer_size: int,
        overflow: Overflow,
        gap_events: bool,
        replay: bool,
        after: int | None,
        name: str,
    ) -> None:
        self._bus = bus
        self._filter = flt
        self._buffer = OverflowSender(buffer_size, overflow, gap_events)
        self._replay = replay
        self._after = after
        self._name = name
        self._entered = False
        self._closed = False
        self._streak = 0
        # The thread that may receive: the one that made it until it is
        # entered (on the bus's loop, which it checks), then the loop's.
        self._thread = _get_ident()
        self._cancelled_check: Callable[[], Awaitable[None]] = checkpoint_if_cancelled
        # Replay state: a cursor (the offset last read from history), the events
        # read ahead and the losses met while replaying.
        self.replaying = False
        self.cursor = 0
        self._read_ahead: deque[Event] | None = None  # made when replay reads
        self._replay_gap: Gap | None = None

    @property
    def name(self) -> str:
        """The name given to :meth:`EventBus.subscribe`, or a generated one."""
        return self._name

    @property
    def filter(self) -> EventFilter:
        """The filter this subscription matches events with."""
        return self._filter

    @property
    def sender(self) -> OverflowSender:
        """The buffer the bus delivers live events into (internal)."""
        return self._buffer

    @property
    def wants_replay(self) -> tuple[bool, int | None]:
        """``(replay, after)`` as given to :meth:`EventBus.subscribe` (internal)."""
        return self._replay, self._after

    # -- the context manager --------------------------------------------------

    async def __aenter__(self) -> Subscription[E_co]:
        """Register with the bus. A cancellation point: entered in a cancelled
        scope, it raises the cancellation, registers nothing and closes the
        subscription (as a failed entry always does).

        :raises BusClosed: if the bus is not open (the subscription is closed)
        :raises RuntimeError: if this subscription was entered or closed before,
            or if this is not the bus's event loop thread (the subscription is
            closed)
        """
        if self._entered or self._closed:
            raise RuntimeError("a subscription can be entered only once")
        try:
            self._bus._check_loop("entering a subscription")
            await checkpoint_if_cancelled()
            self._bus._register(self)
        except BaseException:
            self.close()
            raise
        self._entered = True
        self._thread = _get_ident()
        self._cancelled_check = _cancellation_check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Unregister at once and discard what is still buffered (counted as
        dropped). Afterwards :meth:`receive` raises
        :exc:`anyio.ClosedResourceError`; a task waiting in :meth:`receive` is
        woken and raises it. Idempotent; safe before entering.

        :raises RuntimeError: if the subscription was entered and this is not
            the bus's event loop thread (nothing is changed)
        """
        if self._closed:
            return
        if self._entered and _get_ident() != self._thread:
            raise RuntimeError(wrong_thread("close()"))
        self._closed = True
        if self._read_ahead:
            self._buffer.dropped += len(self._read_ahead)
            self._read_ahead.clear()
        self._replay_gap = None
        self.replaying = False
        self._buffer.discard()
        if self._entered:
            self._bus._unregister(self)

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if self._entered:
            warnings.warn(
                f"subscription {self._name!r} was never closed: leave its "
                "'async with' block or call close()",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
        # Never entered, or leaked: close the streams so they do not warn too.
        self._buffer.discard()

    # -- receiving ------------------------------------------------------------

    def receive_nowait(self) -> E_co:
        """Return the next event without waiting.

        :raises anyio.WouldBlock: if no event is ready
        :raises anyio.EndOfStream: if the subscription has ended and its buffer
            is drained
        :raises anyio.ClosedResourceError: after :meth:`close`
        :raises RuntimeError: if called from a thread (or event loop) other
            than the bus's
        """
        if _get_ident() != self._thread:
            raise RuntimeError(wrong_thread("receiving"))
        if self.replaying:
            return self._take_replayed()  # type: ignore[return-value]
        return self._buffer.take()  # type: ignore[return-value]

    async def receive(self) -> E_co:
        """Return the next event, waiting for one if none is buffered.

        Always a cancellation point. When events are buffered it returns without
        a scheduler round trip, but it yields to the scheduler at least once in
        every :data:`YIELD_INTERVAL` (1024) calls, so a busy subscriber cannot
        starve the loop, yet drains a burst of fewer events in one turn. When
        nothing is buffered it yields once and looks again before it waits (as
        AnyIO's own ``receive`` yields first): an event that a task ready to
        run emits meanwhile is taken without a wake-up. Cancelled while waiting
        or in that yield, it leaves the subscription unchanged: no event is
        lost.

        :raises anyio.EndOfStream: when the subscription has ended (see the class
            docstring) and its buffer is drained
        :raises anyio.ClosedResourceError: after :meth:`close`, also in a task
            that was waiting when another one closed it
        :raises RuntimeError: if called from a thread (or event loop) other
            than the bus's
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise anyio.EndOfStream from None

    def __aiter__(self) -> Subscription[E_co]:
        return self

    async def __anext__(self) -> E_co:
        # The logic of receive() lives here: one coroutine per event when iterating.
        streak = self._streak + 1
        try:
            if streak < YIELD_INTERVAL:
                self._streak = streak
                await self._cancelled_check()
            else:
                self._streak = 0
                await checkpoint()
        except RuntimeError as exc:  # trio's own, from a foreign thread
            raise self._foreign(exc) from exc
        try:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                return await self._when_ready(self.receive_nowait)
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive_batch(self, max_items: int = YIELD_INTERVAL) -> list[E_co]:
        """Return every event that is ready, up to *max_items* (and up to
        :data:`YIELD_INTERVAL`), in order, waiting for one if none is; an
        :class:`~purpose_bus.EventsDropped` notice (``gap_events=True``) comes at
        its place in the list. The list is never empty.

        Always a cancellation point, with one check for the whole batch. When
        events are ready it returns without a scheduler round trip, but it
        yields to the scheduler before handing out more than
        :data:`YIELD_INTERVAL` (1024) events since its last yield (counting
        :meth:`receive` too), so a busy subscriber cannot starve the loop. With
        nothing ready it yields once and looks again before it waits, as
        :meth:`receive` does. Cancelled (while waiting or not), it leaves the
        subscription unchanged: no event is lost. Accounting is as for
        :meth:`receive`: each event in the list counts as delivered.

        :raises TypeError: if *max_items* is not an int
        :raises ValueError: if *max_items* is below 1
        :raises anyio.EndOfStream: when the subscription has ended (see the class
            docstring) and its buffer is drained
        :raises anyio.ClosedResourceError: after :meth:`close`, also in a task
            that was waiting when another one closed it
        :raises RuntimeError: if called from a thread (or event loop) other
            than the bus's
        """
        _check_max_items(max_items)
        await self._ready()

        def take() -> list[Event]:
            return self._take_batch(min(max_items, YIELD_INTERVAL - self._streak))

        try:
            batch = take()
        except anyio.WouldBlock:
            batch = await self._when_ready(take)
        self._streak += len(batch)
        return batch  # type: ignore[return-value]

    def batches(self, max_items: int = YIELD_INTERVAL) -> AsyncIterator[list[E_co]]:
        """Iterate over lists of events: ``async for batch in sub.batches():``
        calls :meth:`receive_batch` with *max_items* for each list, so each step
        is a cancellation point, waits while no event is ready, and loses
        nothing when cancelled. Iteration ends where iterating over the
        subscription ends (when :meth:`receive_batch` raises
        :exc:`anyio.EndOfStream`); after :meth:`close` a step raises
        :exc:`anyio.ClosedResourceError`.

        :raises TypeError: if *max_items* is not an int
        :raises ValueError: if *max_items* is below 1
        """
        _check_max_items(max_items)
        return _Batches(self, max_items)

    async def _ready(self) -> None:
        """The cancellation check of a receive about to hand out what is ready
        or, once :data:`YIELD_INTERVAL` events went out since the last yield,
        the yield. (:meth:`__anext__` has its own inline copy: it is the
        per-event hot path.)"""
        try:
            if self._streak < YIELD_INTERVAL:
                await self._cancelled_check()
            else:
                self._streak = 0
                await checkpoint()
        except RuntimeError as exc:  # trio's own, from a foreign thread
            raise self._foreign(exc) from exc

    async def _when_ready(self, take: Callable[[], T]) -> T:
        """The rest of a receive that found nothing ready: yield once and call
        *take* again (what a task that was ready to run emitted meanwhile is
        there, without a wake-up); after that, wait for the buffer to be woken
        and call it again, until it gives something. Raises what *take* raises,
        except :exc:`anyio.WouldBlock`."""
        if not self._entered:
            raise RuntimeError("enter the subscription ('async with') before receiving")
        self._streak = 0
        await checkpoint()
        while True:
            try:
                return take()
            except anyio.WouldBlock:
                await self._buffer.wait()

    def _foreign(self, exc: RuntimeError) -> RuntimeError:
        """*exc*, or the clearer one if this is not the bus's loop thread."""
        if _get_ident() != self._thread:
            return RuntimeError(wrong_thread("receiving"))
        return exc

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of this subscription's counters."""
        buffer = self._buffer
        return SubscriptionStatistics(
            name=self._name,
            buffered=buffer.buffered + len(self._read_ahead or ()),
            buffer_size=buffer.bound,
            delivered=buffer.delivered,
            dropped=buffer.dropped,
            overflow=buffer.policy,
        )

    # -- replay ---------------------------------------------------------------

    def lost_in_replay(
        self, count: int, first: int, last: int, run_id: str, lane_id: str
    ) -> None:
        """Count *count* matching events that left history (or were never in it)
        before this subscription read them (internal)."""
        buffer = self._buffer
        buffer.matched += count
        buffer.dropped += count
        if buffer.gap_events:
            if self._replay_gap is None:
                self._replay_gap = Gap()
            self._replay_gap.add_range(count, first, last, run_id, lane_id)

    def _take_replayed(self) -> Event:
        if self._closed:
            raise anyio.ClosedResourceError
        buffer = self._buffer
        while True:
            if self._read_ahead:
                buffer.delivered += 1
                event = self._read_ahead.popleft()
                # Caught up? Switch to live now, not at the next receive:
                # history could evict what a live buffer has room for.
                if (
                    not self._read_ahead
                    and self._replay_gap is None
                    and not self._read_more()
                ):
                    self._bus._go_live(self)
                return event
            if self._replay_gap is not None:
                gap, self._replay_gap = self._replay_gap, None
                return gap.notice()
            if not self._read_more():
                self._bus._go_live(self)
                return buffer.take()

    def _take_batch(self, limit: int) -> list[Event]:
        """Up to *limit* (>= 1) ready events, at least one, without waiting; raises
        as :meth:`receive_nowait` does. Replayed events are taken one by one (up
        to the switch to live events, if it comes), live ones in one step."""
        if self.replaying:
            return take_up_to(self.receive_nowait, limit)
        if _get_ident() != self._thread:
            raise RuntimeError(wrong_thread("receiving"))
        return self._buffer.take_batch(limit)

    def _read_more(self) -> bool:
        matches = self._filter.matches
        events = self._bus._history.iter_after(self.cursor, self._filter.run_ids)
        read = self._read_ahead
        if read is None:
            read = self._read_ahead = deque()
        for event in events:
            self.cursor = event.offset
            if matches(event):
                read.append(event)
                if len(read) >= _READ_AHEAD:
                    break
        self._buffer.matched += len(read)
        return bool(read)


class _Batches(Generic[E_co]):
    """What :meth:`Subscription.batches` returns."""

    __slots__ = ("_max_items", "_subscription")

    def __init__(self, subscription: Subscription[E_co], max_items: int) -> None:
        self._subscription = subscription
        self._max_items = max_items

    def __aiter__(self) -> _Batches[E_co]:
        return self

    async def __anext__(self) -> list[E_co]:
        try:
            return await self._subscription.receive_batch(self._max_items)
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
