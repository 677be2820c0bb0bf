"""The drop-oldest sender: one subscription's bounded buffer on an AnyIO memory
object stream, with overflow policies and terminal priority, at a cost per event
that does not grow with what the buffer holds.

The AnyIO stream itself is unbounded; this sender enforces the subscription's
``buffer_size``. The stream carries the evictable (non-terminal) events only.
Terminal events and loss markers are kept beside it, each with its *position*:
the number of stream items that come before it. So the oldest evictable event
is always the head of the stream, evicted with the receive end's
``receive_nowait()`` (AnyIO has no public way to evict from the send side), and
the newest one is the tail, marked dead where it is (a run of dead stream
indices) and skipped when it reaches the head. Every operation is O(1)
amortized, whatever terminal events the buffer holds.

Receivers never wait inside the stream: they wait on an :class:`anyio.Event` and
then take with ``receive_nowait()``, so every event stays in the stream's buffer
until it is taken, a cancelled receiver loses nothing, and the count of buffered
events is exact.

The stream is made when the first event is sent into it: an idle subscription
(one that has matched nothing yet) costs only this object and its counters.

Losses are remembered, when the subscriber asked for ``gap_events``, as loss
markers at the position of the loss; adjacent markers are handed out as one
:class:`~purpose_bus.EventsDropped` notice.

Everything here runs on the bus's event loop thread.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar, Union

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._events import Event, EventsDropped
from ._overflow import Overflow
from ._statistics import SubscriptionStatistics

__all__ = ["Gap", "OverflowSender", "offer_each", "take_up_to"]

T = TypeVar("T")

# The policies as module constants: on Python 3.11 reading an enum member off
# its class costs ten times a global lookup (offer() runs once per emit for a
# subscriber whose buffer is full).
_BLOCK, _DROP_NEWEST, _DROP_OLDEST = (
    Overflow.BLOCK,
    Overflow.DROP_NEWEST,
    Overflow.DROP_OLDEST,
)


class Gap:
    """A run of lost events at one position of a subscriber's stream: how many,
    the first and last offset, the run and lane of the first, and whether every
    one of them is known to have matched (*exact*; not for offsets history no
    longer held: then *count* is an upper bound)."""

    __slots__ = ("count", "exact", "first_offset", "lane_id", "last_offset", "run_id")

    def __init__(
        self,
        count: int = 0,
        first_offset: int = 0,
        last_offset: int = 0,
        run_id: str = "",
        lane_id: str = "",
        *,
        exact: bool = True,
    ) -> None:
        self.count = count
        self.exact = exact
        self.first_offset = first_offset
        self.last_offset = last_offset
        self.run_id = run_id
        self.lane_id = lane_id

    @classmethod
    def of(cls, event: Event) -> Gap:
        """The loss of *event* alone."""
        return cls(1, event.offset, event.offset, event.run_id, event.lane_id)

    def add(self, event: Event) -> None:
        """Count *event* as lost here."""
        self.merge(Gap.of(event))

    def merge(self, other: Gap) -> None:
        """Absorb *other*, a gap adjacent to this one."""
        self.exact = self.exact and other.exact
        if self.count == 0 or other.first_offset < self.first_offset:
            self.first_offset = other.first_offset
            self.run_id = other.run_id
            self.lane_id = other.lane_id
        self.last_offset = max(self.last_offset, other.last_offset)
        self.count += other.count

    def notice(self) -> EventsDropped:
        """The notice a subscriber receives for this gap."""
        return EventsDropped(
            run_id=self.run_id,
            lane_id=self.lane_id,
            count=self.count,
            first_offset=self.first_offset,
            last_offset=self.last_offset,
            exact=self.exact,
        )


Item = Union[Event, Gap]  # noqa: UP007  (a runtime alias)

# Empty stand-ins for a sender's side deques until it first needs them (never
# appended to: _make_side() replaces them first), so that an idle subscription
# does not pay three deques.
_NO_ITEMS: deque[Item] = deque()
_NO_PENDING: deque[tuple[int, Item]] = deque()
_NO_DEAD: deque[list[int]] = deque()


class OverflowSender:
    """One subscription's buffer: the send and receive ends of an unbounded AnyIO
    memory object stream (made when the first event is sent) holding the
    evictable events, the terminal events and loss markers beside it (with
    their positions), and the counters.

    ``matched == delivered + dropped + buffered`` holds after every method.
    """

    __slots__ = (
        "_beside",
        "_bound",
        "_buffered",
        "_closed",
        "_dead",
        "_dead_count",
        "_delivered",
        "_dropped",
        "_due",
        "_ended",
        "_evicts_at_once",
        "_gap_events",
        "_held",
        "_matched",
        "_pending",
        "_policy",
        "_receive",
        "_receive_nowait",
        "_room_waiter",
        "_send",
        "_send_nowait",
        "_tail_gap",
        "_taken",
        "_terminals",
        "_waiter",
    )

    def __init__(self, bound: int, policy: Overflow, gap_events: bool) -> None:
        self._send: MemoryObjectSendStream[Event] | None = None
        self._receive: MemoryObjectReceiveStream[Event] | None = None
        self._send_nowait: Callable[[Event], None] | None = None
        self._receive_nowait: Callable[[], Event] | None = None
        self._policy = policy
        #: Stream items taken from the head so far (received or evicted): the
        #: index of the stream's head.
        self._taken = 0
        #: Terminal events and loss markers that come before the stream's head.
        self._due = _NO_ITEMS
        #: ``(position, item)`` for those that come later, by position.
        self._pending = _NO_PENDING
        #: ``DROP_NEWEST``: runs ``[start, end)`` of dead stream indices
        #: (evicted in place by a terminal event), by index, never adjacent.
        self._dead = _NO_DEAD
        self._dead_count = 0
        #: How many items are beside the stream or dead in it (due, pending,
        #: dead): 0 on the fast paths, which then need no positions (``_taken``
        #: counts only while it is not 0; positions are relative).
        self._beside = 0
        #: The loss marker that is the last item of all, if one is.
        self._tail_gap: Gap | None = None
        self._terminals = 0
        self._waiter: anyio.Event | None = None
        self._room_waiter: anyio.Event | None = None
        self._closed = False
        self._evicts_at_once = policy is _DROP_OLDEST and not gap_events
        self._bound = bound
        self._gap_events = gap_events
        self._buffered = 0
        self._delivered = 0
        self._dropped = 0
        self._matched = 0
        self._ended = False
        #: Replayed events read from history and not yet handed out (held by
        #: the subscription's replay reader, counted here).
        self._held = 0

    # -- the counters -----------------------------------------------------------
    #
    # ``matched == delivered + dropped + buffered`` after every method: each one
    # that changes a counter moves events from one column to another, or adds
    # the same number to ``matched`` and to one column.

    @property
    def policy(self) -> Overflow:
        """The overflow policy."""
        return self._policy

    @property
    def gap_events(self) -> bool:
        """Whether losses are announced with ``EventsDropped`` notices."""
        return self._gap_events

    @property
    def dropped(self) -> int:
        """Events lost: evicted, discarded, lost from history, or closed away."""
        return self._dropped

    def statistics(self, name: str) -> SubscriptionStatistics:
        """A snapshot of the counters, for the subscription called *name*."""
        return SubscriptionStatistics(
            name=name,
            buffered=self._buffered + self._held,
            buffer_size=self._bound,
            delivered=self._delivered,
            dropped=self._dropped,
            matched=self._matched,
            overflow=self._policy,
        )

    # -- replay's accounting ----------------------------------------------------

    def read_from_history(self, count: int) -> None:
        """*count* matching events were read ahead from history: matched, and
        held (by the replay reader) until handed out."""
        self._matched += count
        self._held += count

    def hand_out_read(self) -> None:
        """One event read ahead from history was handed to the consumer."""
        self._held -= 1
        self._delivered += 1

    def lose_unread(self, count: int) -> None:
        """*count* matching events left history (or were never in it) before
        they were read: matched and dropped. (The replay reader announces them.)"""
        self._matched += count
        self._dropped += count

    @property
    def full(self) -> bool:
        """Whether a live event would meet a full buffer."""
        return self._buffered >= self._bound

    def _open(self) -> Callable[[Event], None]:
        """Make the stream (on the first send); return its ``send_nowait``."""
        if self._ended:
            raise anyio.ClosedResourceError
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._send, self._receive = send, receive
        self._receive_nowait = receive.receive_nowait
        self._send_nowait = send.send_nowait
        return send.send_nowait

    def _in_stream(self) -> int:
        """How many items the stream holds (dead ones included)."""
        return self._buffered - self._terminals + self._dead_count

    def _make_side(self) -> None:
        """Make the side deques, on the first item beside the stream."""
        if self._due is _NO_ITEMS:
            self._due, self._pending, self._dead = deque(), deque(), deque()

    def _put_beside(self, item: Item) -> None:
        """Put a terminal event or a loss marker after everything held."""
        if self._ended:
            raise anyio.ClosedResourceError
        self._make_side()
        self._beside += 1
        in_stream = self._in_stream()
        if in_stream:
            self._pending.append((self._taken + in_stream, item))
        else:
            self._due.append(item)

    def _settle(self) -> None:
        """Move what now comes before the stream's head from pending to due."""
        pending, taken = self._pending, self._taken
        while pending and pending[0][0] <= taken:
            self._due.append(pending.popleft()[1])

    # -- the send side --------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Buffer *event*, a non-terminal event, for the subscriber, applying the
        overflow policy if the buffer is full. Under ``BLOCK`` the caller has made
        sure there is room (or is closing the bus), so the event always goes in.
        """
        # The emit hot path is offer_each(), which inlines the common cases.
        self._matched += 1
        if self._buffered >= self._bound and self._policy is not _BLOCK:
            if self._policy is _DROP_NEWEST or self._buffered == self._terminals:
                self._lose_incoming(event)
                return
            self._evict_oldest()
        send = self._send_nowait
        if send is None:
            send = self._open()
        send(event)
        self._buffered += 1
        self._tail_gap = None
        if self._waiter is not None:
            self._wake()

    def offer_terminal(self, event: Event) -> None:
        """:meth:`offer` for a terminal event: it is never dropped. In a full
        buffer it makes room the policy's way (evicting the oldest or the newest
        evictable event), or goes in beyond the bound if there is none."""
        self._matched += 1
        if (
            self._buffered >= self._bound
            and self._policy is not _BLOCK
            and self._buffered > self._terminals
        ):
            if self._policy is _DROP_OLDEST:
                self._evict_oldest()
            else:
                self._kill_newest()
        self._put_beside(event)
        self._buffered += 1
        self._terminals += 1
        self._tail_gap = None
        self._wake()

    def lose(self, gap: Gap) -> None:
        """Count the ``gap.count`` matching events of *gap*, which never reached
        the buffer (gone from history before they were read), as matched and
        dropped, at the tail."""
        self._matched += gap.count
        self._dropped += gap.count
        if self._gap_events:
            self._gap_at_tail().merge(gap)
            self._wake()

    def end(self) -> None:
        """End the stream: the receiver gets what is buffered, then
        :exc:`anyio.EndOfStream`. Idempotent."""
        if not self._ended:
            self._ended = True
            if self._send is not None:
                self._send.close()
            self._wake()
            self.wake_room()

    def discard(self) -> None:
        """Close the subscription: what is still buffered is dropped (counted),
        and the receive end is closed. Idempotent."""
        self.end()
        self._closed = True
        self._tail_gap = None
        self._due.clear()
        self._pending.clear()
        self._dead.clear()
        self._dead_count = self._beside = 0
        self._dropped += self._buffered + self._held
        self._buffered = self._held = 0
        self._terminals = 0
        if self._receive is not None:
            self._receive.close()

    def _lose_incoming(self, event: Event) -> None:
        self._dropped += 1
        if self._gap_events:
            self._gap_at_tail().add(event)
            self._wake()

    def _gap_at_tail(self) -> Gap:
        gap = self._tail_gap
        if gap is None:
            gap = self._tail_gap = Gap()
            self._put_beside(gap)
        return gap

    def _evict_oldest(self) -> None:
        """Evict the stream's head, a live evictable event (no policy but
        ``DROP_NEWEST`` leaves dead ones), leaving a marker in its place."""
        receive = self._receive_nowait
        assert receive is not None
        victim = receive()
        self._taken += 1
        self._buffered -= 1
        self._dropped += 1
        if self._gap_events:
            due = self._due
            if due and type(due[-1]) is Gap:
                due[-1].add(victim)
            else:
                self._make_side()
                self._due.append(Gap.of(victim))
                self._beside += 1
        self._settle()

    def _kill_newest(self) -> None:
        """``DROP_NEWEST``: mark the newest live evictable event dead, where it
        is (it is skipped, or handed out as a loss, when it reaches the head)."""
        self._make_side()
        dead = self._dead
        tail = self._taken + self._in_stream() - 1
        victim = dead[-1][0] - 1 if dead and dead[-1][1] == tail + 1 else tail
        if dead and dead[-1][0] == victim + 1:
            dead[-1][0] = victim
            if len(dead) > 1 and dead[-2][1] == victim:
                dead[-2][1] = dead.pop()[1]
        elif dead and dead[-1][1] == victim:
            dead[-1][1] = victim + 1
        else:
            dead.append([victim, victim + 1])
        self._dead_count += 1
        self._beside += 1
        self._buffered -= 1
        self._dropped += 1

    def _head_is_dead(self) -> bool:
        """Whether the stream's head is dead; if so, forget that it is (the
        caller takes it)."""
        dead = self._dead
        if not dead or dead[0][0] != self._taken:
            return False
        run = dead[0]
        run[0] += 1
        if run[0] == run[1]:
            dead.popleft()
        self._dead_count -= 1
        self._beside -= 1
        return True

    # -- the receive side -----------------------------------------------------

    def _nothing(self) -> Exception:
        """What taking from an empty buffer raises."""
        if self._closed:
            return anyio.ClosedResourceError()
        if self._ended:
            return anyio.EndOfStream()
        return anyio.WouldBlock()

    def take(self) -> Event:
        """Take the next event or gap notice without waiting.

        :raises anyio.WouldBlock: if nothing is buffered
        :raises anyio.EndOfStream: if nothing is buffered and the stream has ended
        :raises anyio.ClosedResourceError: if the subscription was closed
        """
        if self._beside:
            return self._take_in_order()
        receive = self._receive_nowait
        if receive is None:
            raise self._nothing()
        event = receive()
        self._buffered -= 1
        self._delivered += 1
        if self._room_waiter is not None:
            self.wake_room()
        return event

    def _take_in_order(self) -> Event:
        """:meth:`take` when terminal events, markers or dead events are held."""
        while True:
            due = self._due
            if due:
                item = due.popleft()
                self._beside -= 1
                if type(item) is Gap:
                    return self._notice(item)
                self._terminals -= 1
                return self._handed_out(item)  # type: ignore[arg-type]
            receive = self._receive_nowait
            if receive is None:
                raise self._nothing()
            event = receive()
            dead = self._head_is_dead()
            self._taken += 1
            self._settle()
            if not dead:
                return self._handed_out(event)
            if self._gap_events:
                gap = Gap()
                gap.add(event)
                return self._notice(gap)

    def _handed_out(self, event: Event) -> Event:
        self._buffered -= 1
        self._delivered += 1
        if self._room_waiter is not None:
            self.wake_room()
        return event

    def _notice(self, gap: Gap) -> EventsDropped:
        """The notice for *gap*, the marker at the head, with every marker (and
        dead event) right after it merged in."""
        due, tail = self._due, self._tail_gap
        handed_tail = gap is tail
        while True:
            if due:
                if type(due[0]) is not Gap:
                    break
                other = due.popleft()
                self._beside -= 1
                handed_tail = handed_tail or other is tail
                gap.merge(other)  # type: ignore[arg-type]
            elif self._head_is_dead():
                assert self._receive_nowait is not None
                gap.add(self._receive_nowait())
                self._taken += 1
                self._settle()
            else:
                break
        if handed_tail:
            self._tail_gap = None
        return gap.notice()

    def take_batch(self, limit: int) -> list[Event]:
        """Take up to *limit* (>= 1) ready events and gap notices, in order,
        without waiting.

        :raises anyio.WouldBlock: if nothing is buffered
        :raises anyio.EndOfStream: if nothing is buffered and the stream has ended
        :raises anyio.ClosedResourceError: if the subscription was closed
        """
        if self._beside:
            return take_up_to(self.take, limit)
        # Nothing beside the stream: it holds exactly ``buffered`` events.
        count = min(limit, self._buffered)
        if not count:
            raise self._nothing()
        receive = self._receive_nowait
        assert receive is not None
        events: list[Event] = [receive() for _ in range(count)]
        self._buffered -= count
        self._delivered += count
        if self._room_waiter is not None:
            self.wake_room()
        return events

    def withdraw(self, count: int) -> None:
        """*count* events taken from this buffer were not handed to the consumer
        after all (a merged replay that ended before them): count them as
        dropped, not delivered."""
        self._delivered -= count
        self._dropped += count

    async def wait(self) -> None:
        """Wait until something may be taken (or the stream ended).

        Cancellation leaves everything buffered where it was."""
        if self._waiter is None:
            self._waiter = anyio.Event()
        await self._waiter.wait()

    async def wait_for_room(self) -> None:
        """Wait until a live event would not meet a full buffer, or the stream
        ended. Cancellation has no effect on the buffer."""
        if self._room_waiter is None:
            self._room_waiter = anyio.Event()
        await self._room_waiter.wait()

    def wake(self) -> None:
        """Wake the task waiting to take: something may have become ready that
        is not in the buffer (the subscription's reader has started)."""
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def wake_room(self, *, force: bool = False) -> None:
        """Wake the publishers waiting for room, if there is room (or *force*)."""
        waiter = self._room_waiter
        if waiter is not None and (
            force or self._ended or self._buffered < self._bound
        ):
            self._room_waiter = None
            waiter.set()


def take_up_to(take: Callable[[], T], limit: int) -> list[T]:
    """Call *take* until it has given *limit* items, or raises
    :exc:`anyio.WouldBlock` or :exc:`anyio.EndOfStream`; return what it gave
    (that exception if it gave nothing)."""
    items: list[T] = []
    try:
        while len(items) < limit:
            items.append(take())
    except (anyio.WouldBlock, anyio.EndOfStream):
        if not items:
            raise
    return items


def offer_each(
    event: Event,
    entries: Iterable[
        tuple[int, Callable[[Event], bool] | None, OverflowSender, object]
    ],
    terminal: bool,
) -> None:
    """Deliver an accepted *event* to the buffer of each entry (``(visibility
    level, the rest of the filter or None, buffer, owner)``) whose filter
    passes: :meth:`OverflowSender.offer_terminal` for a *terminal* event, else
    :meth:`OverflowSender.offer`, with its common case (room in the buffer, or
    a drop-oldest eviction from the head) inlined: this is the emit's hot path,
    one frame for every subscriber. Part of :class:`OverflowSender`'s own code
    (it keeps the invariant); a function only to save a call per subscriber."""
    visibility = int(event.visibility)
    if terminal:
        for level, match, sender, _ in entries:
            if visibility <= level and (match is None or match(event)):
                sender.offer_terminal(event)
        return
    for level, match, sender, _ in entries:
        if visibility <= level and (match is None or match(event)):
            send = sender._send_nowait
            if send is None:
                sender.offer(event)  # the first item: makes the stream
                continue
            if sender._buffered < sender._bound:
                sender._buffered += 1
            elif sender._evicts_at_once and not sender._terminals:
                # Full, drop-oldest without markers, nothing beside the stream:
                # _evict_oldest() in one step, and take the head's place.
                sender._receive_nowait()  # type: ignore[misc]
                sender._dropped += 1
            else:
                sender.offer(event)  # full: the policy decides
                continue
            sender._matched += 1
            send(event)
            sender._tail_gap = None
            if sender._waiter is not None:
                sender._wake()
