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


class _RunIndex(list[Event]):
    """One run's events in offset order; ``head`` skips the evicted ones.

    A run with a single event is held as that event alone (no index object):
    most of the bookkeeping of many tiny runs would be this object otherwise."""

    __slots__ = ("head",)

    def __init__(self, events: Iterable[Event]) -> None:
        super().__init__(events)
        self.head = 0

    def pop_oldest(self) -> bool:
        """Forget the oldest event; return whether none is left."""
        # Drop the reference now, so an evicted event is freed at once (the
        # slot is compacted away later; bisect starts at head, past the Nones).
        self[self.head] = None  # type: ignore[call-overload]
        head = self.head = self.head + 1
        if head > 32 and head * 2 > len(self):
            del self[:head]
            head = self.head = 0
        return head == len(self)

    def remaining(self) -> int:
        return len(self) - self.head

    def after(self, offset: int) -> Iterator[Event]:
        for index in range(
            bisect_right(self, offset, lo=self.head, key=_offset), len(self)
        ):
            yield self[index]


def _after(entry: Event | _RunIndex, offset: int) -> Iterator[Event]:
    if type(entry) is _RunIndex:
        return entry.after(offset)
    assert isinstance(entry, Event)
    return iter((entry,) if entry.offset > offset else ())


class History:
    """A ring of the last *size* accepted events (``size`` may be 0: no history).

    Not thread-safe: the bus uses it on its event loop thread only.
    """

    __slots__ = ("_by_run", "_newest", "_ring", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring: list[Event | None] = [None] * size
        self._newest = 0
        self._by_run: dict[str, Event | _RunIndex] = {}

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
        offset = self._newest = event.offset
        size = self._size
        if not size:
            return event
        ring = self._ring
        position = (offset - 1) % size
        evicted = ring[position]
        ring[position] = event
        by_run = self._by_run
        if evicted is not None:
            entry = by_run[evicted.run_id]
            if type(entry) is not _RunIndex:
                del by_run[evicted.run_id]
            else:
                if entry.pop_oldest():
                    del by_run[evicted.run_id]
        run_id = event.run_id
        current = by_run.get(run_id)
        if current is None:
            by_run[run_id] = event
        elif type(current) is _RunIndex:
            current.append(event)
        else:
            by_run[run_id] = _RunIndex((current, event))  # type: ignore[arg-type]
        return evicted

    @property
    def run_ids(self) -> frozenset[str]:
        """The runs history holds events of (a run it no longer holds any event
        of has no bookkeeping left)."""
        return frozenset(self._by_run)

    def index_slots(self, run_id: str) -> int:
        """How many slots the per-run index of *run_id* takes, evicted ones not
        yet compacted away included (0 if the run is not held): what its
        bookkeeping costs."""
        entry = self._by_run.get(run_id)
        if entry is None:
            return 0
        return len(entry) if type(entry) is _RunIndex else 1

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
            entries = [self._by_run[r] for r in run_ids if r in self._by_run]
            if len(entries) == 1:
                return _after(entries[0], offset)
            return heapq.merge(*(_after(e, offset) for e in entries), key=_offset)
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
