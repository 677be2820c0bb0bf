"""A subscriber's handle: an async context manager and async iterator over the
events that match its filter."""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar, final

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled, current_token

from ._deprecated import former_names
from ._events import Event
from ._filters import EventFilter
from ._overflow import Overflow
from ._replay import Reader
from ._sender import OverflowSender, take_up_to
from ._statistics import SubscriptionStatistics
from ._validate import count

if TYPE_CHECKING:
    from ._bus import BusSeam

__all__ = ["EVENTS_PER_YIELD", "NoPublicConstructor", "Subscription", "wrong_thread"]

E_co = TypeVar("E_co", bound=Event, covariant=True)
T = TypeVar("T")

#: A receive that finds events buffered hands them out without a scheduler round
#: trip, but yields to the scheduler before it hands out more than this many
#: events since its last yield (counting :meth:`Subscription.receive` and
#: :meth:`Subscription.receive_batch` alike). A burst of fewer events than this
#: is drained in one turn, so a subscriber keeps up with a publisher that yields
#: once per burst (``publish`` yields every 64).
EVENTS_PER_YIELD = 1024
S = TypeVar("S")

# Former names (see _deprecated), hidden from type checkers: they would take a
# module __getattr__ to mean that any name exists.
if not TYPE_CHECKING:
    __getattr__ = former_names(__name__, "YIELD_INTERVAL")


class NoPublicConstructor(type):
    """The metaclass of a class users get from a factory, never construct
    (trio's pattern): calling the class raises :exc:`TypeError`; the factory
    calls ``cls._create(...)``."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor"
            " (use EventBus.subscribe())"
        )

    def _create(cls: type[S], *args: object, **kwargs: object) -> S:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


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


@final
class Subscription(Generic[E_co], metaclass=NoPublicConstructor):
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
        "_cancelled_check",
        "_closed",
        "_entered",
        "_filter",
        "_merge",
        "_name",
        "_reader",
        "_replay",
        "_seam",
        "_streak",
        "_take",
        "_thread",
    )

    def __init__(
        self,
        seam: BusSeam,
        flt: EventFilter,
        *,
        buffer_size: int,
        overflow: Overflow,
        gap_events: bool,
        replay: bool,
        after: int | None,
        name: str,
        merge: bool = False,
    ) -> None:
        self._seam = seam
        self._filter = flt
        self._buffer = OverflowSender(buffer_size, overflow, gap_events)
        self._take = self._buffer.take
        self._replay = replay
        self._after = after
        self._merge = merge
        self._name = name
        self._entered = False
        self._closed = False
        self._streak = 0
        # The thread that may receive: the one that made it until it is
        # entered (on the bus's loop, which it checks), then the loop's.
        self._thread = _get_ident()
        self._cancelled_check: Callable[[], Awaitable[None]] = checkpoint_if_cancelled
        #: What every receive takes from until the switch to live events
        #: (replay, after=, merged replay); then it takes from the buffer.
        self._reader: Reader | None = None

    @property
    def name(self) -> str:
        """The name given to :meth:`EventBus.subscribe`, or a generated one."""
        return self._name

    @property
    def filter(self) -> EventFilter:
        """The filter this subscription matches events with."""
        return self._filter

    # -- the context manager --------------------------------------------------

    async def __aenter__(self) -> Subscription[E_co]:
        """Register with the bus; a run-scoped replay on a bus with an open
        :class:`~purpose_bus.redis.RedisBridge` then reads the run from Redis
        (see :meth:`EventBus.subscribe`). A cancellation point: entered in a
        cancelled scope, or cancelled while reading from Redis, it raises the
        cancellation, leaves nothing registered and closes the subscription (as
        a failed entry always does).

        :raises BusClosed: if the bus is not open (the subscription is closed)
        :raises RuntimeError: if this subscription was entered or closed before,
            or if this is not the bus's event loop thread (the subscription is
            closed)
        :raises Exception: what reading from Redis raises (a lost connection
            after the bridge's retries; the subscription is closed)
        """
        if self._entered or self._closed:
            raise RuntimeError("a subscription can be entered only once")
        try:
            self._seam.check_loop("entering a subscription")
            await checkpoint_if_cancelled()
            reader = self._reader = self._seam.register(
                self,
                self._filter,
                self._buffer,
                replay=self._replay,
                after=self._after,
                merge=self._merge,
            )
            self._entered = True
            self._thread = _get_ident()
            self._cancelled_check = _cancellation_check()
            if reader is not None:
                await reader.start()
                # A task may have waited in a receive while the reader started
                # (it raised WouldBlock): what is ready now may be held by the
                # reader, not the buffer, so nothing else would wake that task.
                self._buffer.wake()
        except BaseException:
            self.close()
            raise
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
        if self._reader is not None:
            self._reader.discard()
            self._reader = None
        self._buffer.discard()
        if self._entered:
            self._seam.unregister(self)

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
        if self._reader is not None:
            return self._take_replayed()  # type: ignore[return-value]
        return self._buffer.take()  # type: ignore[return-value]

    async def receive(self) -> E_co:
        """Return the next event, waiting for one if none is buffered.

        Always a cancellation point. When events are buffered it returns without
        a scheduler round trip, but it yields to the scheduler at least once in
        every :data:`EVENTS_PER_YIELD` (1024) calls, so a busy subscriber cannot
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
            if streak < EVENTS_PER_YIELD:
                self._streak = streak
                await self._cancelled_check()
            else:
                self._streak = 0
                await checkpoint()
        except RuntimeError as exc:  # trio's own, from a foreign thread
            raise self._foreign(exc) from exc
        try:
            try:
                # receive_nowait(), inlined (one frame less per event): every
                # reader, local or merged, is reached through _take_replayed.
                if _get_ident() != self._thread:
                    raise RuntimeError(wrong_thread("receiving"))
                if self._reader is not None:
                    return self._take_replayed()  # type: ignore[return-value]
                return self._take()  # type: ignore[return-value]
            except anyio.WouldBlock:
                return await self._when_ready(self.receive_nowait)
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive_batch(self, max_items: int = EVENTS_PER_YIELD) -> list[E_co]:
        """Return every event that is ready, up to *max_items* (and up to
        :data:`EVENTS_PER_YIELD`), in order, waiting for one if none is; an
        :class:`~purpose_bus.EventsDropped` notice (``gap_events=True``) comes at
        its place in the list. The list is never empty.

        Always a cancellation point, with one check for the whole batch. When
        events are ready it returns without a scheduler round trip, but it
        yields to the scheduler before handing out more than
        :data:`EVENTS_PER_YIELD` (1024) events since its last yield (counting
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
        max_items = count("max_items", max_items, 1)
        await self._ready()

        def take() -> list[Event]:
            return self._take_batch(min(max_items, EVENTS_PER_YIELD - self._streak))

        try:
            batch = take()
        except anyio.WouldBlock:
            batch = await self._when_ready(take)
        self._streak += len(batch)
        return batch  # type: ignore[return-value]

    def batches(self, max_items: int = EVENTS_PER_YIELD) -> AsyncIterator[list[E_co]]:
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
        max_items = count("max_items", max_items, 1)
        return _Batches(self, max_items)

    async def _ready(self) -> None:
        """The cancellation check of a receive about to hand out what is ready
        or, once :data:`EVENTS_PER_YIELD` events went out since the last yield,
        the yield. (:meth:`__anext__` has its own inline copy: it is the
        per-event hot path.)"""
        try:
            if self._streak < EVENTS_PER_YIELD:
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
        return self._buffer.statistics(self._name)

    # -- replay ---------------------------------------------------------------

    def _take_replayed(self) -> Event:
        """Take from the reader: the one hook of every receive while there is
        one (receive_nowait, receive, iteration, receive_batch, batches)."""
        if self._closed:
            raise anyio.ClosedResourceError
        assert self._reader is not None
        event = self._reader.take()
        if event is not None:
            return event
        self._reader = None  # switched to live
        return self._buffer.take()

    def _take_batch(self, limit: int) -> list[Event]:
        """Up to *limit* (>= 1) ready events, at least one, without waiting; raises
        as :meth:`receive_nowait` does. Replayed events are taken one by one (up
        to the switch to live events, if it comes), live ones in one step."""
        if self._reader is not None:
            return take_up_to(self.receive_nowait, limit)
        if _get_ident() != self._thread:
            raise RuntimeError(wrong_thread("receiving"))
        return self._buffer.take_batch(limit)


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
