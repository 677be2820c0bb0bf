"""The event bus: accepts events, stamps and records them, and delivers them to
the subscriptions whose filters match."""

from __future__ import annotations

import enum
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._admission import check_emittable
from ._events import Event, EventsDropped, Visibility, _stampers, stamper
from ._exceptions import BusClosed, EventRejected
from ._filters import EventFilter, KindsArg, StrArg, make_filter
from ._guards import Guard, reject_hidden_reasoning
from ._history import History
from ._index import SubscriberIndex
from ._overflow import Overflow
from ._remote import MergedReader, ReplaySource
from ._replay import Reader, ReplayReader
from ._sender import Gap, OverflowSender, offer_each
from ._statistics import BusStatistics
from ._subscription import Subscription, wrong_thread
from ._threads import ThreadHandoff
from ._validate import callables, count, flag, overflow_policy, text

__all__ = ["BusSeam", "EventBus", "bus_seam"]

logger = logging.getLogger("purpose_bus")

#: An imported event moves its lane's local seq only below this (2**62): a
#: forged seq near 2**63-1 cannot leave local events a seq no codec writes.
_LOCAL_SEQ_LIMIT = 1 << 62

E = TypeVar("E", bound=Event)

#: ``publish`` yields to the scheduler at least once every this many calls.
PUBLISH_EVENTS_PER_YIELD = 64

#: A callable that sees every accepted event and where it came from (internal).
Tap = Callable[[Event, object], None]


class _State(enum.Enum):
    """Where a bus is in its life."""

    NEW = "new"  # made, not opened yet
    OPEN = "open"  # accepting events
    CLOSING = "closing"  # refusing new events, delivering what threads handed off
    CLOSED = "closed"  # every subscription ended


# The states as module constants: on Python 3.11 reading an enum member off its
# class (``_State.OPEN``) costs ten times a global lookup, and every emit checks
# that the bus is open.
_NEW, _OPEN, _CLOSING, _CLOSED = _State.NEW, _State.OPEN, _State.CLOSING, _State.CLOSED


class _Registered:
    """What the bus holds for an entered subscription."""

    __slots__ = ("buffer", "filter", "reader")

    def __init__(self, flt: EventFilter, buffer: OverflowSender) -> None:
        self.filter = flt
        self.buffer = buffer
        #: Its replay reader while it reads history, else ``None``.
        self.reader: ReplayReader | None = None


class EventBus:
    """An in-process pub/sub event bus, scoped to a task group::

        async with EventBus() as bus:
            async with bus.subscribe(run_id="r1") as sub:
                bus.emit(RunStarted(run_id="r1"))
                ...

    Runs on asyncio (also with uvloop) and on trio. :meth:`emit` may be called
    from the event loop thread and from any other thread.

    :param buffer_size: the default bound of a subscription's buffer (>= 1)
    :param overflow: the default :class:`Overflow` policy of a subscription
    :param history_size: how many accepted events history keeps (>= 0)
    :param thread_buffer_size: the bound of the hand-off from other threads (>= 1)
    :param guards: callables that may reject an event (see :mod:`purpose_bus`);
        the default rejects events that carry hidden reasoning
    :param strict: raise :exc:`EventRejected` for a rejected event, instead of
        logging a warning and counting it
    :param max_runs: how many unfinished runs keep their seq counters (the least
        recently used are forgotten past it), and how many finished runs are
        remembered to reject their late events
    :raises TypeError: for an argument of the wrong type (a size that is not an
        int, *guards* that is not a collection of callables, *strict* that is
        not a bool)
    :raises ValueError: for a size out of range or an unknown overflow policy
    """

    def __init__(
        self,
        *,
        buffer_size: int = 1000,
        overflow: Overflow = Overflow.DROP_OLDEST,
        history_size: int = 10_000,
        thread_buffer_size: int = 10_000,
        guards: Sequence[Guard] = (reject_hidden_reasoning,),
        strict: bool = False,
        max_runs: int = 10_000,
    ) -> None:
        self._buffer_size = count("buffer_size", buffer_size, 1)
        self._overflow = overflow_policy(overflow)
        self._history = History(count("history_size", history_size, 0))
        self._seam = BusSeam(self)
        self._handoff = ThreadHandoff(
            self._seam, count("thread_buffer_size", thread_buffer_size, 1)
        )
        self._guards: tuple[Guard, ...] = callables("guards", guards)
        self._strict = flag("strict", strict)
        self._max_runs = count("max_runs", max_runs, 1)
        self._state = _NEW
        self._task_group: TaskGroup | None = None
        self._loop_thread: int | None = None
        self._offset = 0
        self._seqs: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._subscriptions: dict[Subscription[Event], _Registered] = {}
        #: Live subscriptions, by run.
        self._index: SubscriberIndex[Subscription[Event]] = SubscriberIndex()
        #: The replay readers of subscriptions still reading history, by run.
        self._replaying: SubscriberIndex[ReplayReader] = SubscriberIndex()
        self._rejected = 0
        self._rejected_lock = threading.Lock()
        self._dropped_by_closed = 0
        self._publish_streak = 0
        self._names = itertools.count(1)
        self._taps: tuple[Tap, ...] = ()
        self._replay_sources: tuple[ReplaySource, ...] = ()

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        """Open the bus in a task group of its own.

        :raises RuntimeError: if the bus was opened before
        """
        if self._state is not _NEW:
            raise RuntimeError("an EventBus can be opened only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._loop_thread = threading.get_ident()
        self._handoff.open(task_group)
        self._state = _OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        try:
            await self.aclose()
        finally:
            # The task group only runs the bus's own tasks, which never raise:
            # an exception from the body passes through unwrapped.
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close the bus: new emits raise :exc:`BusClosed`; events already handed
        off by other threads are delivered first (a full ``BLOCK`` subscriber
        takes them beyond its bound); then every subscription ends once its
        buffered events are consumed. Publishers waiting for room raise
        :exc:`BusClosed`, and threads blocked on a full hand-off are released with
        :exc:`BusClosed`. Does not wait for subscribers. Idempotent.

        A checkpoint. Cancellation is deferred until the bus is closed (the close
        is shielded).

        :raises RuntimeError: if called from a thread (or event loop) other than
            the bus's
        """
        self._check_loop("aclose()")
        if self._state is not _OPEN:
            await checkpoint()
            return
        self._state = _CLOSING
        with anyio.CancelScope(shield=True):
            await self._handoff.close()
        self._state = _CLOSED
        for registered in self._subscriptions.values():
            registered.buffer.end()
        self._index.clear()
        self._replaying.clear()
        await checkpoint_if_cancelled()

    @property
    def closed(self) -> bool:
        """Whether the bus has been closed (or is closing)."""
        return self._state in (_CLOSING, _CLOSED)

    # -- emitting -------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Accept *event*: stamp it, record it and deliver it to every matching
        subscription. Never blocks the event loop.

        On the event loop thread this happens before ``emit`` returns. From any
        other thread the event is checked and guarded in the calling thread and
        handed to the loop without waiting for it (see the threads section of the
        README); if the hand-off is full the calling thread blocks.

        :raises TypeError: if *event* is not an :class:`Event`
        :raises BusClosed: if the bus is not open
        :raises EventRejected: if a ``strict`` bus's guards or run lifecycle
            check refuse it (a non-strict bus logs and counts it)
        :raises anyio.WouldBlock: on the loop thread, if a matching ``BLOCK``
            subscription is full; nothing was recorded or delivered
        """
        if threading.get_ident() != self._loop_thread:
            self._handoff.put(event)
            return
        self._check(event)
        if self._guards and self._guarded(event) is None:
            return
        if self._index.blocking or event.run_id in self._finished:
            if self._ended_run(event, strict=True):
                return
            if self._full_blocking(event) is not None:
                raise anyio.WouldBlock
        self._accept(event)

    async def publish(self, event: E) -> E | None:
        """Accept *event* like :meth:`emit` and return the stamped event, or
        ``None`` if a non-strict bus rejected it. Call it on the event loop.

        Waits while a matching ``BLOCK`` subscription is full. Always a
        cancellation point; it yields to the scheduler at least once in every 64
        calls. Cancelled while waiting, it leaves no trace: nothing is recorded or
        delivered.

        :raises TypeError: if *event* is not an :class:`Event`
        :raises BusClosed: if the bus is not open, also if it closes while this
            call waits for room
        :raises EventRejected: if a ``strict`` bus refuses the event
        :raises RuntimeError: if called from a thread (or event loop) other
            than the bus's: use :meth:`publish_from_thread` or :meth:`emit`
        """
        self._check_loop("publish()")
        self._check(event)
        self._publish_streak += 1
        if self._publish_streak < PUBLISH_EVENTS_PER_YIELD:
            await checkpoint_if_cancelled()
        else:
            self._publish_streak = 0
            await checkpoint()
        return await self._publish_checked(event)

    def publish_from_thread(self, event: E) -> E | None:
        """From a thread other than the event loop's: :meth:`publish` *event* on
        the loop and wait for it; return what it returns, raise what it raises.

        :raises RuntimeError: if called on the event loop thread
        """
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("publish_from_thread() must not be called on the loop")
        return self._handoff.publish(event)

    async def _publish_checked(
        self, event: E, source: object = None, strict: bool = True
    ) -> E | None:
        self._check_open()
        if self._guarded(event, strict) is None:
            return None
        while True:
            if self._ended_run(event, strict):
                return None
            full = self._full_blocking(event)
            if full is None:
                return self._accept(event, source)
            await full.wait_for_room()
            self._check_open()

    async def _ingest(self, event: Event, source: object) -> Event | None:
        self._check(event)
        return await self._publish_checked(event, source, strict=False)

    def _add_tap(self, tap: Tap) -> Callable[[], None]:
        self._taps = (*self._taps, tap)

        def remove() -> None:
            self._taps = tuple(t for t in self._taps if t is not tap)

        return remove

    def _add_replay_source(self, source: ReplaySource) -> Callable[[], None]:
        self._replay_sources = (*self._replay_sources, source)

        def remove() -> None:
            self._replay_sources = tuple(
                s for s in self._replay_sources if s is not source
            )

        return remove

    async def _publish_handed_off(self, event: Event, *, strict: bool) -> Event | None:
        """Publish an event a thread handed off (checked and guarded there). A
        late event raises only if *strict*. Once the bus is closing, a full
        ``BLOCK`` subscriber takes the event beyond its bound."""
        while True:
            if self._ended_run(event, strict):
                return None
            full = None if self._state is not _OPEN else self._full_blocking(event)
            if full is None:
                return self._accept(event)
            await full.wait_for_room()

    def _deliver_handed_off_now(self, event: Event, *, strict: bool) -> Event | None:
        """Accept a handed-off event at once (nothing may make it wait: no
        ``BLOCK`` subscriber, or the bus is closing)."""
        if self._ended_run(event, strict):
            return None
        return self._accept(event)

    def _force_room(self) -> None:
        """Wake every publisher waiting for room (the bus is closing)."""
        for subscription in self._index:
            self._subscriptions[subscription].buffer.wake_room(force=True)

    def _ended_run(self, event: Event, strict: bool) -> bool:
        """Whether *event*'s run has ended: then it is rejected (raising
        :exc:`EventRejected` if *strict* and the bus is strict)."""
        if event.run_id not in self._finished:
            return False
        self._reject(event, f"run {event.run_id!r} has already ended", strict)
        return True

    def _full_blocking(self, event: Event) -> OverflowSender | None:
        """The buffer of a matching live ``BLOCK`` subscription that is full, if
        there is one: *event* must wait for room in it."""
        if not self._index.blocking:
            return None
        visibility = event.visibility
        for level, match, buffer, _ in self._index.candidates(event.run_id):
            if (
                buffer.policy is Overflow.BLOCK
                and buffer.full
                and visibility <= level
                and (match is None or match(event))
            ):
                return buffer
        return None

    def _check(self, event: object) -> None:
        """What the bus checks of an event before anything else (its fields
        were checked and frozen when it was made: see ``_admission``)."""
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, got {type(event).__name__}")
        if isinstance(event, EventsDropped):
            raise TypeError("EventsDropped notices are made by the bus, not emitted")
        check_emittable(type(event))
        self._check_open()

    def _check_loop(self, action: str) -> None:
        """Refuse *action* from a thread other than the loop's, once open."""
        thread = self._loop_thread
        if thread is not None and threading.get_ident() != thread:
            raise RuntimeError(wrong_thread(action))

    def _check_open(self) -> None:
        if self._state is not _OPEN:
            raise BusClosed(
                "the bus is not open" if self._state is _NEW else "the bus is closed"
            )

    def _guarded(self, event: Event, strict: bool = True) -> Event | None:
        """Run the guards; return the event, or ``None`` if it was rejected."""
        for guard in self._guards:
            try:
                reason = guard(event)
            except Exception as exc:
                logger.exception("guard %r raised on a %s event", guard, event.kind)
                reason = f"guard {guard!r} raised {type(exc).__name__}"
            if reason is not None:
                self._reject(event, reason, strict)
                return None
        return event

    def _reject(self, event: Event, reason: str, strict: bool = True) -> None:
        with self._rejected_lock:
            self._rejected += 1
        if strict and self._strict:
            raise EventRejected(reason)
        logger.warning(
            "rejected a %s event of run %r: %s", event.kind, event.run_id, reason
        )

    def _accept(self, event: E, source: object = None) -> E:
        """Stamp *event*, record it and deliver it: the one path of every
        accepted event, live or terminal, local or from a bridge."""
        run_id = event.run_id
        lane_id = event.lane_id
        seqs = self._seqs
        lanes = seqs.get(run_id)
        if lanes is None:
            lanes = seqs[run_id] = {}
            if len(seqs) > self._max_runs:
                seqs.popitem(last=False)
        else:
            seqs.move_to_end(run_id)
        last = lanes.get(lane_id, 0)
        if source is None:
            seq = lanes[lane_id] = last + 1
        else:  # accepted elsewhere first: keep its seq; local ones continue after
            seq = event.seq  # it, unless it is in the top half of the range, where
            if last < seq < _LOCAL_SEQ_LIMIT:  # no lane gets but by forgery: a
                lanes[lane_id] = seq  # local seq never runs out of room
        offset = self._offset = self._offset + 1
        stamp = _stampers.get(type(event))
        if stamp is None:
            stamp = stamper(type(event))
        event = stamp(event, seq, offset)  # type: ignore[assignment]  # same class
        evicted = self._history.append(event)
        if evicted is not None and self._replaying.size:
            self._lost_from_history(evicted)
        terminal = event.terminal
        offer_each(event, self._index.candidates(run_id), terminal)
        if terminal:
            self._finish(run_id)
        if self._taps:
            self._tap(event, source)
        return event

    def _tap(self, event: Event, source: object) -> None:
        for tap in self._taps:
            try:
                tap(event, source)
            except Exception:
                logger.exception("a tap raised on a %s event", event.kind)

    def _finish(self, run_id: str) -> None:
        self._seqs.pop(run_id, None)
        self._finished[run_id] = None
        if len(self._finished) > self._max_runs:
            self._finished.popitem(last=False)
        for _, _, buffer, subscription in self._index.bucket(run_id):
            if self._subscriptions[subscription].filter.single_run == run_id:
                buffer.end()
                self._index.remove(subscription)

    def _lost_from_history(self, event: Event) -> None:
        visibility = event.visibility
        for level, match, _, reader in self._replaying.candidates(event.run_id):
            if (
                visibility <= level
                and (match is None or match(event))
                and event.offset > reader.cursor
            ):
                reader.lost(Gap.of(event))

    # -- subscribing ----------------------------------------------------------

    @overload
    def subscribe(
        self,
        *,
        run_id: StrArg = ...,
        lane_id: StrArg = ...,
        kinds: type[E],
        visibility: Visibility = ...,
        buffer_size: int | None = ...,
        overflow: Overflow | None = ...,
        replay: bool = ...,
        after: int | None = ...,
        gap_events: Literal[False] = ...,
        name: str | None = ...,
    ) -> Subscription[E]: ...

    @overload
    def subscribe(
        self,
        *,
        run_id: StrArg = ...,
        lane_id: StrArg = ...,
        kinds: KindsArg = ...,
        visibility: Visibility = ...,
        buffer_size: int | None = ...,
        overflow: Overflow | None = ...,
        replay: bool = ...,
        after: int | None = ...,
        gap_events: bool = ...,
        name: str | None = ...,
    ) -> Subscription[Event]: ...

    def subscribe(
        self,
        *,
        run_id: StrArg = None,
        lane_id: StrArg = None,
        kinds: KindsArg = None,
        visibility: Visibility = Visibility.PUBLIC,
        buffer_size: int | None = None,
        overflow: Overflow | None = None,
        replay: bool = False,
        after: int | None = None,
        gap_events: bool = False,
        name: str | None = None,
    ) -> Subscription[Any]:
        """Make a subscription to the events that match every filter given; use it
        as ``async with bus.subscribe(...) as sub: async for event in sub: ...``.

        Filters take one value or a collection; ``kinds`` takes kind strings or
        event classes; ``visibility`` is the most privileged level received.

        :param buffer_size: the bound of its buffer (default: the bus's)
        :param overflow: its :class:`Overflow` policy (default: the bus's)
        :param replay: deliver the matching history first, then live events,
            with no gap and no duplicate at the switch. Scoped to one
            ``run_id``, without ``after``, on a bus with an open
            :class:`~purpose_bus.redis.RedisBridge` (when this is called and when
            it is entered), it reaches back into Redis: entering reads the run
            from there and merges it with the history (see the bridge's
            documentation)
        :param after: resume after this offset (replaying what history still
            holds after it); offsets history no longer holds are counted as
            dropped; an offset beyond the newest starts live
        :param gap_events: receive an :class:`EventsDropped` notice before the
            next event that follows a loss
        :param name: a name for its statistics
        :raises TypeError: for an argument of the wrong type (a filter value, a
            size that is not an int, *replay* or *gap_events* not a bool, *name*
            not a str)
        :raises ValueError: for a size out of range, an empty filter collection,
            an unknown kind string or an unknown policy
        :raises RuntimeError: if called from a thread (or event loop) other than
            the bus's (subscribe on the bus's loop; other threads may emit)
        """
        self._check_loop("subscribe()")
        flt: EventFilter = make_filter(
            run_id=run_id, lane_id=lane_id, kinds=kinds, visibility=visibility
        )
        size = self._buffer_size if buffer_size is None else buffer_size
        if after is not None:
            after = count("after", after, 0)
        options: dict[str, Any] = {
            "buffer_size": count("buffer_size", size, 1),
            "overflow": self._overflow
            if overflow is None
            else overflow_policy(overflow),
            "gap_events": flag("gap_events", gap_events),
            "replay": flag("replay", replay),
            "after": after,
            "name": text("name", name)
            if name is not None
            else f"subscription-{next(self._names)}",
            # Reach into the replay sources (those open when it is entered)?
            "merge": bool(
                replay and after is None and flt.single_run and self._replay_sources
            ),
        }
        return Subscription._create(self._seam, flt, **options)

    def _go_live(self, subscription: Subscription[Event]) -> None:
        """Move *subscription* from the replay index to the live one (or end
        it, if the bus is closing or its run has ended)."""
        registered = self._subscriptions[subscription]
        if registered.reader is not None:
            self._replaying.remove(registered.reader)
            registered.reader = None
        run_id = registered.filter.single_run
        if self._state is not _OPEN or (
            run_id is not None and run_id in self._finished
        ):
            registered.buffer.end()
            return
        self._index.add(subscription, registered.filter, registered.buffer)

    # -- history and statistics -----------------------------------------------

    def replay(
        self,
        run_id: StrArg = None,
        lane_id: StrArg = None,
        kinds: KindsArg = None,
        visibility: Visibility = Visibility.PUBLIC,
        since_seq: int = 0,
        after: int = 0,
    ) -> list[Event]:
        """The events history holds that match the filters (the same filters and
        defaults as :meth:`subscribe`), with a seq above *since_seq* and an offset
        above *after*, in offset order. Takes time proportional to what it returns
        when scoped to runs. Call it on the event loop thread.

        :raises RuntimeError: if called from another thread (or event loop)
        :raises TypeError: for an int as the third argument: that is ``kinds``,
            not the old bus's positional ``since_seq``
        """
        self._check_loop("replay()")
        if isinstance(kinds, int):  # the old bus's replay(run_id, lane_id, since_seq)
            raise TypeError(
                f"replay()'s third argument is kinds; pass since_seq by keyword: "
                f"replay(run_id, lane_id, since_seq={kinds!r})"
            )
        flt = make_filter(
            run_id=run_id, lane_id=lane_id, kinds=kinds, visibility=visibility
        )
        return self._history.select(
            flt,
            after=count("after", after, 0),
            since_seq=count("since_seq", since_seq, 0),
        )

    def statistics(self) -> BusStatistics:
        """A snapshot of the bus's counters and of every open subscription's."""
        subscriptions = tuple(s.statistics() for s in self._subscriptions)
        return BusStatistics(
            emitted=self._offset,
            rejected=self._rejected,
            dropped=self._dropped_by_closed + sum(s.dropped for s in subscriptions),
            history=len(self._history),
            subscriptions=subscriptions,
        )


class BusSeam:
    """The bus's internal interface: everything that the thread hand-off, the
    subscriptions and the bridges (:mod:`purpose_bus.redis`) may ask of an
    :class:`EventBus`, in one place. Nothing outside this module touches the
    bus's private attributes (a test checks it); get a bus's seam with
    :func:`bus_seam`. Not a public API: it may change with any release.

    Every method runs on the bus's event loop thread unless it says otherwise.
    """

    __slots__ = ("_bus",)

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    # -- admitting and accepting ----------------------------------------------

    def admit_from_thread(self, event: Event) -> bool:
        """In a thread other than the loop's: check *event* and run the guards
        (what can be decided without the loop); whether it passed.

        :raises TypeError: if *event* is not an emittable :class:`Event`
        :raises BusClosed: if the bus is not open
        :raises EventRejected: if a strict bus's guards refuse it
        """
        bus = self._bus
        bus._check(event)
        return bus._guarded(event) is not None

    def check_open(self) -> None:
        """:raises BusClosed: if the bus is not open (any thread)."""
        self._bus._check_open()

    def has_ended(self, run_id: str) -> bool:
        """Whether the bus remembers *run_id* as ended (its terminal event was
        accepted; a bounded memory, see ``max_runs``), even once history no
        longer holds it."""
        return run_id in self._bus._finished

    def check_loop(self, action: str) -> None:
        """:raises RuntimeError: naming *action*, if the bus is open and this is
        not its event loop thread (any thread)."""
        self._bus._check_loop(action)

    async def ingest(self, event: Event, source: object) -> Event | None:
        """Accept an event that another process accepted first (for bridges).

        Guards and the run lifecycle apply (never raising: a rejection is logged
        and counted); ``run_id``, ``lane_id``, ``seq`` and ``ts`` are kept and a
        local ``offset`` is stamped; taps see *source*, so a bridge can tell its
        own events from local ones. Waits while a matching ``BLOCK`` subscriber
        is full; cancelled while waiting, it leaves no trace. Returns the
        accepted event, or ``None`` if it was rejected.

        :raises TypeError: if *event* is not an emittable :class:`Event`
        :raises BusClosed: if the bus is not open, also if it closes meanwhile
        """
        return await self._bus._ingest(event, source)

    def may_wait(self) -> bool:
        """Whether delivering an event might have to wait (a live ``BLOCK``
        subscription exists)."""
        return bool(self._bus._index.blocking)

    def deliver_now(self, event: Event, *, strict: bool) -> Event | None:
        """Accept an event a thread handed off (admitted there) without waiting:
        a full ``BLOCK`` subscription takes it beyond its bound. Returns it
        stamped, or ``None`` if its run had ended (raising
        :exc:`EventRejected` instead if *strict* and the bus is strict)."""
        return self._bus._deliver_handed_off_now(event, strict=strict)

    async def deliver_handed_off(self, event: Event, *, strict: bool) -> Event | None:
        """:meth:`deliver_now`, but waiting for room in a full ``BLOCK``
        subscription while the bus is open (once it is closing, the event goes
        in beyond the bound)."""
        return await self._bus._publish_handed_off(event, strict=strict)

    def release_waiters(self) -> None:
        """Wake every task waiting for room in a ``BLOCK`` subscription (the
        bus is closing: they go in beyond the bound, or raise BusClosed)."""
        self._bus._force_room()

    # -- taps and replay sources ----------------------------------------------

    def add_tap(self, tap: Tap) -> Callable[[], None]:
        """Call ``tap(event, source)`` with every accepted event, synchronously,
        on the loop, after it is recorded and delivered (*source* is ``None``
        for local events). Returns a function that removes the tap. A tap must
        not raise (an exception is logged)."""
        return self._bus._add_tap(tap)

    def add_replay_source(self, source: ReplaySource) -> Callable[[], None]:
        """Make ``subscribe(run_id=..., replay=True)`` (no ``after``) read the
        run from *source* too (see :class:`~purpose_bus._remote.MergedReader`),
        from the next call of :meth:`EventBus.subscribe` on. Returns a function
        that removes the source."""
        return self._bus._add_replay_source(source)

    def replay_sources(self) -> tuple[ReplaySource, ...]:
        """The replay sources registered now."""
        return self._bus._replay_sources

    # -- subscriptions --------------------------------------------------------

    @property
    def history(self) -> History:
        """The bus's history (read it; only the bus appends)."""
        return self._bus._history

    def register(
        self,
        subscription: Subscription[Event],
        flt: EventFilter,
        buffer: OverflowSender,
        *,
        replay: bool,
        after: int | None,
        merge: bool = False,
    ) -> Reader | None:
        """Enter *subscription*: from now on every matching event accepted goes
        to *buffer* or is counted as dropped. Returns the reader it takes from
        (after :meth:`Reader.start`) until it switches to live events
        (``replay``, ``after``), or ``None`` if it is live at once. With
        *merge* (``replay``, one run, no ``after``) and replay sources
        registered now, the reader is a :class:`MergedReader` over them, which
        reads the local history through a :class:`ReplayReader` (kept from now
        on, also if history holds nothing of the run yet).

        :raises BusClosed: if the bus is not open
        """
        bus = self._bus
        bus._check_open()
        registered = bus._subscriptions[subscription] = _Registered(flt, buffer)
        sources = bus._replay_sources if merge else ()
        if (after is None and not replay) or (
            after is not None and after >= bus._offset
        ):
            bus._go_live(subscription)  # live only, or a cursor from another bus
            return None
        history = bus._history
        cursor = max(after or 0, history.oldest - 1)
        reader = ReplayReader(self, subscription, flt, buffer, cursor)
        if after is not None and after < cursor:
            # History no longer reaches back to the cursor: count what is missing.
            lanes = flt.lane_ids
            missing = Gap(
                cursor - after,
                after + 1,
                cursor,
                flt.single_run or "",
                next(iter(lanes)) if lanes is not None and len(lanes) == 1 else "",
                exact=False,  # an upper bound: history cannot tell what matched
            )
            if cursor >= history.newest:
                buffer.lose(missing)
            else:
                reader.lost(missing)
        if cursor >= history.newest and not (sources and history.size):
            bus._go_live(subscription)  # nothing left to replay
            if sources:  # ... and no history to keep what the sources lack
                return MergedReader(self, subscription, flt, buffer, None, sources)
            return None
        registered.reader = reader
        bus._replaying.add(reader, flt, buffer)
        if sources:
            return MergedReader(self, subscription, flt, buffer, reader, sources)
        return reader

    def go_live(self, subscription: Subscription[Event]) -> None:
        """*subscription*'s replay reader has read everything history holds
        for it: move it from the replay index to the live one, in this loop
        step, so that no event falls between (or end its buffer, if the bus is
        closing or its run has ended)."""
        self._bus._go_live(subscription)

    def unregister(self, subscription: Subscription[Event]) -> None:
        """Forget *subscription* (closed): nothing more goes to its buffer; its
        drops stay counted in the bus's statistics. Idempotent."""
        bus = self._bus
        registered = bus._subscriptions.pop(subscription, None)
        if registered is None:
            return
        if registered.reader is not None:
            bus._replaying.remove(registered.reader)
        bus._index.remove(subscription)
        bus._dropped_by_closed += registered.buffer.dropped


def bus_seam(bus: EventBus) -> BusSeam:
    """*bus*'s internal interface (see :class:`BusSeam`)."""
    return bus._seam
