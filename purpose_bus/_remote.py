"""Replay that reaches beyond the local history: a run-scoped subscription on a
bus with a replay source (an open :class:`~purpose_bus.redis.RedisBridge`)
first hands out what the source holds of the run, then the local history and
live events, skipping what it handed out already.

:class:`MergedReader` is that subscription's replay reader (a
:class:`~purpose_bus._replay.Reader`, like the local
:class:`~purpose_bus._replay.ReplayReader`, which it reads the local history
through): it owns the merged events not yet handed out, the identities handed
out, and the end of a run a source saw end; it counts through the
subscription's buffer (:class:`~purpose_bus._sender.OverflowSender`), which
owns the accounting.

Which events are "the same" is decided by identities the source assigns from
coordinates the buses and Redis assign, never from user data such as
``span_id``: ``attrs.evolve`` keeps a ``span_id``, and one object may be
emitted twice, yet those are distinct events. The source gives each event it
reads an identity, and gives one to each event of the local history (what an
event of this bus that the source also holds is called there); equal
identities are one event.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from ._events import Event, EventsDropped
from ._filters import EventFilter
from ._replay import ReplayReader
from ._sender import OverflowSender

if TYPE_CHECKING:
    from ._bus import BusSeam
    from ._subscription import Subscription

__all__ = ["MergedReader", "ReplaySource"]


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


class _Phase(enum.Enum):
    """Where a merged reader is."""

    READING = "reading"  # entering: the sources are being read
    PLAIN = "plain"  # the sources held nothing of the run: a local replay
    MERGED = "merged"  # the merged events, then the local ones not merged
    DONE = "done"  # the run is over (a source saw it end), or discarded


class MergedReader:
    """The replay reader of ``bus.subscribe(run_id=..., replay=True)`` (no
    ``after``) while the bus has replay sources; made by
    :meth:`BusSeam.register`, which registers the subscription first (live
    events are buffered, or the local history kept for *local*, from that
    moment).

    :meth:`start` reads the whole run from each source, then merges what the
    sources hold with what the local history holds of the run that they do
    not (events above a bridge's visibility level, or trimmed from Redis):
    each lane's events in ``seq`` order, the sources' order otherwise, and the
    run's terminal event last. The local history is read once, through
    *local* (:meth:`ReplayReader.read_run`), which then goes on with what is
    accepted later and switches to live events as any replay does. An event
    both hold is handed out as the local history holds it (with this bus's
    ``offset``); one only a source holds carries the ``offset`` of the bus
    that first accepted it. :meth:`take` hands out the merged events that
    match the filter, then the later local ones (through *local*, then the
    buffer), skipping every one whose identity (see the module docs) was
    handed out already. If a source held the run's terminal event, the
    subscription ends after it (or where it would have been, if the filter
    skips it); otherwise it ends as any run-scoped subscription does.

    Accounting, through *buffer*: the local events merged count as read from
    history and as delivered when handed out; later local events count as
    delivered when handed out or skipped (so each local event counts once);
    events only a source holds are not counted.
    """

    __slots__ = (
        "_backlog",
        "_buffer",
        "_filter",
        "_local",
        "_over",
        "_owner",
        "_phase",
        "_seam",
        "_seen",
        "_sources",
    )

    def __init__(
        self,
        seam: BusSeam,
        owner: Subscription[Event],
        flt: EventFilter,
        buffer: OverflowSender,
        local: ReplayReader | None,
        sources: tuple[ReplaySource, ...],
    ) -> None:
        assert flt.single_run is not None and sources
        self._seam = seam
        self._owner = owner
        self._filter = flt
        self._buffer = buffer
        #: Reads the local history (``None``: the bus keeps none, or it
        #: switched to live events).
        self._local = local
        self._sources = sources
        self._phase = _Phase.READING
        #: The merged events not handed out yet, each with whether it is one of
        #: the local history (counted as read).
        self._backlog: deque[tuple[Event, bool]] = deque()
        #: The identities of the events merged.
        self._seen: set[Hashable] = set()
        self._over = False  # a source held the run's terminal event

    async def start(self) -> None:
        """Read the run from every source and merge it with the local history.
        A cancellation point (what the sources await); cancelled or failing,
        the subscription is closed (and this reader discarded).

        :raises Exception: what a source raises (for a bridge, a lost
            connection to Redis after its retries)
        """
        run_id = self._filter.single_run
        assert run_id is not None
        seen = self._seen
        remote: list[tuple[Hashable, Event]] = []
        terminal: tuple[Hashable, Event] | None = None
        for source in self._sources:
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
        if self._phase is not _Phase.READING:
            return  # discarded meanwhile (the subscription was closed)
        if not remote and terminal is None:
            self._phase = _Phase.PLAIN  # nothing from the sources
        else:
            self._merge(remote, terminal)
            self._phase = _Phase.MERGED

    def _merge(
        self,
        remote: list[tuple[Hashable, Event]],
        terminal: tuple[Hashable, Event] | None,
    ) -> None:
        """Merge the local history with *remote* (and *terminal*, the run's
        terminal event if a source held it) into the backlog."""
        walked = [] if self._local is None else self._local.read_run()
        twins: dict[Hashable, Event] = {}  # identity -> the local history's event
        local: list[Event] = []  # what only the local history holds
        seen, first = self._seen, self._sources[0]
        for event in walked:
            identity = self._known(event)
            if identity is None:
                local.append(event)
                seen.add(first.identity(event))
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
        walked_ids = {id(event) for event in walked}
        backlog = self._backlog
        backlog.extend((e, id(e) in walked_ids) for e in merged if matches(e))
        read = sum(1 for _, is_local in backlog if is_local)
        self._buffer.read_from_history(read)
        # A local event the merge left out (a second terminal event of the
        # run) matched and is not handed out.
        left_out = sum(1 for event in walked if matches(event)) - read
        if left_out:
            self._buffer.lose_unread(left_out)

    def _known(self, event: Event) -> Hashable | None:
        """The identity of a local *event* if it was merged already, else None."""
        seen = self._seen
        for source in self._sources:
            identity = source.identity(event)
            if identity in seen:
                return identity
        return None

    def take(self) -> Event | None:
        """The next event in the merged order (see the class docs); ``None``
        once the subscription takes from its buffer alone: the sources held
        nothing (after the switch to live events), or the run is over.

        :raises anyio.WouldBlock: if nothing is ready (also while entering)
        :raises anyio.EndOfStream: if the subscription has ended
        """
        phase = self._phase
        if phase is _Phase.MERGED:
            backlog = self._backlog
            if backlog:
                event, is_local = backlog.popleft()
                if is_local:
                    self._buffer.hand_out_read()
                return event
            if self._over:
                self._finish()
                return None
            while True:
                event = self._take_local()
                if isinstance(event, EventsDropped) or self._known(event) is None:
                    return event
        if phase is _Phase.PLAIN:
            return None if self._local is None else self._local.take()
        if phase is _Phase.READING:
            raise anyio.WouldBlock
        return None

    def _take_local(self) -> Event:
        """The next local event: from the local history, then the buffer."""
        local = self._local
        if local is not None:
            event = local.take()
            if event is not None:
                return event
            self._local = None  # switched to live events
        return self._buffer.take()

    def _finish(self) -> None:
        """End after the merged events of a run that is over: take what the
        local history and buffer still hold (merged already, so counted as
        delivered; an event after the run's end is counted as dropped), then
        unregister and end the buffer (what remains to take is its end)."""
        unseen = 0
        while True:
            try:
                event = self._take_local()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if not isinstance(event, EventsDropped) and self._known(event) is None:
                unseen += 1
        self._buffer.withdraw(unseen)
        self._seam.unregister(self._owner)
        self._buffer.end()
        self._phase = _Phase.DONE

    def discard(self) -> None:
        """Forget the merged events not handed out (the buffer counts the local
        ones as dropped when it is discarded) and stop: the subscription was
        closed."""
        self._backlog.clear()
        if self._local is not None:
            self._local.discard()
            self._local = None
        self._phase = _Phase.DONE


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
