"""The bus's live subscriptions, indexed by run, so that an emit looks only at
the subscriptions of its own run and those that take every run: with many
subscribers on other runs, an emit costs about what it costs with one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ._events import Event
from ._overflow import Overflow
from ._sender import OverflowSender

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = ["Entry", "SubscriberIndex"]

#: One live subscription: the most privileged visibility it takes (as an int),
#: the rest of its filter (``None`` if visibility is all there is to check; the
#: run condition is left out: the index has checked it), its buffer, and the
#: subscription itself.
Entry = tuple[
    int, Callable[[Event], bool] | None, OverflowSender, "Subscription[Event]"
]


class SubscriberIndex:
    """Live subscriptions by run. Buckets are tuples, replaced (never mutated)
    on change, so a bucket being iterated is never affected by it."""

    __slots__ = ("_any_run", "_by_run", "_entries", "_merged", "blocking")

    def __init__(self) -> None:
        self._entries: dict[Subscription[Event], Entry] = {}
        self._by_run: dict[str, tuple[Entry, ...]] = {}
        self._any_run: tuple[Entry, ...] = ()
        self._merged: dict[str, tuple[Entry, ...]] = {}
        #: How many live subscriptions have the ``BLOCK`` policy.
        self.blocking = 0

    @property
    def count(self) -> int:
        """How many subscriptions are indexed."""
        return len(self._entries)

    def __contains__(self, subscription: object) -> bool:
        return subscription in self._entries

    def __iter__(self) -> Iterator[Subscription[Event]]:
        return iter(list(self._entries))

    def candidates(self, run_id: str) -> tuple[Entry, ...]:
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

    def add(self, subscription: Subscription[Event]) -> None:
        """Index *subscription* (its filter and buffer are fixed from now on)."""
        flt = subscription.filter
        entry: Entry = (
            int(flt.visibility),
            flt.lane_and_kind_matcher(),
            subscription.sender,
            subscription,
        )
        self._entries[subscription] = entry
        if flt.run_ids is None:
            self._any_run = (*self._any_run, entry)
        else:
            for run in flt.run_ids:
                self._by_run[run] = (*self._by_run.get(run, ()), entry)
        self._merged.clear()
        if subscription.sender.policy is Overflow.BLOCK:
            self.blocking += 1

    def remove(self, subscription: Subscription[Event]) -> None:
        """Drop *subscription* from the index, if it is there."""
        entry = self._entries.pop(subscription, None)
        if entry is None:
            return
        run_ids = subscription.filter.run_ids
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
        if subscription.sender.policy is Overflow.BLOCK:
            self.blocking -= 1

    def bucket(self, run_id: str) -> tuple[Entry, ...]:
        """The entries of the subscriptions that name *run_id* in their filter."""
        return self._by_run.get(run_id, ())

    def clear(self) -> None:
        """Drop every subscription."""
        self._entries.clear()
        self._by_run.clear()
        self._any_run = ()
        self._merged.clear()
        self.blocking = 0
