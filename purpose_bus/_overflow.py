"""What a subscription does when an event meets its full buffer."""

from __future__ import annotations

import enum

__all__ = ["Overflow"]


class Overflow(enum.Enum):
    """The policy of a subscription whose buffer is full.

    Terminal events are never dropped under any policy and never reordered.
    """

    #: Evict the oldest buffered non-terminal event, count it as dropped, and
    #: buffer the new one (the default: a live view wants the newest events).
    DROP_OLDEST = "drop_oldest"
    #: Discard the incoming event for this subscriber and count it as dropped
    #: (the subscriber keeps a contiguous run of events).
    DROP_NEWEST = "drop_newest"
    #: Never drop: ``emit`` on the loop raises :exc:`anyio.WouldBlock` before the
    #: event is recorded or delivered anywhere, ``publish`` waits for room and a
    #: thread's hand-off waits.
    BLOCK = "block"
