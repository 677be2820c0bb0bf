"""Merging the events of a run's parallel lanes into one deterministic stream."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from ._events import Event

__all__ = ["parallel_merge"]

logger = logging.getLogger("purpose_bus")

E = TypeVar("E", bound=Event)

#: A lane's next event in the heap: the ordering key ``(ts, lane_id, seq)``, then
#: the lane's key, unique among the entries, so two events are never compared.
_Entry = tuple[float, str, int, str, E]


class _Lane:
    """One lane being merged: its iterator and the seq of its last event."""

    __slots__ = ("events", "key", "last_seq", "strict")

    def __init__(self, key: str, events: Iterable[Event], strict: bool) -> None:
        self.key = key
        self.events: Iterator[Event] = iter(events)
        self.last_seq: int | None = None
        self.strict = strict

    def pull(self) -> Event | None:
        """The lane's next event, or ``None`` when it is exhausted; a seq lower
        than the previous one is logged (or raises :exc:`ValueError` if strict)."""
        event = next(self.events, None)
        if event is None:
            return None
        previous = self.last_seq
        if previous is not None and event.seq < previous:
            message = (
                f"parallel_merge: lane {self.key!r} goes backwards: "
                f"seq {event.seq} after seq {previous}"
            )
            if self.strict:
                raise ValueError(message)
            logger.warning("%s", message)
        self.last_seq = event.seq
        return event


def parallel_merge(
    lanes: Mapping[str, Iterable[E]], *, strict: bool = False
) -> list[E]:
    """Merge the events of parallel lanes into one list, deterministically.

    Each lane's events keep their own order. Among the lanes' next events, the
    one with the smallest ``(ts, lane_id, seq)`` comes first; two events equal on
    all three go in the order of their lanes' keys. So the result depends only
    on the lanes' contents, never on the order of *lanes* or on the moment of the
    call, and equal timestamps resolve the same way every time. A lane whose
    timestamps go backwards still keeps its order: its later events simply wait
    behind the earlier ones.

    The lanes are consumed lazily, one event at a time: the merge holds at most
    one pending event per lane and pulls a lane's next event only after its
    previous one has been placed, so lanes may be generators that produce events
    as they are asked for. Nothing is copied up front. An exception raised by a
    lane propagates from this call at the moment that event is pulled.

    A lane whose ``seq`` goes backwards (an event with a lower seq than the event
    before it in that lane) is logged as a warning on the ``"purpose_bus"``
    logger, naming the lane and both seqs, and the merge goes on; with
    ``strict=True`` it raises :exc:`ValueError` instead. An equal seq is not
    backwards.

    This is a plain function: it does not touch any bus and may be called from
    any thread.

    :param lanes: lane key -> the lane's events in their order
    :param strict: raise instead of warning when a lane's seq goes backwards
    :return: every event of every lane, merged
    :raises ValueError: if *strict* and a lane's seq goes backwards
    """
    heap: list[_Entry[E]] = []
    states: dict[str, _Lane] = {}
    for key, events in lanes.items():
        lane = states[key] = _Lane(key, events, strict)
        _push(heap, lane)
    merged: list[E] = []
    while heap:
        *_, key, event = heap[0]
        merged.append(event)
        lane = states[key]
        following = lane.pull()
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, _entry(key, following))  # type: ignore[arg-type]
    return merged


def _entry(key: str, event: E) -> _Entry[E]:
    return (event.ts, event.lane_id, event.seq, key, event)


def _push(heap: list[_Entry[E]], lane: _Lane) -> None:
    event = lane.pull()
    if event is not None:
        heapq.heappush(heap, _entry(lane.key, event))  # type: ignore[arg-type]
