"""Tests of the overflow policies (:class:`purpose_bus.Overflow`), as the
subscription's sender applies them: the table in DESIGN.md, terminal priority,
gap notices, and the accounting invariant checked against a model.

The ``BLOCK`` row, seen from the producer (``emit`` raises ``WouldBlock``,
``publish`` waits, cancellation and close while waiting) is in ``test_bus.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from helpers import delta, drain
from hypothesis import given
from hypothesis import strategies as st
from model import ModelBus, ModelSubscription, check_received, check_statistics
from strategies import Emit, Receive, bus_operations, subscribe_kwargs

from purpose_bus import (
    Event,
    EventBus,
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
from purpose_bus._events import stamped
from purpose_bus._sender import Gap, OverflowSender

DROP_POLICIES = [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST]


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


class TestStream:
    """The sender makes its AnyIO stream when the first item is buffered, so an
    idle subscription costs no stream (see ``_sender.py``)."""

    async def test_an_idle_subscription_has_no_stream_until_its_first_event(
        self,
    ) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r1") as sub:
            bus.emit(delta("elsewhere", run_id="r2"))
            with pytest.raises(anyio.WouldBlock):
                sub.receive_nowait()
            bus.emit(delta("1"))
            assert [e.text for e in drain(sub) if isinstance(e, MessageDelta)] == ["1"]

    async def test_without_a_stream_close_and_the_end_raise_as_with_one(
        self,
    ) -> None:
        async with EventBus() as bus:
            closed = bus.subscribe(run_id="r1")
            ended = bus.subscribe(run_id="r1")
            async with closed, ended:
                closed.close()
                with pytest.raises(anyio.ClosedResourceError):
                    closed.receive_nowait()
                with pytest.raises(anyio.ClosedResourceError):
                    await closed.receive()
                await bus.aclose()
                with pytest.raises(anyio.EndOfStream):
                    await ended.receive()


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
        assert notice.exact  # every event it counts matched
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
    # notices (exactly where they fall), against the shared reference model
    # (tests/model.py), over random interleavings of emits and receives, random
    # policies, buffer sizes and filters.
    # (Everything is drawn by @given, nothing inside the coroutine: a draw that
    # overruns there raises StopTest out of the async test, which leaves the
    # anyio runner's task with an exception nobody retrieves.)
    @given(
        specs=st.lists(subscribe_kwargs(), min_size=1, max_size=3),
        operations=bus_operations(3),
    )
    async def test_against_the_model(
        self,
        anyio_backend: str,
        specs: list[dict[str, Any]],
        operations: list[Emit | Receive],
    ) -> None:
        model = ModelBus(strict=True)
        async with EventBus(strict=True) as bus:
            subs = [bus.subscribe(**spec) for spec in specs]
            models = [
                ModelSubscription(
                    kwargs={k: v for k, v in spec.items() if k in FILTERS},
                    name=sub.name,
                    bound=spec["buffer_size"],
                    policy=spec["overflow"],
                    gap_events=spec["gap_events"],
                )
                for spec, sub in zip(specs, subs, strict=True)
            ]
            for sub, sub_model in zip(subs, models, strict=True):
                assert model.register(sub_model) is None
                await sub.__aenter__()
            try:
                await run_operations(bus, model, subs, models, operations)
            finally:
                for sub in subs:
                    sub.close()


FILTERS = ("run_id", "lane_id", "kinds", "visibility")


async def receive_one(
    bus: ModelBus, sub: Subscription[Event], sub_model: ModelSubscription, wait: bool
) -> Event | None:
    """Receive from *sub* (waiting if *wait* and the model says something is
    ready) and check it is what the model says comes next."""
    expected = sub_model.take(bus)
    try:
        if wait and expected is not anyio.WouldBlock:
            with anyio.fail_after(5):
                got: Event | BaseException = await sub.receive()
        else:
            got = sub.receive_nowait()
    except (anyio.WouldBlock, anyio.EndOfStream) as exc:
        got = exc
    check_received(expected, got)
    return got if isinstance(got, Event) else None


async def run_operations(
    bus: EventBus,
    model: ModelBus,
    subs: list[Subscription[Event]],
    models: list[ModelSubscription],
    operations: list[Emit | Receive],
) -> None:
    received: list[list[Event]] = [[] for _ in subs]
    for operation in operations:
        if isinstance(operation, Receive):
            index = operation.index % len(subs)
            got = await receive_one(model, subs[index], models[index], operation.wait)
            if got is not None:
                received[index].append(got)
        else:
            await emit_one(bus, model, operation)
        check_statistics(
            model,
            bus.statistics(),
            [(m, s.statistics()) for m, s in zip(models, subs, strict=True)],
        )
    assert bus.replay(visibility=Visibility.PRIVATE) == list(model.history)
    # Close: every subscription hands out what is buffered, then ends.
    await bus.aclose()
    model.close()
    for index, (sub, sub_model) in enumerate(zip(subs, models, strict=True)):
        while (got := await receive_one(model, sub, sub_model, wait=True)) is not None:
            received[index].append(got)
        # Terminal events are never lost: each one it matched was received.
        matched_ends = [e for e in model.history if e.terminal and sub_model.matches(e)]
        assert [e for e in received[index] if e.terminal] == matched_ends
    check_statistics(
        model,
        bus.statistics(),
        [(m, s.statistics()) for m, s in zip(models, subs, strict=True)],
    )


async def emit_one(bus: EventBus, model: ModelBus, operation: Emit) -> None:
    """``emit`` (or ``publish``) one event: the bus must do what the model
    says (accept it, refuse it as late, or, full ``BLOCK``: ``WouldBlock``)."""
    event = operation.event
    expected = model.emit(event)
    if expected is anyio.WouldBlock or not operation.publish:
        if isinstance(expected, type):
            with pytest.raises(expected):
                bus.emit(event)
        else:
            bus.emit(event)
        return
    if isinstance(expected, type):
        with pytest.raises(expected):
            await bus.publish(event)
    else:
        assert await bus.publish(event) == expected


class TestAccounting:
    """The buffer owns a subscription's counters: every named operation keeps
    ``matched == delivered + dropped + buffered``, and ``matched`` only grows."""

    @staticmethod
    def check(sender: OverflowSender, matched_before: int) -> None:
        stats = sender.statistics("s")
        assert stats.matched == stats.delivered + stats.dropped + stats.buffered
        assert stats.matched >= matched_before
        assert min(stats.delivered, stats.dropped, stats.buffered) >= 0

    @given(
        policy=st.sampled_from(list(Overflow)),
        gap_events=st.booleans(),
        bound=st.integers(1, 4),
        operations=st.lists(
            st.sampled_from(
                [
                    "offer",
                    "terminal",
                    "take",
                    "batch",
                    "lose",
                    "read",
                    "hand out read",
                    "lose unread",
                    "withdraw",
                    "end",
                    "discard",
                ]
            ),
            max_size=40,
        ),
    )
    async def test_every_operation_keeps_the_invariant(
        self, policy: Overflow, gap_events: bool, bound: int, operations: list[str]
    ) -> None:
        sender = OverflowSender(bound, policy, gap_events)
        offsets = iter(range(1, 1000))
        held = taken = 0
        ended = False
        for operation in operations:
            before = sender.statistics("s").matched
            offset = next(offsets)
            if ended and operation in ("offer", "terminal", "lose"):
                continue  # the bus offers nothing to an ended buffer
            if operation == "offer":
                sender.offer(stamped(delta(str(offset)), offset, offset))
            elif operation == "terminal":
                run = f"run-{offset}"
                sender.offer_terminal(stamped(RunFinished(run_id=run), 1, offset))
            elif operation in ("take", "batch"):
                try:
                    got = sender.take() if operation == "take" else sender.take_batch(3)
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    continue
                items = got if isinstance(got, list) else [got]
                taken += sum(1 for e in items if not isinstance(e, EventsDropped))
            elif operation == "lose":
                sender.lose(Gap(2, offset, offset + 1, "r1", "main"))
            elif operation == "read":
                sender.read_from_history(2)
                held += 2
            elif operation == "hand out read" and held:
                sender.hand_out_read()
                held -= 1
            elif operation == "lose unread":
                sender.lose_unread(3)
            elif operation == "withdraw" and taken:
                sender.withdraw(1)
                taken -= 1
            elif operation == "end":
                sender.end()
                ended = True
            elif operation == "discard":
                sender.discard()
                held = 0
                ended = True
            self.check(sender, before)
        sender.discard()  # closes the streams (they warn otherwise)
        self.check(sender, 0)

    async def test_what_discard_drops(self) -> None:
        sender = OverflowSender(2, Overflow.DROP_OLDEST, False)
        for offset in (1, 2, 3):
            sender.offer(stamped(delta(str(offset)), offset, offset))
        sender.read_from_history(4)
        sender.hand_out_read()
        sender.discard()
        stats = sender.statistics("s")
        assert (stats.matched, stats.delivered, stats.dropped, stats.buffered) == (
            7,
            1,
            6,
            0,
        )
