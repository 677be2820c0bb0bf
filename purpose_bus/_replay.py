"""A subscription's way through history to its live events: the replay reader.

A subscription made with ``replay=True`` or ``after=`` starts by reading the
bus's history from a cursor, in batches of :data:`READ_AHEAD` matching events
read as the consumer receives (so replayed events are not subject to the buffer's
bound), and switches to live events the moment it has read everything history
holds for it. Events history evicts before the reader reached them are lost,
counted, and announced after what was read ahead. The reader owns the cursor,
the events read ahead, the pending loss notice and the switch; the bus drives it
through :meth:`ReplayReader.lost` (an eviction it has not read), the
subscription through the :class:`Reader` interface (:meth:`~Reader.start`,
:meth:`~Reader.take`, :meth:`~Reader.discard`), and it asks the bus for the
switch through the seam (:meth:`BusSeam.go_live`). Its counts go to the
subscription's buffer, which owns the accounting.

A merged replay (:class:`~purpose_bus._remote.MergedReader`) is a
:class:`Reader` too; it reads the local history through a
:class:`ReplayReader` (:meth:`ReplayReader.read_run`).

Everything here runs on the bus's event loop thread.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from ._events import Event
from ._filters import EventFilter
from ._sender import Gap, OverflowSender

if TYPE_CHECKING:
    from ._bus import BusSeam
    from ._subscription import Subscription

__all__ = ["READ_AHEAD", "Reader", "ReplayReader"]

#: How many replayed events are read from history at a time.
READ_AHEAD = 64


class Reader(Protocol):
    """What a subscription takes its events from until it switches to live
    events (then it takes from its buffer): the one hook of every receive
    (``receive_nowait``, ``receive``, iteration, ``receive_batch``,
    ``batches``). Made by :meth:`BusSeam.register`."""

    async def start(self) -> None:
        """Called once, when the subscription is entered, after it was
        registered (live events are buffered from then on): a merged replay
        reads its sources here. Raising (or cancelled), the subscription is
        closed; returning, the subscription wakes a task that waited to
        receive meanwhile (whatever the reader now holds)."""

    def take(self) -> Event | None:
        """The next event (or loss notice) without waiting; ``None`` once the
        subscription takes from its buffer alone (it drops the reader then).

        :raises anyio.WouldBlock: if nothing is ready
        :raises anyio.EndOfStream: if the subscription has ended
        """

    def discard(self) -> None:
        """Stop: the subscription was closed (its buffer counts what was read
        and not handed out as dropped)."""


class ReplayReader:
    """Reads one subscription's matching history from a cursor, then asks the
    bus to switch it to live events (:meth:`BusSeam.go_live`, once) when it has
    read everything history holds for it."""

    __slots__ = (
        "_buffer",
        "_cursor",
        "_filter",
        "_gap",
        "_history",
        "_live",
        "_owner",
        "_read",
        "_seam",
    )

    def __init__(
        self,
        seam: BusSeam,
        owner: Subscription[Event],
        flt: EventFilter,
        buffer: OverflowSender,
        cursor: int,
    ) -> None:
        self._seam = seam
        self._owner = owner
        self._history = seam.history
        self._filter = flt
        self._buffer = buffer
        self._cursor = cursor
        self._live = False
        self._read: deque[Event] = deque()
        self._gap: Gap | None = None

    @property
    def cursor(self) -> int:
        """The offset last read from history."""
        return self._cursor

    @property
    def live(self) -> bool:
        """Whether the reader has switched to live events (it is done)."""
        return self._live

    def lost(self, gap: Gap) -> None:
        """The ``gap.count`` matching events of *gap* left history (or were
        never in it) before they were read: count them as dropped and announce
        them after what was read ahead."""
        self._buffer.lose_unread(gap.count)
        if self._buffer.gap_events:
            if self._gap is None:
                self._gap = Gap()
            self._gap.merge(gap)

    async def start(self) -> None:
        """Nothing to do: the reader reads history as the consumer receives."""

    def take(self) -> Event | None:
        """The next replayed event or loss notice; ``None`` once the reader has
        switched to live (take from the buffer then)."""
        read = self._read
        while not self._live:
            if read:
                self._buffer.hand_out_read()
                event = read.popleft()
                # Caught up? Switch to live now, not at the next receive:
                # history could evict what a live buffer has room for.
                if not read and self._gap is None and not self._read_more():
                    self._switch()
                return event
            if self._gap is not None:
                gap, self._gap = self._gap, None
                return gap.notice()
            if not self._read_more():
                self._switch()
        return None

    def discard(self) -> None:
        """Forget what was read ahead (the buffer counts it as dropped when it
        is discarded) and stop: the subscription was closed."""
        self._read.clear()
        self._gap = None
        self._live = True

    def read_run(self) -> list[Event]:
        """For a merged replay, before the first :meth:`take`: every event of
        the filter's runs that history holds after the cursor, whatever the
        rest of the filter (the merge places events by those it does not hand
        out), in offset order; the cursor moves past them, so the reader goes
        on with what is accepted later. Counts nothing: the caller counts what
        it hands out. A loss notice pending stays pending."""
        assert not self._read and not self._live
        events = list(self._history.iter_after(self._cursor, self._filter.run_ids))
        if events:
            self._cursor = events[-1].offset
        return events

    def _switch(self) -> None:
        self._live = True
        self._seam.go_live(self._owner)

    def _read_more(self) -> bool:
        """Read up to :data:`READ_AHEAD` matching events; whether any were."""
        matches = self._filter.matches
        read = self._read
        for event in self._history.iter_after(self._cursor, self._filter.run_ids):
            self._cursor = event.offset
            if matches(event):
                read.append(event)
                if len(read) >= READ_AHEAD:
                    break
        self._buffer.read_from_history(len(read))
        return bool(read)
