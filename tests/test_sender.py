"""Tests of the overflow policies (:class:`purpose_bus.Overflow`), as the
subscription's sender applies them: the table in DESIGN.md, terminal priority,
gap notices, and the accounting invariant checked against a model.

The ``BLOCK`` row, seen from the producer (``emit`` raises ``WouldBlock``,
``publish`` waits, cancellation and close while waiting) is in ``test_bus.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    Emit,
    Receive,
    bus_operations,
    matches_kwargs,
    single_run,
    subscribe_kwargs,
)

from purpose_bus import (
    Event,
    EventBus,
    EventRejected,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    RunCancelled,
    RunError,
    RunFinished,
    RunStarted,
    Subscription,
    Visibility,
)

DROP_POLICIES = [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST]


def delta(text: str = "x", run_id: str = "r1", lane_id: str = "main") -> MessageDelta:
    return MessageDelta(run_id=run_id, lane_id=lane_id, text=text)


def drain(sub: Subscription[Event]) -> list[Event]:
    """Everything *sub* can hand out without waiting."""
    events: list[Event] = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return events


def describe(events: list[Event]) -> list[str]:
    """Short names: a delta's text, ``gap(count:first-last)`` for a notice, the
    kind and run otherwise."""
    names = []
    for event in events:
        if isinstance(event, MessageDelta):
            names.append(event.text)
        elif isinstance(event, EventsDropped):
            names.append(f"gap({event.count}:{event.first_offset}-{event.last_offset})")
        else:
            names.append(f"{event.kind}@{event.run_id}")
    return names


def counters(sub: Subscription[Event]) -> tuple[int, int, int]:
    stats = sub.statistics()
    return stats.delivered, stats.dropped, stats.buffered


class TestOverflow:
    # -- the table ------------------------------------------------------------

    async def test_drop_oldest_evicts_the_oldest_event(self) -> None:
        async with EventBus() as bus, bus.subscribe(buffer_size=3) as sub:
            for index in range(1, 6):
                bus.emit(delta(str(index)))
            assert counters(sub) == (0, 2, 3)
            assert describe(drain(sub)) == ["3", "4", "5"]
            assert counters(sub) == (3, 2, 0)

    async def test_drop_newest_discards_the_incoming_event(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=3, overflow=Overflow.DROP_NEWEST) as sub,
        ):
            for index in range(1, 6):
                bus.emit(delta(str(index)))
            assert counters(sub) == (0, 2, 3)
            assert describe(drain(sub)) == ["1", "2", "3"]
            bus.emit(delta("6"))
            assert describe(drain(sub)) == ["6"]
            assert counters(sub) == (4, 2, 0)

    async def test_block_keeps_every_event(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=2, overflow=Overflow.BLOCK) as sub,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2"))
            with pytest.raises(anyio.WouldBlock):
                bus.emit(delta("3"))
            assert counters(sub) == (0, 0, 2)
            assert describe([await sub.receive()]) == ["1"]
            bus.emit(delta("3"))
            assert describe(drain(sub)) == ["2", "3"]
            assert counters(sub) == (3, 0, 0)

    async def test_the_bus_default_policy_applies(self) -> None:
        async with (
            EventBus(overflow=Overflow.DROP_NEWEST, buffer_size=1) as bus,
            bus.subscribe() as sub,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2"))
            assert describe(drain(sub)) == ["1"]

    # -- terminal priority ----------------------------------------------------

    async def test_terminal_under_drop_oldest_evicts_the_oldest_non_terminal(
        self,
    ) -> None:
        async with EventBus() as bus, bus.subscribe(buffer_size=3) as sub:
            for index in range(1, 4):
                bus.emit(delta(str(index)))
            bus.emit(RunFinished(run_id="r1"))
            assert describe(drain(sub)) == ["2", "3", "run.finished@r1"]
            assert counters(sub) == (3, 1, 0)

    async def test_terminal_under_drop_newest_evicts_the_newest_non_terminal(
        self,
    ) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=3, overflow=Overflow.DROP_NEWEST) as sub,
        ):
            for index in range(1, 4):
                bus.emit(delta(str(index)))
            bus.emit(RunFinished(run_id="r1"))
            assert describe(drain(sub)) == ["1", "2", "run.finished@r1"]
            assert counters(sub) == (3, 1, 0)

    async def test_drop_oldest_skips_buffered_terminal_events(self) -> None:
        async with EventBus() as bus, bus.subscribe(buffer_size=3) as sub:
            bus.emit(RunFinished(run_id="r1"))
            bus.emit(delta("a", run_id="r2"))
            bus.emit(delta("b", run_id="r2"))
            bus.emit(delta("c", run_id="r2"))  # evicts "a", not the terminal
            bus.emit(RunCancelled(run_id="r2"))  # evicts "b"
            assert describe(drain(sub)) == [
                "run.finished@r1",
                "c",
                "run.cancelled@r2",
            ]
            assert counters(sub) == (3, 2, 0)

    async def test_drop_newest_terminal_skips_buffered_terminal_events(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=3, overflow=Overflow.DROP_NEWEST) as sub,
        ):
            bus.emit(delta("a", run_id="r2"))
            bus.emit(delta("b", run_id="r2"))
            bus.emit(RunFinished(run_id="r1"))
            bus.emit(RunError(run_id="r2", error="e"))  # evicts "b"
            assert describe(drain(sub)) == [
                "a",
                "run.finished@r1",
                "run.error@r2",
            ]

    @pytest.mark.parametrize("policy", DROP_POLICIES, ids=lambda p: p.name)
    async def test_a_buffer_of_terminals_takes_more_beyond_the_bound(
        self, policy: Overflow
    ) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=2, overflow=policy) as sub,
        ):
            for run in ("r1", "r2", "r3"):
                bus.emit(RunFinished(run_id=run))
            assert counters(sub) == (0, 0, 3)
            assert sub.statistics().buffer_size == 2
            # A non-terminal event meeting a buffer full of terminals is lost.
            bus.emit(delta("lost", run_id="r4"))
            assert counters(sub) == (0, 1, 3)
            assert describe(drain(sub)) == [
                "run.finished@r1",
                "run.finished@r2",
                "run.finished@r3",
            ]

    @pytest.mark.parametrize("policy", DROP_POLICIES, ids=lambda p: p.name)
    async def test_a_buffer_of_one_keeps_every_runs_terminal_in_order(
        self, policy: Overflow
    ) -> None:
        runs = [f"run-{index}" for index in range(6)]
        terminals: list[Event] = []
        for index, run in enumerate(runs):
            kind = index % 3
            if kind == 0:
                terminals.append(RunFinished(run_id=run))
            elif kind == 1:
                terminals.append(RunError(run_id=run, error="e"))
            else:
                terminals.append(RunCancelled(run_id=run))
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=1, overflow=policy) as sub,
        ):
            for run in runs:
                bus.emit(RunStarted(run_id=run))
            for step in range(3):
                for run in runs:
                    bus.emit(delta(str(step), run_id=run))
            for terminal in terminals:
                bus.emit(terminal)
                bus.emit(Log(run_id="chatter", message="after"))
            received = drain(sub)
        ends = [e for e in received if e.terminal]
        assert [(e.kind, e.run_id) for e in ends] == [
            (t.kind, t.run_id) for t in terminals
        ]
        assert [e.offset for e in received] == sorted(e.offset for e in received)

    async def test_a_run_scoped_buffer_of_one_gets_the_terminal(self) -> None:
        async with EventBus() as bus:
            for policy in DROP_POLICIES:
                run = f"run-{policy.name}"
                async with bus.subscribe(
                    run_id=run, buffer_size=1, overflow=policy
                ) as sub:
                    for index in range(10):
                        bus.emit(delta(str(index), run_id=run))
                    bus.emit(RunFinished(run_id=run))
                    with anyio.fail_after(5):
                        received = [e async for e in sub]
                assert received[-1].kind == "run.finished"
                assert counters(sub)[0] == len(received)

    # -- gap notices ----------------------------------------------------------

    async def test_drop_oldest_notice_comes_before_the_next_event(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=2, gap_events=True) as sub,
        ):
            bus.emit(delta("1", run_id="r2", lane_id="lane-x"))
            for index in range(2, 6):
                bus.emit(delta(str(index)))
            received = drain(sub)
        assert describe(received) == ["gap(3:1-3)", "4", "5"]
        notice = received[0]
        assert isinstance(notice, EventsDropped)
        assert (notice.run_id, notice.lane_id) == ("r2", "lane-x")
        assert counters(sub)[0] == 2  # notices are not counted as delivered

    async def test_drop_newest_notice_comes_before_the_next_event(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(
                buffer_size=2, overflow=Overflow.DROP_NEWEST, gap_events=True
            ) as sub,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2"))
            bus.emit(delta("3", run_id="r3", lane_id="lane-y"))
            bus.emit(delta("4"))
            assert describe(drain(sub)) == ["1", "2", "gap(2:3-4)"]
            bus.emit(delta("5"))
            bus.emit(delta("6"))
            bus.emit(delta("7"))
            received = drain(sub)
            assert describe(received) == ["5", "6", "gap(1:7-7)"]
            stats = sub.statistics()
            assert (stats.delivered, stats.dropped) == (4, 3)

    async def test_drop_newest_notice_names_the_first_event_lost(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(
                buffer_size=1, overflow=Overflow.DROP_NEWEST, gap_events=True
            ) as sub,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2", run_id="r3", lane_id="lane-y"))
            bus.emit(delta("3"))
            received = drain(sub)
        notice = received[1]
        assert isinstance(notice, EventsDropped)
        assert (notice.run_id, notice.lane_id, notice.count) == ("r3", "lane-y", 2)

    async def test_a_notice_marks_an_eviction_behind_a_terminal(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=3, gap_events=True) as sub,
        ):
            bus.emit(RunFinished(run_id="r1"))
            bus.emit(delta("a", run_id="r2"))
            bus.emit(delta("b", run_id="r2"))
            bus.emit(delta("c", run_id="r2"))  # evicts "a", behind the terminal
            received = drain(sub)
        assert describe(received) == ["run.finished@r1", "gap(1:2-2)", "b", "c"]

    async def test_a_notice_for_an_event_evicted_by_a_terminal(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(
                buffer_size=2, overflow=Overflow.DROP_NEWEST, gap_events=True
            ) as sub,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2"))
            bus.emit(RunFinished(run_id="r1"))
            received = drain(sub)
        assert describe(received) == ["1", "gap(1:2-2)", "run.finished@r1"]

    async def test_notices_are_not_recorded_in_history(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=1, gap_events=True) as sub,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2"))
            assert any(isinstance(e, EventsDropped) for e in drain(sub))
            history = bus.replay(visibility=Visibility.PRIVATE)
            assert describe(history) == ["1", "2"]
            assert bus.statistics().emitted == 2

    async def test_without_gap_events_there_are_no_notices(self) -> None:
        async with EventBus() as bus, bus.subscribe(buffer_size=1) as sub:
            for index in range(5):
                bus.emit(delta(str(index)))
            assert describe(drain(sub)) == ["4"]

    @pytest.mark.parametrize("policy", DROP_POLICIES, ids=lambda p: p.name)
    async def test_notice_counts_add_up_to_dropped(self, policy: Overflow) -> None:
        announced = 0

        def take(sub: Subscription[Event], count: int) -> None:
            nonlocal announced
            for _ in range(count):
                try:
                    event = sub.receive_nowait()
                except anyio.WouldBlock:
                    return
                if isinstance(event, EventsDropped):
                    announced += event.count

        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=3, overflow=policy, gap_events=True) as sub,
        ):
            for index in range(200):
                bus.emit(delta(str(index), run_id=f"r{index % 5}"))
                if index % 7 == 0:
                    take(sub, 2)
                if index % 50 == 49:
                    bus.emit(RunFinished(run_id=f"ended-{index}"))
            await bus.aclose()
            with anyio.fail_after(5):
                async for event in sub:
                    if isinstance(event, EventsDropped):
                        announced += event.count
            stats = sub.statistics()
            assert announced == stats.dropped > 0
            assert stats.delivered + stats.dropped == bus.statistics().emitted
            assert bus.statistics().rejected == 0

    # -- against the model ----------------------------------------------------

    # The accounting invariant, order, the bound, terminal priority and gap
    # notices, against a model, over random interleavings of emits and receives,
    # random policies, buffer sizes and filters.
    @given(
        specs=st.lists(subscribe_kwargs(), min_size=1, max_size=3),
        data=st.data(),
    )
    async def test_against_the_model(
        self, anyio_backend: str, specs: list[dict[str, Any]], data: st.DataObject
    ) -> None:
        operations = data.draw(bus_operations(len(specs)))
        async with EventBus(strict=True) as bus:
            subs = [bus.subscribe(**spec) for spec in specs]
            models = [
                ModelSubscription(
                    kwargs=spec,
                    bound=spec["buffer_size"],
                    policy=spec["overflow"],
                    gap_events=spec["gap_events"],
                )
                for spec in specs
            ]
            for sub in subs:
                await sub.__aenter__()
            try:
                await run_operations(bus, subs, models, operations)
            finally:
                for sub in subs:
                    sub.close()


# -- the model ------------------------------------------------------------------


@attrs.define
class ModelSubscription:
    """What DESIGN.md says one subscription holds, written out plainly."""

    kwargs: dict[str, Any]
    bound: int
    policy: Overflow
    gap_events: bool
    buffer: list[Event] = attrs.Factory(list)
    matched: int = 0
    delivered: int = 0
    lost: list[Event] = attrs.Factory(list)
    announced: int = 0
    ended: bool = False
    last_offset: int = 0

    def would_block(self, event: Event) -> bool:
        return (
            not self.ended
            and self.policy is Overflow.BLOCK
            and matches_kwargs(self.kwargs, event)
            and len(self.buffer) >= self.bound
        )

    def offer(self, event: Event) -> None:
        if self.ended or not matches_kwargs(self.kwargs, event):
            return
        self.matched += 1
        buffer = self.buffer
        if len(buffer) < self.bound:
            buffer.append(event)
            return
        assert self.policy is not Overflow.BLOCK
        if self.policy is Overflow.DROP_NEWEST and not event.terminal:
            self.lost.append(event)
            return
        victims = [i for i, e in enumerate(buffer) if not e.terminal]
        if victims:
            at = victims[0] if self.policy is Overflow.DROP_OLDEST else victims[-1]
            self.lost.append(buffer.pop(at))
            buffer.append(event)
        elif event.terminal:
            buffer.append(event)
        else:
            self.lost.append(event)

    def lost_before(self, offset: int) -> int:
        return sum(1 for e in self.lost if e.offset < offset)

    def unannounced(self) -> bool:
        return self.gap_events and self.announced < len(self.lost)

    def ready(self) -> bool:
        return bool(self.buffer) or self.unannounced() or self.ended

    def check_received(self, event: Event) -> None:
        if isinstance(event, EventsDropped):
            assert self.gap_events
            assert event.count >= 1
            lost = {e.offset: e for e in self.lost}
            assert event.first_offset in lost, (event, sorted(lost))
            first = lost[event.first_offset]
            assert (event.run_id, event.lane_id) == (first.run_id, first.lane_id)
            inside = [o for o in lost if event.first_offset <= o <= event.last_offset]
            assert event.count == len(inside)
            self.announced += event.count
            assert self.announced <= len(self.lost)
            return
        assert self.buffer, f"received {event!r} but nothing should be buffered"
        expected = self.buffer.pop(0)
        assert event == expected
        assert event.offset > self.last_offset  # order kept, each at most once
        self.last_offset = event.offset
        self.delivered += 1
        if self.gap_events:
            # Every loss before this event was announced before it.
            assert self.announced == self.lost_before(event.offset)

    def check_statistics(self, sub: Subscription[Event]) -> None:
        stats = sub.statistics()
        assert stats.delivered == self.delivered
        assert stats.dropped == len(self.lost)
        assert stats.buffered == len(self.buffer)
        assert stats.delivered + stats.dropped + stats.buffered == self.matched


async def put(bus: EventBus, event: Event, *, publish: bool) -> Event | None:
    """``await bus.publish(event)`` if *publish*, else ``bus.emit(event)``."""
    if publish:
        return await bus.publish(event)
    bus.emit(event)
    return None


async def _receive(
    sub: Subscription[Event], model: ModelSubscription, wait: bool
) -> None:
    try:
        if wait and model.ready():
            with anyio.fail_after(5):
                event = await sub.receive()
        else:
            event = sub.receive_nowait()
    except anyio.WouldBlock:
        assert not model.buffer
        assert not model.unannounced()
        assert not model.ended
    except anyio.EndOfStream:
        assert not model.buffer
        assert not model.unannounced()
        assert model.ended
    else:
        model.check_received(event)


async def run_operations(
    bus: EventBus,
    subs: list[Subscription[Event]],
    models: list[ModelSubscription],
    operations: list[Emit | Receive],
) -> None:
    accepted: list[Event] = []
    finished: set[str] = set()
    for operation in operations:
        if isinstance(operation, Receive):
            index = operation.index
            await _receive(subs[index], models[index], operation.wait)
        else:
            await emit_one(bus, operation, finished, models, accepted)
        for sub, model in zip(subs, models, strict=True):
            model.check_statistics(sub)
        assert bus.statistics().emitted == len(accepted)
    assert bus.replay(visibility=Visibility.PRIVATE) == accepted
    # Close: every subscription drains what is buffered, then ends.
    await bus.aclose()
    for sub, model in zip(subs, models, strict=True):
        model.ended = True
        with anyio.fail_after(5):
            async for event in sub:
                model.check_received(event)
        assert not model.buffer
        model.check_statistics(sub)
        if model.gap_events:
            assert model.announced == len(model.lost)
        # Terminal events are never lost.
        assert not [e for e in model.lost if e.terminal]


async def emit_one(
    bus: EventBus,
    operation: Emit,
    finished: set[str],
    models: list[ModelSubscription],
    accepted: list[Event],
) -> None:
    event = operation.event
    if event.run_id in finished:
        with pytest.raises(EventRejected):
            await put(bus, event, publish=operation.publish)
        return
    if any(model.would_block(event) for model in models):
        with pytest.raises(anyio.WouldBlock):
            bus.emit(event)
        return
    published = await put(bus, event, publish=operation.publish)
    stamped = bus.replay(visibility=Visibility.PRIVATE, after=len(accepted))
    assert len(stamped) == 1
    if operation.publish:
        assert published == stamped[0]
    accepted.append(stamped[0])
    for model in models:
        model.offer(stamped[0])
    if event.terminal:
        finished.add(event.run_id)
        for model in models:
            if single_run(model.kwargs) == event.run_id:
                model.ended = True
