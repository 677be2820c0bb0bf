"""A plain-Python reference model of the bus, written from DESIGN.md.

It says what every subscription must receive, in what order, what it loses
under its overflow policy and where the ``EventsDropped`` notices go, and what
the counters read. It is lists, dictionaries and the rules of DESIGN.md, one
method per rule; of the library's internals it knows one number, the size of a
replay batch (:data:`READ_AHEAD`, documented in ``_replay``), which decides
when a replaying subscriber switches to live. Tests drive the bus and the model
with the same operations and require exact agreement.

The rules, as modelled:

- Accepting: the guard (hidden-reasoning keys at any depth, any casing), then the
  run lifecycle (a run that ended is refused), then ``BLOCK`` (a matching live
  ``BLOCK`` subscription that is full refuses ``emit`` and holds ``publish``),
  then stamping (seq per run and lane, offset per bus), history, delivery.
- A live buffer is a list of events and loss markers. A full buffer meets an
  event: ``DROP_OLDEST`` evicts the oldest non-terminal event, ``DROP_NEWEST``
  discards the incoming one (or, for a terminal, evicts the newest non-terminal
  event), a buffer of only terminals takes a terminal beyond the bound and loses
  a non-terminal. A lost event leaves a marker where it was (adjacent markers
  are one); the marker is handed out as one ``EventsDropped`` notice.
- Replay reads history in batches of at most :data:`READ_AHEAD` matching events,
  when the subscriber has nothing read ahead and receives; it switches to live
  the moment it has read everything history holds for it. History it had not
  read when it was evicted is lost, and announced after what was read ahead.
- A subscription scoped to one run ends once that run's terminal event is
  accepted (live) or read from history; every subscription ends when the bus
  closes; ``close()`` discards what is buffered.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

import anyio
import attrs
from strategies import matches_kwargs, single_run

from purpose_bus import (
    DEFAULT_HIDDEN_KEYS,
    EVENTS_PER_YIELD,
    BusClosed,
    BusStatistics,
    Event,
    EventRejected,
    EventsDropped,
    Overflow,
    SubscriptionStatistics,
    Visibility,
)

#: How many matching events a replaying subscriber reads from history at a time
#: (``purpose_bus._replay.READ_AHEAD``; a test checks they agree).
READ_AHEAD = 64


def carries_hidden_key(value: Any, keys: frozenset[str]) -> bool:
    """Whether *value* holds, at any depth, a mapping with a string key whose
    casefold is one of *keys* (themselves casefolded)."""
    if isinstance(value, str | bytes):
        return False
    if isinstance(value, Mapping):
        return any(
            (isinstance(k, str) and k.casefold() in keys) or carries_hidden_key(v, keys)
            for k, v in value.items()
        )
    if isinstance(value, Sequence | Set):
        return any(carries_hidden_key(item, keys) for item in value)
    return False


def event_carries_hidden_key(
    event: Event, keys: Iterable[str] = DEFAULT_HIDDEN_KEYS
) -> bool:
    """Whether any field of *event* carries a hidden-reasoning key."""
    folded = frozenset(k.casefold() for k in keys)
    return any(
        carries_hidden_key(getattr(event, a.name), folded)
        for a in attrs.fields(type(event))
    )


# -- loss markers and notices ---------------------------------------------------


@attrs.frozen
class Notice:
    """The ``EventsDropped`` a subscriber must receive."""

    count: int
    first_offset: int
    last_offset: int
    run_id: str
    lane_id: str

    def matches(self, event: Event) -> bool:
        return (
            isinstance(event, EventsDropped)
            and (
                event.count,
                event.first_offset,
                event.last_offset,
                event.run_id,
                event.lane_id,
            )
            == attrs.astuple(self)
            and event.visibility is Visibility.PUBLIC
            and (event.seq, event.offset) == (0, 0)
        )


@attrs.define
class Lost:
    """Losses at one position of a subscriber's stream: ``(count, first, last,
    run_id, lane_id)`` ranges."""

    ranges: list[tuple[int, int, int, str, str]] = attrs.Factory(list)

    def add_event(self, event: Event) -> None:
        self.ranges.append((1, event.offset, event.offset, event.run_id, event.lane_id))

    def absorb(self, other: Lost) -> None:
        self.ranges.extend(other.ranges)

    def notice(self) -> Notice:
        first = min(self.ranges, key=lambda r: r[1])
        return Notice(
            count=sum(r[0] for r in self.ranges),
            first_offset=first[1],
            last_offset=max(r[2] for r in self.ranges),
            run_id=first[3],
            lane_id=first[4],
        )


#: What a receive must give: an event, a notice, or the exception it raises.
Expected = Event | Notice | type[Exception]


# -- a subscription --------------------------------------------------------------


@attrs.define(eq=False)
class ModelSubscription:
    """One subscription as DESIGN.md describes it."""

    kwargs: dict[str, Any]
    name: str
    bound: int
    policy: Overflow
    gap_events: bool
    replay: bool = False
    after: int | None = None
    #: The live buffer: events, and loss markers where events were lost.
    items: list[Event | Lost] = attrs.Factory(list)
    #: Replay: what was read from history and not yet received, the losses met
    #: while replaying, and the offset last read.
    read_ahead: list[Event] = attrs.Factory(list)
    replay_lost: Lost | None = None
    replaying: bool = False
    cursor: int = 0
    #: Delivering live events (entered, not ended, not closed).
    live: bool = False
    #: No more events will come: what is buffered is received, then EndOfStream.
    ended: bool = False
    closed: bool = False
    matched: int = 0
    delivered: int = 0
    dropped: int = 0
    #: Events handed out since the last yield to the scheduler (the rule of
    #: ``Subscription.receive`` / ``receive_batch``'s docstrings).
    streak: int = 0

    # -- the bounded-yield rule -------------------------------------------------

    def before_receive(self) -> None:
        """``receive()`` counts itself, yielding (and starting over) once
        ``EVENTS_PER_YIELD`` calls went by."""
        self.streak = self.streak + 1 if self.streak + 1 < EVENTS_PER_YIELD else 0

    def before_batch(self) -> int:
        """``receive_batch()`` yields first if ``EVENTS_PER_YIELD`` events went
        out since the last yield; returns how many it may hand out now."""
        if self.streak >= EVENTS_PER_YIELD:
            self.streak = 0
        return EVENTS_PER_YIELD - self.streak

    def waited(self) -> None:
        """A receive that found nothing ready yielded (then waited)."""
        self.streak = 0

    @property
    def single_run(self) -> str | None:
        return single_run(self.kwargs)

    @property
    def single_lane(self) -> str:
        lanes = self.kwargs.get("lane_id")
        if isinstance(lanes, str):
            return lanes
        if lanes is not None and len(set(lanes)) == 1:
            return str(next(iter(lanes)))
        return ""

    @property
    def visibility(self) -> Visibility:
        return Visibility(self.kwargs.get("visibility", Visibility.PUBLIC))

    def matches(self, event: Event) -> bool:
        return matches_kwargs(self.kwargs, event)

    @property
    def buffered(self) -> int:
        events = sum(1 for item in self.items if isinstance(item, Event))
        return events + len(self.read_ahead)

    def _live_events(self) -> int:
        return sum(1 for item in self.items if isinstance(item, Event))

    # -- live delivery ------------------------------------------------------------

    def would_block(self, event: Event) -> bool:
        return (
            self.live
            and self.policy is Overflow.BLOCK
            and self.matches(event)
            and self._live_events() >= self.bound
        )

    def offer(self, event: Event) -> None:
        """A live, matching event arrives."""
        self.matched += 1
        if self._live_events() < self.bound or self.policy is Overflow.BLOCK:
            self.items.append(event)
            return
        if self.policy is Overflow.DROP_NEWEST and not event.terminal:
            self._lose_incoming(event)
            return
        victims = [
            index
            for index, item in enumerate(self.items)
            if isinstance(item, Event) and not item.terminal
        ]
        if victims:
            at = victims[0] if self.policy is Overflow.DROP_OLDEST else victims[-1]
            self._evict(at)
            self.items.append(event)
        elif event.terminal:
            self.items.append(event)  # beyond the bound
        else:
            self._lose_incoming(event)

    def _lose_incoming(self, event: Event) -> None:
        self.dropped += 1
        if self.gap_events:
            if self.items and isinstance(self.items[-1], Lost):
                self.items[-1].add_event(event)
            else:
                marker = Lost()
                marker.add_event(event)
                self.items.append(marker)

    def _evict(self, at: int) -> None:
        victim = self.items[at]
        assert isinstance(victim, Event)
        self.dropped += 1
        if not self.gap_events:
            del self.items[at]
            return
        marker = Lost()
        marker.add_event(victim)
        self.items[at] = marker
        self._merge_markers()

    def _merge_markers(self) -> None:
        merged: list[Event | Lost] = []
        for item in self.items:
            if isinstance(item, Lost) and merged and isinstance(merged[-1], Lost):
                merged[-1].absorb(item)
            else:
                merged.append(item)
        self.items = merged

    def lose_range(
        self, count: int, first: int, last: int, run: str, lane: str
    ) -> None:
        """Offsets missing from history (a resume cursor too old), before live."""
        self.matched += count
        self.dropped += count
        if self.gap_events:
            if not (self.items and isinstance(self.items[-1], Lost)):
                self.items.append(Lost())
            marker = self.items[-1]
            assert isinstance(marker, Lost)
            marker.ranges.append((count, first, last, run, lane))

    # -- replay -------------------------------------------------------------------

    def lost_in_replay(
        self, count: int, first: int, last: int, run: str, lane: str
    ) -> None:
        self.matched += count
        self.dropped += count
        if self.gap_events:
            if self.replay_lost is None:
                self.replay_lost = Lost()
            self.replay_lost.ranges.append((count, first, last, run, lane))

    def read_more(self, history: Sequence[Event]) -> bool:
        for event in history:
            if event.offset <= self.cursor:
                continue
            self.cursor = event.offset
            if self.matches(event):
                self.read_ahead.append(event)
                if len(self.read_ahead) >= READ_AHEAD:
                    break
        self.matched += len(self.read_ahead)
        return bool(self.read_ahead)

    # -- receiving ----------------------------------------------------------------

    def take(self, bus: ModelBus) -> Expected:
        """What ``receive_nowait()`` gives now (and the state change it makes)."""
        if self.closed:
            return anyio.ClosedResourceError
        if self.replaying:
            return self._take_replayed(bus)
        return self._take_live()

    def _take_live(self) -> Expected:
        if self.items:
            item = self.items.pop(0)
            if isinstance(item, Lost):
                return item.notice()
            self.delivered += 1
            return item
        return anyio.EndOfStream if self.ended else anyio.WouldBlock

    def _take_replayed(self, bus: ModelBus) -> Expected:
        if self.read_ahead:
            self.delivered += 1
            event = self.read_ahead.pop(0)
            if (
                not self.read_ahead
                and self.replay_lost is None
                and not self.read_more(bus.history)
            ):
                bus.go_live(self)
            return event
        if self.replay_lost is not None:
            lost, self.replay_lost = self.replay_lost, None
            return lost.notice()
        if not self.read_more(bus.history):
            bus.go_live(self)
            return self._take_live()
        return self._take_replayed(bus)

    def close(self) -> None:
        self.closed = True
        self.dropped += len(self.read_ahead) + self._live_events()
        self.read_ahead.clear()
        self.items.clear()
        self.replay_lost = None
        self.replaying = False
        self.live = False
        self.ended = True


# -- the bus ---------------------------------------------------------------------

ACCEPT, BLOCK, REJECT_GUARD, REJECT_LATE, CLOSED = (
    "accept",
    "block",
    "reject-guard",
    "reject-late",
    "closed",
)


@attrs.define(eq=False)
class ModelBus:
    """An open bus as DESIGN.md describes it."""

    history_size: int = 10_000
    max_runs: int = 10_000
    strict: bool = False
    hidden_keys: frozenset[str] = DEFAULT_HIDDEN_KEYS
    offset: int = 0
    history: collections.deque[Event] = attrs.Factory(collections.deque)
    seqs: collections.OrderedDict[str, dict[str, int]] = attrs.Factory(
        collections.OrderedDict
    )
    finished: collections.OrderedDict[str, None] = attrs.Factory(
        collections.OrderedDict
    )
    rejected: int = 0
    closed: bool = False
    #: Entered and not closed, in the order they were entered.
    subscriptions: list[ModelSubscription] = attrs.Factory(list)
    dropped_by_closed: int = 0

    # -- accepting ----------------------------------------------------------------

    def classify(self, event: Event) -> str:
        """What the bus does with *event* (without doing it)."""
        if self.closed:
            return CLOSED
        if event_carries_hidden_key(event, self.hidden_keys):
            return REJECT_GUARD
        if event.run_id in self.finished:
            return REJECT_LATE
        if any(sub.would_block(event) for sub in self.subscriptions):
            return BLOCK
        return ACCEPT

    def emit(
        self, event: Event, *, thread: bool = False
    ) -> Event | type[Exception] | None:
        """``bus.emit(event)`` (from another thread if *thread*): the stamped
        event if accepted, ``None`` if rejected quietly, else the exception it
        raises. A thread's event never meets ``BLOCK`` here (tests see to it)."""
        outcome = self.classify(event)
        if outcome == CLOSED:
            return BusClosed
        if outcome in (REJECT_GUARD, REJECT_LATE):
            self.rejected += 1
            raises = self.strict and (outcome == REJECT_GUARD or not thread)
            return EventRejected if raises else None
        if outcome == BLOCK:
            assert not thread
            return anyio.WouldBlock
        return self.accept(event)

    def accept(self, event: Event) -> Event:
        run, lane = event.run_id, event.lane_id
        lanes = self.seqs.get(run)
        if lanes is None:
            lanes = self.seqs[run] = {}
            if len(self.seqs) > self.max_runs:
                self.seqs.popitem(last=False)
        else:
            self.seqs.move_to_end(run)
        seq = lanes[lane] = lanes.get(lane, 0) + 1
        self.offset += 1
        stamped = attrs.evolve(event, seq=seq, offset=self.offset)
        self._record(stamped)
        for sub in self.subscriptions:
            if sub.live and sub.matches(stamped):
                sub.offer(stamped)
        if stamped.terminal:
            self._finish(run)
        return stamped

    def _record(self, event: Event) -> None:
        self.history.append(event)
        if len(self.history) <= self.history_size:
            return
        evicted = self.history.popleft()
        for sub in self.subscriptions:
            if sub.replaying and evicted.offset > sub.cursor and sub.matches(evicted):
                sub.lost_in_replay(
                    1, evicted.offset, evicted.offset, evicted.run_id, evicted.lane_id
                )

    def _finish(self, run: str) -> None:
        self.seqs.pop(run, None)
        self.finished[run] = None
        if len(self.finished) > self.max_runs:
            self.finished.popitem(last=False)
        for sub in self.subscriptions:
            if sub.live and sub.single_run == run:
                sub.live = False
                sub.ended = True

    # -- subscribing --------------------------------------------------------------

    def register(self, sub: ModelSubscription) -> type[Exception] | None:
        """Enter *sub*; the exception entering raises, if any."""
        if self.closed:
            sub.close()
            return BusClosed
        self.subscriptions.append(sub)
        after = sub.after
        if (after is None and not sub.replay) or (
            after is not None and after >= self.offset
        ):
            self.go_live(sub)
            return None
        oldest = self.offset - len(self.history) + 1
        cursor = max(after or 0, oldest - 1)
        if after is not None and after < cursor:
            missing = (
                cursor - after,
                after + 1,
                cursor,
                sub.single_run or "",
                sub.single_lane,
            )
            if cursor >= self.offset:
                sub.lose_range(*missing)
            else:
                sub.lost_in_replay(*missing)
        if cursor >= self.offset:
            self.go_live(sub)
            return None
        sub.cursor = cursor
        sub.replaying = True
        return None

    def go_live(self, sub: ModelSubscription) -> None:
        sub.replaying = False
        run = sub.single_run
        if self.closed or (run is not None and run in self.finished):
            sub.ended = True
        else:
            sub.live = True

    def close_subscription(self, sub: ModelSubscription) -> None:
        if sub.closed:
            return
        sub.close()
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)
            self.dropped_by_closed += sub.dropped

    def close(self) -> None:
        self.closed = True
        for sub in self.subscriptions:
            sub.live = False
            sub.ended = True

    # -- reading ------------------------------------------------------------------

    def replay(
        self, filters: Mapping[str, Any], *, since_seq: int = 0, after: int = 0
    ) -> list[Event]:
        return [
            e
            for e in self.history
            if e.offset > after and e.seq > since_seq and matches_kwargs(filters, e)
        ]

    def dropped(self) -> int:
        return self.dropped_by_closed + sum(s.dropped for s in self.subscriptions)


def check_received(expected: Expected, got: Event | BaseException) -> None:
    """Assert that a receive gave what the model expected."""
    if isinstance(expected, type):
        assert isinstance(got, expected), (expected, got)
    elif isinstance(expected, Notice):
        assert isinstance(got, Event) and expected.matches(got), (expected, got)
    else:
        assert got == expected, (expected, got)


def check_statistics(
    model: ModelBus,
    bus_stats: BusStatistics,
    subs: Iterable[tuple[ModelSubscription, SubscriptionStatistics]],
) -> None:
    """Compare a ``BusStatistics`` and ``(model, SubscriptionStatistics)`` pairs
    with the model."""
    for sub, stats in subs:
        got = (stats.name, stats.delivered, stats.dropped, stats.buffered)
        want = (sub.name, sub.delivered, sub.dropped, sub.buffered)
        assert got == want, (sub.name, got, want)
        assert (stats.buffer_size, stats.overflow) == (sub.bound, sub.policy)
        assert sub.delivered + sub.dropped + sub.buffered == sub.matched
    assert bus_stats.emitted == model.offset
    assert bus_stats.rejected == model.rejected
    assert bus_stats.history == len(model.history)
    assert bus_stats.dropped == model.dropped()
    assert [s.name for s in bus_stats.subscriptions] == [
        s.name for s in model.subscriptions
    ]
