"""Subscriptions indexed by run, so that an emit looks only at the subscriptions
of its own run and those that take every run: with many subscribers on other
runs, an emit costs about what it costs with one. The bus keeps two: its live
subscriptions, and the replay readers of those still reading history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ._events import Event
from ._filters import EventFilter
from ._overflow import Overflow
from ._sender import OverflowSender

__all__ = ["Entry", "SubscriberIndex"]

K = TypeVar("K")

#: One indexed owner: the most privileged visibility it takes (as an int), the
#: rest of its filter (``None`` if visibility is all there is to check; the run
#: condition is left out: the index has checked it), its buffer, and the owner
#: (a subscription, or a replay reader).
Entry = tuple[int, Callable[[Event], bool] | None, OverflowSender, K]


class SubscriberIndex(Generic[K]):
    """Owners by run. Buckets are tuples, replaced (never mutated) on change, so
    a bucket being iterated is never affected by it."""

    __slots__ = ("_any_run", "_by_run", "_entries", "_merged", "blocking", "size")

    def __init__(self) -> None:
        self._entries: dict[K, tuple[Entry[K], frozenset[str] | None]] = {}
        self._by_run: dict[str, tuple[Entry[K], ...]] = {}
        self._any_run: tuple[Entry[K], ...] = ()
        self._merged: dict[str, tuple[Entry[K], ...]] = {}
        #: How many indexed owners have the ``BLOCK`` policy.
        self.blocking = 0
        #: How many owners are indexed (an attribute: read on every emit).
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, owner: object) -> bool:
        return owner in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))

    def candidates(self, run_id: str) -> tuple[Entry[K], ...]:
        """The entries that may match an event of *run_id*, in the order they
        were added per bucket (the run's own first, then those of every run)."""
        merged = self._merged.get(run_id)
        if merged is not None:
            return merged
        bucket = self._by_run.get(run_id)
        if bucket is None:
            return self._any_run
        merged = self._merged[run_id] = bucket + self._any_run
        return merged

    def add(self, owner: K, flt: EventFilter, buffer: OverflowSender) -> None:
        """Index *owner*, whose events pass *flt* and go to *buffer*."""
        entry: Entry[K] = (
            int(flt.visibility),
            flt.lane_and_kind_matcher(),
            buffer,
            owner,
        )
        self._entries[owner] = (entry, flt.run_ids)
        self.size += 1
        if flt.run_ids is None:
            self._any_run = (*self._any_run, entry)
        else:
            for run in flt.run_ids:
                self._by_run[run] = (*self._by_run.get(run, ()), entry)
        self._merged.clear()
        if buffer.policy is Overflow.BLOCK:
            self.blocking += 1

    def remove(self, owner: K) -> None:
        """Drop *owner* from the index, if it is there."""
        found = self._entries.pop(owner, None)
        if found is None:
            return
        entry, run_ids = found
        self.size -= 1
        if run_ids is None:
            self._any_run = tuple(e for e in self._any_run if e is not entry)
        else:
            for run in run_ids:
                rest = tuple(e for e in self._by_run[run] if e is not entry)
                if rest:
                    self._by_run[run] = rest
                else:
                    del self._by_run[run]
        self._merged.clear()
        if entry[2].policy is Overflow.BLOCK:
            self.blocking -= 1

    def bucket(self, run_id: str) -> tuple[Entry[K], ...]:
        """The entries of the owners that name *run_id* in their filter."""
        return self._by_run.get(run_id, ())

    def clear(self) -> None:
        """Drop every owner."""
        self._entries.clear()
        self._by_run.clear()
        self._any_run = ()
        self._merged.clear()
        self.blocking = self.size = 0
