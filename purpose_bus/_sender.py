"""The drop-oldest sender: one subscription's bounded buffer on an AnyIO memory
object stream, with overflow policies and terminal priority.

The AnyIO stream itself is unbounded; this sender enforces the subscription's
``buffer_size``. It evicts from the head of the stream with the receive end's
``receive_nowait()`` (AnyIO has no public way to evict from the send side).
Receivers never wait inside the stream: they wait on an :class:`anyio.Event` and
then take with ``receive_nowait()``, so every event stays in the stream's buffer
until it is taken, a cancelled receiver loses nothing, and the count of buffered
events is exact.

The stream is made when the first item is sent into it: an idle subscription
(one that has matched nothing yet) costs only this object and its counters.

Losses are remembered, when the subscriber asked for ``gap_events``, as gap
markers at the position of the loss: in the stream (where an event was
discarded or evicted from the middle) or, for evictions at the head, in
``_head_gap`` which precedes everything in the stream. A receiver turns a
marker into an :class:`~purpose_bus.EventsDropped` notice.

Everything here runs on the bus's event loop thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar, Union

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._events import Event, EventsDropped
from ._overflow import Overflow

__all__ = ["Gap", "OverflowSender", "offer_each", "take_up_to"]

T = TypeVar("T")


class Gap:
    """A run of lost events at one position of a subscriber's stream."""

    __slots__ = ("count", "first_offset", "lane_id", "last_offset", "run_id")

    def __init__(self) -> None:
        self.count = 0
        self.first_offset = 0
        self.last_offset = 0
        self.run_id = ""
        self.lane_id = ""

    def add(self, event: Event) -> None:
        """Count *event* as lost here."""
        self.add_range(1, event.offset, event.offset, event.run_id, event.lane_id)

    def add_range(
        self, count: int, first: int, last: int, run_id: str, lane_id: str
    ) -> None:
        """Count *count* events with offsets in ``first..last`` as lost here."""
        if self.count == 0 or first < self.first_offset:
            self.first_offset = first
            self.run_id = run_id
            self.lane_id = lane_id
        self.last_offset = max(self.last_offset, last)
        self.count += count

    def merge(self, other: Gap) -> None:
        """Absorb *other*, a gap adjacent to this one."""
        self.add_range(
            other.count,
            other.first_offset,
            other.last_offset,
            other.run_id,
            other.lane_id,
        )

    def notice(self) -> EventsDropped:
        """The notice a subscriber receives for this gap."""
        return EventsDropped(
            run_id=self.run_id,
            lane_id=self.lane_id,
            count=self.count,
            first_offset=self.first_offset,
            last_offset=self.last_offset,
        )


Item = Union[Event, Gap]  # noqa: UP007  (a runtime alias)


class OverflowSender:
    """One subscription's buffer: the send and receive ends of an unbounded AnyIO
    memory object stream (made when the first item is sent), plus the counters.

    ``matched == delivered + dropped + buffered`` holds after every method.
    """

    __slots__ = (
        "_closed",
        "_evicts_at_once",
        "_head_gap",
        "_policy",
        "_receive",
        "_receive_nowait",
        "_room_waiter",
        "_send",
        "_send_nowait",
        "_tail_gap",
        "_terminals",
        "_waiter",
        "bound",
        "buffered",
        "delivered",
        "dropped",
        "ended",
        "gap_events",
        "matched",
    )

    def __init__(self, bound: int, policy: Overflow, gap_events: bool) -> None:
        self._send: MemoryObjectSendStream[Item] | None = None
        self._receive: MemoryObjectReceiveStream[Item] | None = None
        self._send_nowait: Callable[[Item], None] | None = None
        self._receive_nowait: Callable[[], Item] | None = None
        self._policy = policy
        self._head_gap: Gap | None = None
        self._tail_gap: Gap | None = None
        self._terminals = 0
        self._waiter: anyio.Event | None = None
        self._room_waiter: anyio.Event | None = None
        self._closed = False
        self._evicts_at_once = policy is Overflow.DROP_OLDEST and not gap_events
        self.bound = bound
        self.gap_events = gap_events
        self.buffered = 0
        self.delivered = 0
        self.dropped = 0
        self.matched = 0
        self.ended = False

    @property
    def policy(self) -> Overflow:
        """The overflow policy."""
        return self._policy

    @property
    def full(self) -> bool:
        """Whether a live event would meet a full buffer."""
        return self.buffered >= self.bound

    def _open(self) -> Callable[[Item], None]:
        """Make the stream (on the first send); return its ``send_nowait``."""
        if self.ended:
            raise anyio.ClosedResourceError
        send, receive = anyio.create_memory_object_stream[Item](math.inf)
        self._send, self._receive = send, receive
        self._receive_nowait = receive.receive_nowait
        self._send_nowait = send.send_nowait
        return send.send_nowait

    def _put(self, item: Item) -> None:
        send = self._send_nowait
        if send is None:
            send = self._open()
        send(item)

    # -- the send side --------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Buffer *event*, a non-terminal event, for the subscriber, applying the
        overflow policy if the buffer is full. Under ``BLOCK`` the caller has made
        sure there is room (or is closing the bus), so the event always goes in.
        """
        # The emit hot path is offer_each(), which inlines the common cases.
        self.matched += 1
        send = self._send_nowait
        if send is None:
            send = self._open()
        elif self.buffered >= self.bound and not self._made_room(event):
            return
        send(event)
        self.buffered += 1
        self._tail_gap = None
        if self._waiter is not None:
            self._wake()

    def offer_terminal(self, event: Event) -> None:
        """:meth:`offer` for a terminal event: it is never dropped."""
        self.matched += 1
        if self.buffered >= self.bound:
            self._made_room(event)
        self._put(event)
        self.buffered += 1
        self._terminals += 1
        self._tail_gap = None
        self._wake()

    def _made_room(self, event: Event) -> bool:
        """The buffer is full: apply the policy. Return whether *event* goes in
        (it was counted as dropped otherwise)."""
        policy = self._policy
        if policy is Overflow.DROP_OLDEST and not self._terminals:
            self._evict_head()
            return True
        if policy is Overflow.BLOCK:
            return True
        if policy is Overflow.DROP_NEWEST and not event.terminal:
            self._lose_incoming(event)
            return False
        return self._make_room(event)

    def lose(
        self, count: int, first: int, last: int, run_id: str, lane_id: str
    ) -> None:
        """Count *count* matching events that never reached the buffer (gone from
        history before they were read) as matched and dropped, at the tail."""
        self.matched += count
        self.dropped += count
        if self.gap_events:
            gap = self._tail_gap
            if gap is None:
                gap = self._tail_gap = Gap()
                self._put(gap)
            gap.add_range(count, first, last, run_id, lane_id)
            self._wake()

    def end(self) -> None:
        """End the stream: the receiver gets what is buffered, then
        :exc:`anyio.EndOfStream`. Idempotent."""
        if not self.ended:
            self.ended = True
            if self._send is not None:
                self._send.close()
            self._wake()
            self.wake_room()

    def discard(self) -> None:
        """Close the subscription: what is still buffered is dropped (counted),
        and the receive end is closed. Idempotent."""
        self.end()
        self._closed = True
        self._head_gap = self._tail_gap = None
        self.dropped += self.buffered
        self.buffered = 0
        self._terminals = 0
        if self._receive is not None:
            self._receive.close()

    def _lose_incoming(self, event: Event) -> None:
        self.dropped += 1
        if self.gap_events:
            gap = self._tail_gap
            if gap is None:
                gap = self._tail_gap = Gap()
                self._put(gap)
            gap.add(event)
            self._wake()

    def _evict_head(self) -> None:
        # No terminal event is buffered, so the head is an event we may drop
        # (possibly behind gap markers, which join the head gap).
        receive = self._receive_nowait
        assert receive is not None
        while True:
            item = receive()
            if type(item) is Gap:
                self._gap_at_head().merge(item)
                continue
            self.buffered -= 1
            self.dropped += 1
            if self.gap_events:
                self._gap_at_head().add(item)  # type: ignore[arg-type]
            return

    def _gap_at_head(self) -> Gap:
        if self._head_gap is None:
            self._head_gap = Gap()
        return self._head_gap

    def _make_room(self, event: Event) -> bool:
        # The slow path: drain the stream, pick the victim, put the rest back.
        items = self._drain()
        if self._policy is Overflow.DROP_NEWEST:
            positions = range(len(items) - 1, -1, -1)
        else:
            positions = range(len(items))
        for index in positions:
            victim = items[index]
            if type(victim) is not Gap and not victim.terminal:  # type: ignore[union-attr]
                break
        else:
            index = -1
        if index >= 0:
            items[index] = self._lost_marker(items[index])  # type: ignore[arg-type]
        self._refill(items)
        if index >= 0 or event.terminal:
            return True
        self._lose_incoming(event)
        return False

    def _lost_marker(self, victim: Event) -> Gap | None:
        self.buffered -= 1
        self.dropped += 1
        if not self.gap_events:
            return None
        gap = Gap()
        gap.add(victim)
        return gap

    def _drain(self) -> list[Item | None]:
        items: list[Item | None] = []
        if self._head_gap is not None:
            items.append(self._head_gap)
            self._head_gap = None
        receive = self._receive_nowait
        assert receive is not None
        while True:
            try:
                items.append(receive())
            except anyio.WouldBlock:
                return items

    def _refill(self, items: list[Item | None]) -> None:
        previous: Item | None = None
        for item in items:
            if item is None:
                continue
            if type(item) is Gap and type(previous) is Gap:
                previous.merge(item)
                continue
            self._put(item)
            previous = item
        self._tail_gap = previous if type(previous) is Gap else None

    # -- the receive side -----------------------------------------------------

    def _nothing(self) -> Exception:
        """What taking from an empty buffer raises."""
        if self._closed:
            return anyio.ClosedResourceError()
        if self.ended:
            return anyio.EndOfStream()
        return anyio.WouldBlock()

    def take(self) -> Event:
        """Take the next event or gap notice without waiting.

        :raises anyio.WouldBlock: if nothing is buffered
        :raises anyio.EndOfStream: if nothing is buffered and the stream has ended
        :raises anyio.ClosedResourceError: if the subscription was closed
        """
        gap = self._head_gap
        if gap is not None:
            self._head_gap = None
            return gap.notice()
        receive = self._receive_nowait
        if receive is None:
            raise self._nothing()
        item = receive()
        if type(item) is Gap:
            if item is self._tail_gap:
                self._tail_gap = None
            return item.notice()
        self.buffered -= 1
        self.delivered += 1
        if self._terminals and item.terminal:  # type: ignore[union-attr]
            self._terminals -= 1
        if self._room_waiter is not None:
            self.wake_room()
        return item  # type: ignore[return-value]

    def take_batch(self, limit: int) -> list[Event]:
        """Take up to *limit* (>= 1) ready events and gap notices, in order,
        without waiting.

        :raises anyio.WouldBlock: if nothing is buffered
        :raises anyio.EndOfStream: if nothing is buffered and the stream has ended
        :raises anyio.ClosedResourceError: if the subscription was closed
        """
        if self.gap_events:
            return take_up_to(self.take, limit)
        # No gap markers anywhere: the stream holds exactly ``buffered`` events.
        count = min(limit, self.buffered)
        if not count:
            raise self._nothing()
        receive = self._receive_nowait
        assert receive is not None
        events: list[Event] = [receive() for _ in range(count)]  # type: ignore[misc]
        self.buffered -= count
        self.delivered += count
        if self._terminals:
            self._terminals -= sum(1 for event in events if event.terminal)
        if self._room_waiter is not None:
            self.wake_room()
        return events

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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def wake_room(self, *, force: bool = False) -> None:
        """Wake the publishers waiting for room, if there is room (or *force*)."""
        waiter = self._room_waiter
        if waiter is not None and (force or self.ended or self.buffered < self.bound):
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
) -> None:
    """The hot path of an emit: :meth:`OverflowSender.offer` *event*, a
    non-terminal event, to the sender of each entry (``(visibility level, the
    rest of the filter or None, sender, owner)``) whose filter passes; one frame
    for every subscriber, with the common case (room in the buffer) inlined."""
    visibility = int(event.visibility)
    for level, match, sender, _ in entries:
        if visibility <= level and (match is None or match(event)):
            send = sender._send_nowait
            if send is None:
                sender.offer(event)  # the first item: makes the stream
                continue
            if sender.buffered < sender.bound:
                sender.buffered += 1
            elif sender._evicts_at_once and not sender._terminals:
                # Full, drop-oldest without gap markers (the stream holds events
                # only): _evict_head() in one step, and take the head's place.
                sender._receive_nowait()  # type: ignore[misc]
                sender.dropped += 1
            else:
                sender.offer(event)  # full: the policy decides
                continue
            sender.matched += 1
            send(event)
            sender._tail_gap = None
            if sender._waiter is not None:
                sender._wake()
