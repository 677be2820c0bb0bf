"""Replay that reaches beyond the local history: a run-scoped subscription on a
bus with a replay source (an open :class:`~purpose_bus.redis.RedisBridge`)
first hands out what the source holds of the run, then the local history and
live events, skipping what it handed out already."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._events import Event, EventsDropped
from ._filters import EventFilter
from ._sender import take_up_to
from ._subscription import E_co, Subscription

if TYPE_CHECKING:
    from ._bus import BusSeam

__all__ = ["MergedReplay", "ReplaySource"]

#: Reads what a source holds of a run (every event of it the source may share,
#: whatever the subscription's filters), in the order they were appended.
ReplaySource = Callable[[str], Awaitable[Sequence[Event]]]


class MergedReplay(Subscription[E_co]):
    """A :class:`Subscription` made by ``bus.subscribe(run_id=..., replay=True)``
    (no ``after``) while the bus has replay sources.

    Entering registers it on the local bus first (live events are buffered
    from that moment), then reads the whole run from each source, then merges
    what the sources hold with what the local history holds of the run that
    they do not (events above a bridge's visibility level, or trimmed from
    Redis): each lane's events in ``seq`` order, the sources' order otherwise,
    and the run's terminal event last. It hands out the merged events that
    match its filters, then its live events, skipping every one whose
    ``span_id`` was merged already. If a source held the run's terminal event,
    it ends after handing it out (or where it would have, if the filters skip
    it); otherwise it ends as any run-scoped subscription does. Events from a
    source carry the ``offset`` of the bus that first accepted them. Its
    statistics count local events only (those it handed out live, and those
    merged from the local history as they are skipped).
    """

    __slots__ = ("_backlog", "_done", "_over", "_seen")

    def __init__(
        self,
        seam: BusSeam,
        flt: EventFilter,
        **kwargs: Any,
    ) -> None:
        super().__init__(seam, flt, **kwargs)
        self._backlog: deque[Event] = deque()
        self._seen: set[str] = set()
        self._over = False  # a source held the run's terminal event
        self._done = False  # ... and everything after it was handed out

    async def __aenter__(self) -> MergedReplay[E_co]:
        """Register with the bus, then read the run from every replay source.
        A cancellation point; cancelled (or failing) while reading, it closes
        the subscription and leaves nothing registered.

        :raises BusClosed: if the bus is not open (the subscription is closed)
        :raises RuntimeError: if this subscription was entered or closed before
        :raises Exception: what a source raises (for a bridge, a lost
            connection to Redis after its retries)
        """
        await super().__aenter__()
        run_id = self._filter.single_run
        assert run_id is not None
        seen = self._seen
        remote: list[Event] = []
        terminal: Event | None = None
        try:
            for source in self._seam.replay_sources():  # those open now
                for event in await source(run_id):
                    if event.span_id in seen or event.run_id != run_id:
                        continue
                    seen.add(event.span_id)
                    if event.terminal:
                        terminal = event
                        break
                    remote.append(event)
                if terminal is not None:
                    break
        except BaseException:
            self.close()
            raise
        if not remote and terminal is None:
            return self  # nothing from the sources: a plain replay
        held = list(self._seam.history.iter_after(0, self._filter.run_ids))
        twins = {e.span_id: e.offset for e in held if e.span_id in seen}
        local = [event for event in held if event.span_id not in seen]
        seen.update(event.span_id for event in local)
        if terminal is None:
            terminal = next((event for event in local if event.terminal), None)
        local = [event for event in local if not event.terminal]
        merged = _merge(remote, local, twins)
        if terminal is not None:
            merged.append(terminal)
            self._over = True
        matches = self._filter.matches
        self._backlog.extend(event for event in merged if matches(event))
        return self

    def close(self) -> None:
        self._done = False  # closed, not ended: receive raises ClosedResourceError
        self._backlog.clear()
        super().close()

    def receive_nowait(self) -> E_co:
        if self._done:
            raise anyio.EndOfStream
        if self._backlog:
            if self._closed:
                raise anyio.ClosedResourceError
            return self._backlog.popleft()  # type: ignore[return-value]
        if self._over:
            self._finish()
            raise anyio.EndOfStream
        seen = self._seen
        while True:
            event = super().receive_nowait()
            if event.span_id not in seen:
                return event

    def _finish(self) -> None:
        """End after the merged events of a run that is over: take what the
        local stream still holds (merged already, so counted as delivered; an
        event after the run's end would be counted as dropped), then
        unregister."""
        seen = self._seen
        unseen = 0
        while True:
            try:
                event = Subscription.receive_nowait(self)
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if event.span_id not in seen and not isinstance(event, EventsDropped):
                unseen += 1
        self._buffer.withdraw(unseen)
        Subscription.close(self)
        self._done = True

    def _take_batch(self, limit: int) -> list[Event]:
        # One by one, in this class's order (receive and async for take
        # receive_nowait, so they follow it too).
        return take_up_to(self.receive_nowait, limit)


def _merge(
    remote: list[Event], local: list[Event], twins: dict[str, int]
) -> list[Event]:
    """*remote* (in its order) with *local* (in offset order) woven in: a local
    event goes before the first remote event that the local history holds at a
    higher offset (*twins*: span id -> local offset), and before the first
    remote event of its lane with a higher ``seq``; the rest at the end, in
    their order."""
    if not local:
        return remote
    by_lane: dict[str, deque[Event]] = {}
    for event in local:
        by_lane.setdefault(event.lane_id, deque()).append(event)
    placed: set[str] = set()
    merged: list[Event] = []
    i = 0

    def place(event: Event) -> None:
        placed.add(event.span_id)
        merged.append(event)

    for event in remote:
        twin = twins.get(event.span_id)
        if twin is not None:
            while i < len(local) and local[i].offset < twin:
                if local[i].span_id not in placed:
                    place(local[i])
                i += 1
        lane = by_lane.get(event.lane_id)
        while lane and lane[0].seq < event.seq:
            earlier = lane.popleft()
            if earlier.span_id not in placed:
                place(earlier)
        merged.append(event)
    merged.extend(event for event in local if event.span_id not in placed)
    return merged
