"""Merging the events of a run's parallel lanes into one deterministic stream."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from ._events import Event
from ._validate import flag

__all__ = ["parallel_merge"]

logger = logging.getLogger("purpose_bus")

E = TypeVar("E", bound=Event)


class _Lane(Generic[E]):
    """One lane being merged: its iterator and the seq of its last event."""

    __slots__ = ("events", "key", "last_seq", "strict")

    def __init__(self, key: str, events: Iterable[E], strict: bool) -> None:
        self.key = key
        self.events: Iterator[E] = iter(events)
        self.last_seq: int | None = None
        self.strict = strict

    def pull(self) -> E | None:
        """The lane's next event, or ``None`` when it is exhausted; a seq lower
        than the previous one is logged (or raises :exc:`ValueError` if strict)."""
        event = next(self.events, None)
        if event is None:
            return None
        previous = self.last_seq
        if previous is not None and event.seq < previous:
            message = (
                f"parallel_merge: the seq of lane {self.key!r} goes backwards: "
                f"seq {event.seq} after seq {previous}"
            )
            if self.strict:
                raise ValueError(message)
            logger.warning("%s", message)
        self.last_seq = event.seq
        return event


#: A lane's next event in the heap: the ordering key ``(ts, lane_id, seq)``, then
#: the lane's key, unique among the entries, so two events are never compared.
_Entry = tuple[float, str, int, str, E]


def _entry(key: str, event: E) -> _Entry[E]:
    return (event.ts, event.lane_id, event.seq, key, event)


def parallel_merge(
    lanes: Mapping[str, Iterable[E]], *, strict: bool = False
) -> list[E]:
    """Merge the events of parallel lanes into one list, deterministically.

    Each lane keeps its own order. Among the lanes' next events, the one with the
    smallest ``(ts, lane_id, seq)`` comes first; events equal on all three go in
    the order of their lanes' keys. The result therefore depends only on the
    lanes' contents, never on the order of *lanes*, and equal timestamps resolve
    the same way every time. A lane whose timestamps go backwards still keeps its
    order: its later events wait behind its earlier ones.

    The lanes are consumed lazily, not copied first: the merge holds at most one
    pending event per lane, and pulls a lane's next event only once the previous
    one has been placed, so a lane may be a generator that makes its events as
    they are asked for. An exception raised by a lane propagates from this call
    when that lane is pulled.

    A lane whose ``seq`` goes backwards (an event with a lower seq than the one
    before it in that lane; an equal seq is not backwards) is logged as a
    warning on the ``"purpose_bus"`` logger, naming the lane and both seqs, and
    the merge goes on; with ``strict=True`` it raises :exc:`ValueError` instead.

    A plain function: it touches no bus and may be called from any thread.

    :param lanes: lane key -> that lane's events, in the lane's order
    :param strict: raise instead of warning when a lane's seq goes backwards
    :return: every event of every lane, merged
    :raises TypeError: if *strict* is not a bool
    :raises ValueError: if *strict* and a lane's seq goes backwards
    """
    flag("strict", strict)
    heap: list[_Entry[E]] = []
    pending: dict[str, _Lane[E]] = {}
    for key, events in lanes.items():
        lane = pending[key] = _Lane(key, events, strict)
        first = lane.pull()
        if first is not None:
            heapq.heappush(heap, _entry(key, first))
    merged: list[E] = []
    while heap:
        key, event = heap[0][3:]
        merged.append(event)
        following = pending[key].pull()
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, _entry(key, following))
    return merged
