"""Frozen snapshots of a bus's and a subscription's counters."""

from __future__ import annotations

import attrs

from ._overflow import Overflow

__all__ = ["BusStatistics", "SubscriptionStatistics"]


@attrs.frozen(kw_only=True)
class SubscriptionStatistics:
    """A snapshot of one subscription's counters.

    ``delivered + dropped + buffered`` equals the number of events the
    subscription matched, at every moment. While a subscription replays,
    history it has not read yet is not counted: an event counts as matched when
    it is read from history (or lost from it before it was read).
    """

    #: The subscription's name (given, or generated).
    name: str
    #: Matching events waiting to be received (replayed events read ahead included).
    buffered: int
    #: The bound on ``buffered`` for live events.
    buffer_size: int
    #: Matching events handed to the consumer (``EventsDropped`` notices excluded).
    delivered: int
    #: Matching events lost: evicted, discarded, gone from history before they were
    #: read, or discarded by :meth:`Subscription.close`.
    dropped: int
    #: The subscription's overflow policy.
    overflow: Overflow
    #: Matching events so far: ``delivered + dropped + buffered``, counted on
    #: their own (a replayed event counts when it is read from history).
    matched: int


@attrs.frozen(kw_only=True)
class BusStatistics:
    """A snapshot of a bus's counters."""

    #: Events accepted (stamped, recorded and delivered); the newest offset.
    emitted: int
    #: Events refused by a guard or by the run lifecycle check.
    rejected: int
    #: Events dropped for any subscriber, including subscriptions since closed.
    dropped: int
    #: Events currently held in history.
    history: int
    #: One snapshot per open subscription, in the order they were entered.
    subscriptions: tuple[SubscriptionStatistics, ...]
