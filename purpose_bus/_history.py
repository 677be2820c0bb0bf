"""The bus's history: a ring of the last ``size`` accepted events, with a per-run
index so that replaying one run costs time proportional to that run's events.

Offsets are contiguous (the bus stamps 1, 2, 3 ...), so the event at an offset
sits at a computed position of the ring: no scan. The ring evicts one event at a
time, the oldest first.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from operator import attrgetter

from ._events import Event
from ._filters import EventFilter

__all__ = ["History"]

_offset = attrgetter("offset")


class _RunIndex:
    """One run's events in offset order; ``head`` skips the evicted ones."""

    __slots__ = ("events", "head")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.head = 0

    def pop_oldest(self) -> None:
        self.head += 1
        if self.head > 32 and self.head * 2 > len(self.events):
            del self.events[: self.head]
            self.head = 0

    def __len__(self) -> int:
        return len(self.events) - self.head

    def after(self, offset: int) -> Iterator[Event]:
        events = self.events
        for index in range(
            bisect_right(events, offset, lo=self.head, key=_offset), len(events)
        ):
            yield events[index]


class History:
    """A ring of the last *size* accepted events (``size`` may be 0: no history).

    Not thread-safe: the bus uses it on its event loop thread only.
    """

    __slots__ = ("_by_run", "_newest", "_ring", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring: list[Event | None] = [None] * size
        self._newest = 0
        self._by_run: dict[str, _RunIndex] = {}

    def __len__(self) -> int:
        return min(self._newest, self._size)

    @property
    def size(self) -> int:
        """The most events held."""
        return self._size

    @property
    def newest(self) -> int:
        """The offset of the newest event appended (0 before any)."""
        return self._newest

    @property
    def oldest(self) -> int:
        """The offset of the oldest event held; ``newest + 1`` when empty."""
        return self._newest - len(self) + 1

    def append(self, event: Event) -> Event | None:
        """Record *event*, whose offset must be ``newest + 1``; return the event
        evicted to make room, if any."""
        self._newest = event.offset
        if not self._size:
            return event
        position = (event.offset - 1) % self._size
        evicted = self._ring[position]
        self._ring[position] = event
        if evicted is not None:
            index = self._by_run[evicted.run_id]
            index.pop_oldest()
            if not index:
                del self._by_run[evicted.run_id]
        current = self._by_run.get(event.run_id)
        if current is None:
            current = self._by_run[event.run_id] = _RunIndex()
        current.events.append(event)
        return evicted

    def get(self, offset: int) -> Event | None:
        """The event at *offset*, or ``None`` if it is not held."""
        if self.oldest <= offset <= self._newest:
            return self._ring[(offset - 1) % self._size]
        return None

    def iter_after(
        self, offset: int, run_ids: frozenset[str] | None
    ) -> Iterator[Event]:
        """The events held with an offset above *offset*, in offset order; only
        those of *run_ids* when given (through the per-run index). The iterator is
        lazy: consume it before the history changes."""
        if run_ids is not None:
            indexes = [self._by_run[r] for r in run_ids if r in self._by_run]
            if len(indexes) == 1:
                return indexes[0].after(offset)
            return heapq.merge(*(i.after(offset) for i in indexes), key=_offset)
        return self._ring_after(offset)

    def _ring_after(self, offset: int) -> Iterator[Event]:
        ring, size = self._ring, self._size
        for at in range(max(offset + 1, self.oldest), self._newest + 1):
            yield ring[(at - 1) % size]  # type: ignore[misc]

    def select(
        self, flt: EventFilter, *, after: int = 0, since_seq: int = 0
    ) -> list[Event]:
        """The events held that pass *flt*, with an offset above *after* and a seq
        above *since_seq*, in offset order."""
        events: Iterable[Event] = self.iter_after(after, flt.run_ids)
        matches = flt.matches
        return [e for e in events if e.seq > since_seq and matches(e)]
