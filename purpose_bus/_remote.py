"""Replay that reaches beyond the local history: a run-scoped subscription on a
bus with a replay source (an open :class:`~purpose_bus.redis.RedisBridge`)
first hands out what the source holds of the run, then the local history and
live events, skipping what it handed out already.

Which events are "the same" is decided by identities the source assigns from
coordinates the buses and Redis assign, never from user data such as
``span_id``: ``attrs.evolve`` keeps a ``span_id``, and one object may be
emitted twice, yet those are distinct events. The source gives each event it
reads an identity, and gives one to each event of the local history (what an
event of this bus that the source also holds is called there); equal
identities are one event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ._events import Event, EventsDropped
from ._filters import EventFilter
from ._sender import take_up_to
from ._subscription import E_co, Subscription, _get_ident, wrong_thread

if TYPE_CHECKING:
    from ._bus import BusSeam

__all__ = ["MergedReplay", "ReplaySource"]


@attrs.frozen
class ReplaySource:
    """Where ``subscribe(run_id=..., replay=True)`` reads a run beyond the
    local history (internal: what a bridge registers with the bus)."""

    #: Reads every event of a run the source may share (whatever the
    #: subscription's filters), in the order they were appended, each with its
    #: identity.
    read: Callable[[str], Awaitable[Sequence[tuple[Hashable, Event]]]]
    #: The identity of an event of the local history (as the bus stamped it):
    #: equal to the identity :attr:`read` gives the same event, if it has it.
    #: Called on the loop, cheap (no I/O).
    identity: Callable[[Event], Hashable]


class MergedReplay(Subscription[E_co]):
    """A :class:`Subscription` made by ``bus.subscribe(run_id=..., replay=True)``
    (no ``after``) while the bus has replay sources.

    Entering registers it on the local bus first (live events are buffered
    from that moment), then reads the whole run from each source, then merges
    what the sources hold with what the local history holds of the run that
    they do not (events above a bridge's visibility level, or trimmed from
    Redis): each lane's events in ``seq`` order, the sources' order otherwise,
    and the run's terminal event last. An event both hold is handed out as the
    local history holds it (with this bus's ``offset``); one only a source
    holds carries the ``offset`` of the bus that first accepted it. It hands
    out the merged events that match its filters, then its live events,
    skipping every one whose identity (see the module docs) was merged
    already. If a source held the run's terminal event, it ends after handing
    it out (or where it would have, if the filters skip it); otherwise it ends
    as any run-scoped subscription does. Its statistics count local events
    only, each once: those it handed out live, and those of the local history
    it handed out merged (counted as they are skipped).
    """

    __slots__ = ("_backlog", "_done", "_over", "_seen", "_sources")

    def __init__(
        self,
        seam: BusSeam,
        flt: EventFilter,
        **kwargs: Any,
    ) -> None:
        super().__init__(seam, flt, **kwargs)
        self._backlog: deque[Event] = deque()
        self._seen: set[Hashable] = set()
        self._sources: tuple[ReplaySource, ...] = ()
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
        sources = self._seam.replay_sources()  # those open now
        seen = self._seen
        remote: list[tuple[Hashable, Event]] = []
        terminal: tuple[Hashable, Event] | None = None
        try:
            for source in sources:
                for identity, event in await source.read(run_id):
                    if identity in seen or event.run_id != run_id:
                        continue
                    seen.add(identity)
                    if event.terminal:
                        terminal = identity, event
                        break
                    remote.append((identity, event))
                if terminal is not None:
                    break
        except BaseException:
            self.close()
            raise
        if not remote and terminal is None:
            return self  # nothing from the sources: a plain replay
        self._sources = sources
        twins: dict[Hashable, Event] = {}  # identity -> the local history's event
        local: list[Event] = []  # what only the local history holds
        for event in self._seam.history.iter_after(0, self._filter.run_ids):
            identity = self._known(event)
            if identity is None:
                local.append(event)
                seen.add(sources[0].identity(event))
            else:
                twins[identity] = event
        if terminal is not None:
            last: Event | None = twins.get(terminal[0], terminal[1])
        else:
            last = next((event for event in local if event.terminal), None)
        local = [event for event in local if not event.terminal]
        merged = _merge(remote, local, twins)
        if last is not None:
            merged.append(last)
            self._over = True
        matches = self._filter.matches
        self._backlog.extend(event for event in merged if matches(event))
        return self

    def _known(self, event: Event) -> Hashable | None:
        """The identity of a local *event* if it was merged already, else None."""
        seen = self._seen
        for source in self._sources:
            identity = source.identity(event)
            if identity in seen:
                return identity
        return None

    def close(self) -> None:
        """As :meth:`Subscription.close`; the merged events not yet handed out
        are discarded too.

        :raises RuntimeError: as :meth:`Subscription.close` (nothing changed)
        """
        if not self._closed and self._entered and _get_ident() != self._thread:
            raise RuntimeError(wrong_thread("close()"))
        self._done = False  # closed, not ended: receive raises ClosedResourceError
        self._backlog.clear()
        super().close()

    def receive_nowait(self) -> E_co:
        """As :meth:`Subscription.receive_nowait`, in the merged order."""
        if _get_ident() != self._thread:
            raise RuntimeError(wrong_thread("receiving"))
        if self._done:
            raise anyio.EndOfStream
        if self._backlog:
            if self._closed:
                raise anyio.ClosedResourceError
            return self._backlog.popleft()  # type: ignore[return-value]
        if self._over:
            self._finish()
            raise anyio.EndOfStream
        while True:
            event = super().receive_nowait()
            if not self._sources or self._known(event) is None:
                return event

    def _finish(self) -> None:
        """End after the merged events of a run that is over: take what the
        local stream still holds (merged already, so counted as delivered; an
        event after the run's end would be counted as dropped), then
        unregister."""
        unseen = 0
        while True:
            try:
                event = Subscription.receive_nowait(self)
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if self._known(event) is None and not isinstance(event, EventsDropped):
                unseen += 1
        self._buffer.withdraw(unseen)
        Subscription.close(self)
        self._done = True

    def _take_batch(self, limit: int) -> list[Event]:
        # One by one, in this class's order (receive and async for take
        # receive_nowait, so they follow it too).
        return take_up_to(self.receive_nowait, limit)


def _merge(
    remote: list[tuple[Hashable, Event]],
    local: list[Event],
    twins: dict[Hashable, Event],
) -> list[Event]:
    """*remote* (in its order; an event the local history holds too, its
    *twin*, in the local form) with *local* (in offset order) woven in: a
    local event goes before the first remote event whose twin has a higher
    offset, and before the first remote event of its lane with a higher
    ``seq``; the rest at the end, in their order. Local events are told apart
    by their offsets, which the local bus assigned."""
    merged: list[Event] = []
    if not local:
        return [twins.get(identity, event) for identity, event in remote]
    by_lane: dict[str, deque[Event]] = {}
    for event in local:
        by_lane.setdefault(event.lane_id, deque()).append(event)
    placed: set[int] = set()  # offsets of the local events placed
    i = 0

    def place(event: Event) -> None:
        placed.add(event.offset)
        merged.append(event)

    for identity, event in remote:
        twin = twins.get(identity)
        if twin is not None:
            while i < len(local) and local[i].offset < twin.offset:
                if local[i].offset not in placed:
                    place(local[i])
                i += 1
            event = twin
        lane = by_lane.get(event.lane_id)
        while lane and lane[0].seq < event.seq:
            earlier = lane.popleft()
            if earlier.offset not in placed:
                place(earlier)
        merged.append(event)
    merged.extend(event for event in local if event.offset not in placed)
    return merged
