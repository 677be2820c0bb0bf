"""A subscription's way through history to its live events: the replay reader.

A subscription made with ``replay=True`` or ``after=`` starts by reading the
bus's history from a cursor, in batches of :data:`READ_AHEAD` matching events
read as the consumer receives (so replayed events are not subject to the buffer's
bound), and switches to live events the moment it has read everything history
holds for it. Events history evicts before the reader reached them are lost,
counted, and announced after what was read ahead. The reader owns the cursor,
the events read ahead, the pending loss notice and the switch; the bus drives it
through :meth:`ReplayReader.lost` (an eviction it has not read) and the
subscription through :meth:`ReplayReader.take` and :meth:`ReplayReader.discard`,
and it asks the bus for the switch through the seam (:meth:`BusSeam.go_live`).
Its counts go to the subscription's buffer, which owns the accounting.

Everything here runs on the bus's event loop thread.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ._events import Event
from ._filters import EventFilter
from ._sender import Gap, OverflowSender

if TYPE_CHECKING:
    from ._bus import BusSeam
    from ._subscription import Subscription

__all__ = ["READ_AHEAD", "ReplayReader"]

#: How many replayed events are read from history at a time.
READ_AHEAD = 64


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
