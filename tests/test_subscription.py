"""Tests of :class:`purpose_bus.Subscription`: registration, receiving, how it
ends, closing, leaks, fairness and cancellation."""

from __future__ import annotations

import gc
import math
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any, cast

import anyio
import anyio.abc
import attrs
import pytest
import trio
from anyio.lowlevel import checkpoint
from helpers import (
    all_tasks_blocked,
    calls_made,
    cancelled_while_waiting,
    delta,
    drain,
    texts,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import bus_events, subscribe_kwargs

from purpose_bus import (
    EVENTS_PER_YIELD,
    BusClosed,
    Event,
    EventBus,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    RunError,
    RunFinished,
    RunStarted,
    Subscription,
    SubscriptionStatistics,
)


def resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


async def cancelled_calls(
    receive: Callable[[], Awaitable[object]], iterate: AsyncIterator[object]
) -> int:
    """Call *receive* in a cancelled scope more than ``2 * EVENTS_PER_YIELD``
    times, then take a step of *iterate* in one: how many of them raised the
    cancellation (all must)."""
    raised = 0
    for _ in range(2 * EVENTS_PER_YIELD + 1):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await receive()
        raised += scope.cancelled_caught
    with anyio.CancelScope() as scope:
        scope.cancel()
        await iterate.__anext__()
    return raised + scope.cancelled_caught


async def received_when_woken(
    receive: Callable[[], Awaitable[object]], emit: Callable[[], object]
) -> tuple[list[object], list[object]]:
    """Start *receive* in a task; once it waits, note what it has received
    (nothing, if it really waits), call *emit*, and return both notes."""
    received: list[object] = []

    async def consumer(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        received.append(await receive())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(consumer)
            await all_tasks_blocked()
            before = list(received)
            emit()
    return before, received


async def closed_while_waiting(
    sub: Subscription[Event], receive: Callable[[], Awaitable[object]]
) -> list[BaseException]:
    """What *receive*, waiting in a task, raised when *sub* was closed."""

    async def receive_until_closed() -> object:
        try:
            return await receive()
        except anyio.ClosedResourceError as exc:
            return exc

    _, received = await received_when_woken(receive_until_closed, sub.close)
    return [item for item in received if isinstance(item, BaseException)]


async def act_in_its_yield(
    receive: Callable[[], Awaitable[object]], act: Callable[[], object]
) -> list[object]:
    """Call *receive* in a task when nothing is ready, and call *act* (which may
    emit, cancel, ...) right after the receiver's first scheduler step, in which
    it looks, finds nothing and makes the one yield it makes before it waits;
    return what *receive* returned (nothing, if it was cancelled).

    Deterministic on every backend, through the schedulers' public behaviour
    alone. On asyncio and uvloop, tasks run in the order they became ready: the
    receiver and then a publisher task are woken in one step; the receiver's
    yield puts it behind the publisher, which acts. Trio runs each batch of
    ready tasks in a random order (while hypothesis is imported, as it is
    here, a full shuffle; else that order or its reverse), so a publisher in
    the receiver's batch runs after it only half the time: there a
    :class:`trio.abc.Instrument`, whose ``after_task_step`` trio calls between
    one task's step and the next, acts once the receiver's step is over."""
    received: list[object] = []
    errors: list[BaseException] = []
    looked = acted = False

    def act_once() -> None:
        nonlocal acted
        if looked and not acted:
            acted = True
            try:
                assert received == []  # it is in its yield, and has taken nothing
                act()
            except BaseException as exc:  # an instrument's exception is not raised
                errors.append(exc)

    async def receiver(go: anyio.Event) -> None:
        nonlocal looked
        await go.wait()
        looked = True  # nothing between here and its first yield yields
        received.append(await receive())

    async def publisher(go: anyio.Event) -> None:
        await go.wait()
        act_once()

    class AfterItsFirstStep(trio.abc.Instrument):
        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            act_once()

    on_trio = trio.lowlevel.in_trio_task()
    tasks = [receiver] if on_trio else [receiver, publisher]
    gates = [anyio.Event() for _ in tasks]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for task, go in zip(tasks, gates, strict=True):
                tg.start_soon(task, go)
            await all_tasks_blocked()
            instrument = AfterItsFirstStep()
            if on_trio:
                trio.lowlevel.add_instrument(instrument)
            try:
                for go in gates:
                    go.set()
                await all_tasks_blocked()
            finally:
                if on_trio:
                    trio.lowlevel.remove_instrument(instrument)
    if errors:
        raise errors[0]
    assert acted
    return received


def emit_from_a_thread(bus: EventBus, event: Event) -> None:
    """``bus.emit(event)`` in another thread, waited for: the event is handed
    off (the loop accepts it when the bus's hand-off task next runs)."""
    errors: list[BaseException] = []

    def emit() -> None:
        try:
            bus.emit(event)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=emit, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert errors == []


def as_list(received: object) -> list[Event]:
    """What ``receive`` (one event) or ``receive_batch`` (a list) returned."""
    return received if isinstance(received, list) else [received]  # type: ignore[list-item]


#: The three ways to take what is ready: one event, a batch, and the per-event
#: ``async for`` path (``Subscription.__anext__``), which is code of its own.
RECEIVES = ["receive", "receive_batch", "async for"]


def receive_call(
    sub: Subscription[Event], method: str
) -> Callable[[], Awaitable[object]]:
    """A call that takes what is ready from *sub* the way *method* names."""
    if method != "async for":
        return cast("Callable[[], Awaitable[object]]", getattr(sub, method))

    async def one_step_of_async_for() -> Event:
        async for event in sub:
            return event
        raise AssertionError("the subscription ended")

    return one_step_of_async_for


class TestSubscription:
    # -- registration ---------------------------------------------------------

    async def test_registered_when_entered(self) -> None:
        async with EventBus() as bus:
            sub = bus.subscribe(name="s")
            try:
                bus.emit(delta("before"))
                assert bus.statistics().subscriptions == ()
                async with sub:
                    assert [s.name for s in bus.statistics().subscriptions] == ["s"]
                    bus.emit(delta("after"))
                    assert texts(drain(sub)) == ["after"]
            finally:
                sub.close()

    async def test_events_before_the_first_iteration_are_not_lost(self) -> None:
        received: list[Event] = []
        async with EventBus() as bus, bus.subscribe(run_id="r1") as sub:
            bus.emit(delta("1"))
            await bus.publish(delta("2"))

            async def producer() -> None:
                bus.emit(delta("3"))
                bus.emit(RunFinished(run_id="r1"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                await all_tasks_blocked()
            with anyio.fail_after(5):
                async for event in sub:
                    received.append(event)
        assert texts(received) == ["1", "2", "3"]
        assert received[-1].kind == "run.finished"

    async def test_events_arrive_in_offset_order_each_once(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            for index in range(50):
                bus.emit(delta(str(index), run_id=f"r{index % 3}"))
            events = drain(sub)
        assert [e.offset for e in events] == list(range(1, 51))

    async def test_entering_twice_raises_runtime_error(self) -> None:
        async with EventBus() as bus:
            sub = bus.subscribe()
            async with sub:
                with pytest.raises(RuntimeError):
                    await sub.__aenter__()
            with pytest.raises(RuntimeError):
                async with sub:
                    pass  # pragma: no cover
            assert bus.statistics().subscriptions == ()

    async def test_entering_on_a_closed_bus_raises_and_leaves_nothing(self) -> None:
        # An unentered subscription is not a resource: nothing may warn about it.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with EventBus() as bus:
                pass
            sub = bus.subscribe()
            with pytest.raises(BusClosed):
                async with sub:
                    pass  # pragma: no cover
            del sub
            gc.collect()
        assert resource_warnings(caught) == []

    async def test_a_subscription_never_entered_leaves_nothing(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with EventBus() as bus:
                sub = bus.subscribe()
                bus.emit(delta())
                assert bus.statistics().subscriptions == ()
                del sub
                gc.collect()
        assert resource_warnings(caught) == []

    async def test_closed_before_entering_never_registers(self) -> None:
        # close() is documented as safe before entering; entering afterwards
        # must not leave a dead subscription that breaks the producers.
        async with EventBus() as bus:
            sub = bus.subscribe()
            sub.close()
            try:
                await sub.__aenter__()
            except (RuntimeError, anyio.ClosedResourceError):
                pass  # refusing to enter is fine
            else:
                try:
                    bus.emit(delta("inside"))
                    with pytest.raises(anyio.ClosedResourceError):
                        sub.receive_nowait()
                finally:
                    await sub.__aexit__(None, None, None)
            bus.emit(delta("after"))
            assert bus.statistics().subscriptions == ()

    # -- receiving ------------------------------------------------------------

    async def test_receive_nowait_raises_would_block_then_end_of_stream(self) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r1") as sub:
            with pytest.raises(anyio.WouldBlock):
                sub.receive_nowait()
            bus.emit(delta("1"))
            bus.emit(RunFinished(run_id="r1"))
            assert texts([sub.receive_nowait()]) == ["1"]
            assert sub.receive_nowait().kind == "run.finished"
            with pytest.raises(anyio.EndOfStream):
                sub.receive_nowait()
            with pytest.raises(anyio.EndOfStream):
                await sub.receive()

    async def test_receive_waits_for_an_event(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            before, received = await received_when_woken(
                sub.receive, lambda: bus.emit(delta("1"))
            )
            assert before == []
            assert received == [bus.replay()[0]]

    async def test_receive_is_a_cancellation_point_on_the_fast_path(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("1"))
            # More calls than EVENTS_PER_YIELD: every one of them checks.
            assert await cancelled_calls(sub.receive, sub) == 2 * EVENTS_PER_YIELD + 2
            assert sub.statistics().buffered == 1
            assert texts(drain(sub)) == ["1"]

    async def test_cancelled_receive_loses_nothing(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            assert await cancelled_while_waiting(sub.receive)
            bus.emit(delta("1"))
            assert texts([await sub.receive()]) == ["1"]
            assert sub.statistics().delivered == 1

    async def test_receive_yields_to_the_scheduler_at_bounded_intervals(self) -> None:
        windows = 10
        ticks = 0
        seen: list[int] = []

        async def counter() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await checkpoint()

        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=EVENTS_PER_YIELD * windows) as sub,
        ):
            for index in range(EVENTS_PER_YIELD * windows):
                bus.emit(delta(str(index)))
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(counter)
                    for _ in range(windows):
                        for _ in range(EVENTS_PER_YIELD):
                            await sub.receive()
                        seen.append(ticks)
                    tg.cancel_scope.cancel()
        # Every window of EVENTS_PER_YIELD receives gave the counter a turn (the
        # scheduler may run it just after the window in which it was woken).
        for window, count in enumerate(seen, 1):
            assert count >= window - 1, seen
        assert seen[-1] >= windows - 1

    async def test_keeps_up_with_bursts_shorter_than_the_yield_interval(self) -> None:
        # A publisher that yields once per burst of 100 emits: the subscriber
        # drains each burst in one turn, so a buffer of 1,000 never overflows.
        received = 0

        async def consume() -> None:
            nonlocal received
            async for _ in sub:
                received += 1

        async with (
            EventBus(history_size=0) as bus,
            bus.subscribe(buffer_size=1000) as sub,
        ):
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await all_tasks_blocked()
                    for burst in range(200):
                        for index in range(100):
                            bus.emit(delta(f"{burst}.{index}"))
                        await checkpoint()
                    await all_tasks_blocked()
                    tg.cancel_scope.cancel()
            stats = sub.statistics()
        assert stats.dropped == 0
        assert received == stats.delivered == 20_000

    @pytest.mark.parametrize("method", RECEIVES)
    @pytest.mark.parametrize("after", ["nothing", "a ready event", "a wait"])
    async def test_with_nothing_ready_it_yields_once_and_looks_again_before_waiting(
        self, method: str, after: str
    ) -> None:
        # What a task that was ready to run emits during that one yield is
        # taken without a wait and a wake-up, whatever came before: the emit
        # costs exactly what an emit costs when no receive is waiting. (The
        # wake-up is all that tells the two apart: either way the receiver gets
        # the event one scheduler pass later.)
        async with EventBus() as bus, bus.subscribe() as sub:
            receive = receive_call(sub, method)
            bus.emit(delta("warm-up"))  # the first emit of a class costs more
            drain(sub)
            event = delta("0")
            idle = calls_made(lambda: bus.emit(event))
            drain(sub)
            if after == "a ready event":
                bus.emit(delta("ready"))
                await receive()
            elif after == "a wait":
                await received_when_woken(receive, lambda: bus.emit(delta("woken")))
            costs: list[int] = []
            event = delta("1")
            got = await act_in_its_yield(
                receive, lambda: costs.append(calls_made(lambda: bus.emit(event)))
            )
            assert [texts(as_list(item)) for item in got] == [["1"]]
            assert costs == [idle]
            # Nothing arrives during the yield: then it waits, and the emit
            # that ends the wait pays for the wake-up.
            event = delta("2")
            before, received = await received_when_woken(
                receive, lambda: costs.append(calls_made(lambda: bus.emit(event)))
            )
            assert before == []
            assert [texts(as_list(item)) for item in received] == [["2"]]
            assert costs[1] > idle, costs

    @pytest.mark.parametrize("method", RECEIVES)
    @pytest.mark.parametrize("when", ["before the call", "in its yield", "waiting"])
    @pytest.mark.parametrize(
        "actions",
        [
            ("emit",),
            ("thread emit",),
            ("cancel",),
            ("emit", "cancel"),
            ("cancel", "emit"),
            ("emit", "deadline"),
            ("deadline", "emit"),
            ("thread emit", "cancel"),
            ("cancel", "thread emit"),
        ],
        ids=" then ".join,
    )
    async def test_cancelled_whenever_an_event_arrives_it_loses_nothing(
        self, method: str, when: str, actions: tuple[str, ...]
    ) -> None:
        # A receive in a cancel scope; at one moment (before the call, during
        # its one yield before waiting, or while it waits) one step emits an
        # event (on the loop, or from a thread: accepted later, by the bus's
        # hand-off task) and cancels the scope (or moves its deadline into the
        # past), in either order. Whatever the interleaving, the event is
        # either returned, or still buffered and received next.
        emits = sum(action.endswith("emit") for action in actions)
        cancels = len(actions) - emits
        async with (
            EventBus() as bus,
            bus.subscribe() as sub,
            bus.subscribe() as watch,  # sees when a thread's event is accepted
        ):
            receive = receive_call(sub, method)
            scope = anyio.CancelScope()

            def act() -> None:
                for action in actions:
                    if action == "emit":
                        bus.emit(delta("x"))
                    elif action == "thread emit":
                        emit_from_a_thread(bus, delta("x"))
                    elif action == "cancel":
                        scope.cancel()
                    else:
                        scope.deadline = -math.inf

            async def receiver() -> None:
                with scope:
                    got.extend(as_list(await receive()))
                    returned.append(True)

            got: list[Event] = []
            returned: list[bool] = []
            with anyio.fail_after(5):
                if when == "in its yield":
                    await act_in_its_yield(receiver, act)
                else:
                    async with anyio.create_task_group() as tg:
                        if when == "before the call":
                            act()
                        tg.start_soon(receiver)
                        if when == "waiting":
                            await all_tasks_blocked()
                            assert returned == []  # it waits
                            act()
                for _ in range(emits):
                    await watch.receive()
                stats = sub.statistics()
                assert (stats.matched, stats.dropped) == (emits, 0)
                assert stats.delivered + stats.buffered == stats.matched
                if returned:
                    assert texts(got) == ["x"]
                    assert (stats.delivered, stats.buffered) == (1, 0)
                else:
                    assert scope.cancelled_caught
                    assert (stats.delivered, stats.buffered) == (0, emits)
                # What it did not return is received next, before what follows.
                bus.emit(delta("next"))
                while texts(got)[-1:] != ["next"]:
                    got.extend(as_list(await receive()))
            assert texts(got) == ["x"] * emits + ["next"]
            assert sub.statistics().delivered == emits + 1
        # Where the outcome is not left open, it is the one expected: without
        # a cancellation it returns; without an event, or in a scope cancelled
        # before the call (it is always a cancellation point), it raises.
        if not cancels:
            assert returned
        if not emits or (cancels and when == "before the call"):
            assert not returned

    # -- how it ends ----------------------------------------------------------

    @pytest.mark.parametrize("run_id", ["r1", ["r1"], ("r1",), frozenset({"r1"})])
    async def test_a_run_scoped_subscription_ends_after_the_terminal_event(
        self, run_id: str | list[str]
    ) -> None:
        async with EventBus() as bus, bus.subscribe(run_id=run_id) as sub:
            bus.emit(RunStarted(run_id="r1"))
            bus.emit(delta("1"))
            bus.emit(delta("other", run_id="r2"))
            bus.emit(RunError(run_id="r1", error="boom"))
            bus.emit(delta("other", run_id="r2"))
            with anyio.fail_after(5):
                kinds = [e.kind async for e in sub]
            assert kinds == ["run.started", "message.delta", "run.error"]
            assert len(bus.statistics().subscriptions) == 1  # until it is left

    async def test_a_run_scoped_subscription_waits_for_its_terminal_event(
        self,
    ) -> None:
        received: list[str] = []
        async with EventBus() as bus, bus.subscribe(run_id="r1") as sub:

            async def consumer() -> None:
                async for event in sub:
                    received.append(event.kind)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consumer)
                    bus.emit(RunStarted(run_id="r1"))
                    await all_tasks_blocked()
                    assert received == ["run.started"]
                    bus.emit(RunFinished(run_id="r2"))  # another run's end
                    await all_tasks_blocked()
                    assert received == ["run.started"]
                    bus.emit(RunFinished(run_id="r1"))
        assert received == ["run.started", "run.finished"]

    async def test_a_run_scoped_subscription_ends_even_if_it_filters_out_the_end(
        self,
    ) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r1", kinds=Log) as sub:
            bus.emit(Log(run_id="r1", message="m"))
            bus.emit(RunFinished(run_id="r1"))
            with anyio.fail_after(5):
                assert [e.kind async for e in sub] == ["log"]

    async def test_a_multi_run_subscription_outlives_one_runs_end(self) -> None:
        async with EventBus() as bus, bus.subscribe(run_id=["r1", "r2"]) as sub:
            bus.emit(RunFinished(run_id="r1"))
            bus.emit(delta("1", run_id="r2"))
            assert [e.kind for e in drain(sub)] == ["run.finished", "message.delta"]
            with pytest.raises(anyio.WouldBlock):
                sub.receive_nowait()

    async def test_subscribing_to_a_finished_run_ends_at_once(self) -> None:
        async with EventBus() as bus:
            bus.emit(delta("1"))
            bus.emit(RunFinished(run_id="r1"))
            async with bus.subscribe(run_id="r1") as sub:
                with anyio.fail_after(5):
                    assert [e async for e in sub] == []
                with pytest.raises(anyio.EndOfStream):
                    sub.receive_nowait()

    # -- close ----------------------------------------------------------------

    async def test_close_discards_the_buffer_and_counts_it_as_dropped(self) -> None:
        async with EventBus() as bus, bus.subscribe(name="s") as sub:
            for index in range(3):
                bus.emit(delta(str(index)))
            assert texts([await sub.receive()]) == ["0"]
            sub.close()
            assert bus.statistics().subscriptions == ()
            stats = sub.statistics()
            assert (stats.delivered, stats.dropped, stats.buffered) == (1, 2, 0)
            assert bus.statistics().dropped == 2
            with pytest.raises(anyio.ClosedResourceError):
                await sub.receive()
            with pytest.raises(anyio.ClosedResourceError):
                sub.receive_nowait()
            with pytest.raises(anyio.ClosedResourceError):
                async for _event in sub:
                    pass  # pragma: no cover
            bus.emit(delta("later"))
            assert sub.statistics() == stats
            sub.close()  # idempotent
            assert sub.statistics() == stats

    async def test_close_wakes_a_task_waiting_in_receive(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            raised = await closed_while_waiting(sub, sub.receive)
        assert len(raised) == 1

    async def test_close_inside_iteration(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("1"))
            bus.emit(delta("2"))

            async def consume() -> None:
                async for _event in sub:
                    sub.close()

            with pytest.raises(anyio.ClosedResourceError):
                await consume()
            assert sub.statistics().dropped == 1

    # -- unregistering --------------------------------------------------------

    async def test_unregistered_at_once_on_normal_exit(self) -> None:
        async with EventBus() as bus:
            async with bus.subscribe(run_id="r1") as sub:
                bus.emit(delta())
            assert bus.statistics().subscriptions == ()
            bus.emit(delta())
            assert sub.statistics().dropped == 1  # the one left in its buffer
            assert sub.statistics().buffered == 0

    async def test_unregistered_at_once_on_exception(self) -> None:
        async with EventBus() as bus:
            with pytest.raises(KeyError):
                async with bus.subscribe():
                    raise KeyError("boom")
            assert bus.statistics().subscriptions == ()

    async def test_unregistered_at_once_on_cancellation(self) -> None:
        async with EventBus() as bus:
            with anyio.fail_after(5), anyio.CancelScope() as scope:
                async with bus.subscribe() as sub:
                    scope.cancel()
                    await sub.receive()
            assert scope.cancelled_caught
            assert bus.statistics().subscriptions == ()

    async def test_unregistered_when_its_task_is_cancelled_while_waiting(
        self,
    ) -> None:
        async with EventBus() as bus:

            async def consumer(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                async with bus.subscribe(run_id="r1") as sub:
                    task_status.started()
                    await sub.receive()

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    await tg.start(consumer)
                    await all_tasks_blocked()
                    assert len(bus.statistics().subscriptions) == 1
                    tg.cancel_scope.cancel()
            assert bus.statistics().subscriptions == ()

    async def test_no_leak_over_many_cycles(self) -> None:
        cycles = 2000

        async def normal(bus: EventBus, run_id: str) -> None:
            async with bus.subscribe(run_id=run_id) as sub:
                bus.emit(delta(run_id=run_id))
                await sub.receive()

        async def failing(bus: EventBus, run_id: str) -> None:
            async with bus.subscribe(run_id=[run_id, "x"]):
                bus.emit(delta(run_id=run_id))
                raise KeyError(run_id)

        async def cancelled(bus: EventBus) -> None:
            with anyio.CancelScope() as scope:
                async with bus.subscribe(overflow=Overflow.BLOCK) as sub:
                    scope.cancel()
                    await sub.receive()

        async def waiter(
            bus: EventBus, run_id: str, *, task_status: anyio.abc.TaskStatus[None]
        ) -> None:
            async with bus.subscribe(run_id=run_id) as sub:
                task_status.started()
                await sub.receive()

        async with EventBus(history_size=10) as bus:
            with anyio.fail_after(30):
                for index in range(cycles):
                    run_id = f"r{index % 7}"
                    mode = index % 4
                    if mode == 0:
                        await normal(bus, run_id)
                    elif mode == 1:
                        with pytest.raises(KeyError):
                            await failing(bus, run_id)
                    elif mode == 2:
                        await cancelled(bus)
                    else:
                        async with anyio.create_task_group() as tg:
                            await tg.start(waiter, bus, run_id)
                            tg.cancel_scope.cancel()
            assert bus.statistics().subscriptions == ()
            # No subscription left behind to deliver to, or to block on.
            bus.emit(delta())
            stats = bus.statistics()
            assert stats.subscriptions == ()
            assert stats.emitted == cycles // 2 + 1

    async def test_an_unclosed_subscription_warns_when_collected(self) -> None:
        bus = EventBus()
        async with bus:
            sub = bus.subscribe(name="leaky")
            await sub.__aenter__()
            bus.emit(delta())
        # The bus holds it until it is unregistered: drop both, then collect.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del sub, bus
            gc.collect()
        messages = resource_warnings(caught)
        assert any("leaky" in message for message in messages), messages

    async def test_a_closed_subscription_does_not_warn(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with EventBus() as bus:
                async with bus.subscribe() as sub:
                    bus.emit(delta())
                bus.emit(delta())
            del sub, bus
            gc.collect()
        assert resource_warnings(caught) == []

    # -- typing ---------------------------------------------------------------

    async def test_kinds_with_one_class_types_the_subscription(self) -> None:
        async with EventBus() as bus:
            sub: Subscription[MessageDelta] = bus.subscribe(kinds=MessageDelta)
            async with sub:
                bus.emit(Log(run_id="r1", message="m"))
                bus.emit(delta("typed"))
                event = sub.receive_nowait()
                text: str = event.text  # mypy checks this attribute
            assert text == "typed"


class TestSubscriptionStatistics:
    async def test_defaults_come_from_the_bus(self) -> None:
        async with (
            EventBus(buffer_size=7, overflow=Overflow.DROP_NEWEST) as bus,
            bus.subscribe() as default,
            bus.subscribe(buffer_size=3, overflow=Overflow.BLOCK) as custom,
        ):
            assert default.statistics().buffer_size == 7
            assert default.statistics().overflow is Overflow.DROP_NEWEST
            assert custom.statistics().buffer_size == 3
            assert custom.statistics().overflow is Overflow.BLOCK

    async def test_counters(self) -> None:
        async with EventBus() as bus, bus.subscribe(name="s", buffer_size=2) as sub:
            assert sub.statistics() == SubscriptionStatistics(
                name="s",
                buffered=0,
                buffer_size=2,
                delivered=0,
                dropped=0,
                overflow=Overflow.DROP_OLDEST,
                matched=0,
            )
            for index in range(4):
                bus.emit(delta(str(index)))
            await sub.receive()
            stats = sub.statistics()
            assert (stats.delivered, stats.dropped, stats.buffered) == (1, 2, 1)
            assert stats.delivered + stats.dropped + stats.buffered == 4


class TestEnterIsACancellationPoint:
    async def test_entering_in_a_cancelled_scope_registers_nothing(self) -> None:
        async with EventBus() as bus:
            sub = bus.subscribe()
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with sub:
                    pytest.fail("the block ran in a cancelled scope")
            assert scope.cancelled_caught
            assert bus.statistics().subscriptions == ()
            bus.emit(delta())
            assert bus.statistics().dropped == 0
            with pytest.raises(anyio.ClosedResourceError):
                sub.receive_nowait()
            with pytest.raises(RuntimeError, match="only once"):
                await sub.__aenter__()


class TestReceiveBatch:
    async def test_returns_every_ready_event_in_order(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            for index in range(5):
                bus.emit(delta(str(index)))
            batch = await sub.receive_batch()
            assert texts(batch) == ["0", "1", "2", "3", "4"]
            assert [e.offset for e in batch] == [1, 2, 3, 4, 5]
            stats = sub.statistics()
            assert (stats.delivered, stats.buffered) == (5, 0)

    async def test_max_items_bounds_the_batch(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            for index in range(5):
                bus.emit(delta(str(index)))
            assert texts(await sub.receive_batch(2)) == ["0", "1"]
            assert texts(await sub.receive_batch(2)) == ["2", "3"]
            assert texts(await sub.receive_batch(2)) == ["4"]
            assert sub.statistics().delivered == 5

    @pytest.mark.parametrize("bad", [0, -1])
    async def test_max_items_below_one_raises_value_error(self, bad: int) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta())
            with pytest.raises(ValueError, match="max_items"):
                await sub.receive_batch(bad)
            with pytest.raises(ValueError, match="max_items"):
                sub.batches(bad)
            assert sub.statistics().buffered == 1

    @pytest.mark.parametrize("bad", [1.5, "2", True])
    async def test_max_items_not_an_int_raises_type_error(self, bad: Any) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            with pytest.raises(TypeError, match="max_items"):
                await sub.receive_batch(bad)
            with pytest.raises(TypeError, match="max_items"):
                sub.batches(bad)

    async def test_waits_for_an_event(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:

            def emit_two() -> None:
                bus.emit(delta("1"))
                bus.emit(delta("2"))

            before, received = await received_when_woken(sub.receive_batch, emit_two)
            assert before == []
            # Woken by the first emit, it ran after both: it takes both at once.
            assert received == [bus.replay()]

    async def test_is_a_cancellation_point_on_the_fast_path(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("1"))
            calls = await cancelled_calls(sub.receive_batch, sub.batches())
            assert calls == 2 * EVENTS_PER_YIELD + 2
            assert sub.statistics().buffered == 1
            assert texts(await sub.receive_batch()) == ["1"]

    async def test_cancelled_while_waiting_loses_nothing(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            assert await cancelled_while_waiting(sub.receive_batch)
            bus.emit(delta("1"))
            assert texts(await sub.receive_batch()) == ["1"]
            assert sub.statistics().delivered == 1

    async def test_yields_to_the_scheduler_at_bounded_intervals(self) -> None:
        ticks = 0
        seen: list[tuple[int, int]] = []  # (events handed out, ticks) per batch

        async def counter() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await checkpoint()

        total = EVENTS_PER_YIELD * 5 + 7
        async with EventBus() as bus, bus.subscribe(buffer_size=total) as sub:
            for index in range(total):
                bus.emit(delta(str(index)))
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(counter)
                    handed_out = 0
                    while handed_out < total:
                        # Ask for more than the interval: the bound still holds.
                        batch = await sub.receive_batch(10 * EVENTS_PER_YIELD)
                        assert 1 <= len(batch) <= EVENTS_PER_YIELD
                        handed_out += len(batch)
                        seen.append((handed_out, ticks))
                    tg.cancel_scope.cancel()
        # Every EVENTS_PER_YIELD events handed out gave the counter a turn (the
        # scheduler may run it just after the batch in which it was woken, and
        # trio orders the tasks of one scheduler round at random).
        for handed_out, tick in seen:
            assert tick >= handed_out // EVENTS_PER_YIELD - 2, seen
        assert seen[-1][1] >= total // EVENTS_PER_YIELD - 1

    async def test_counts_receive_towards_the_yield_interval(self) -> None:
        # receive() and receive_batch() share one count: after EVENTS_PER_YIELD - 4
        # receives, a batch hands out at most 4 events before it yields.
        total = EVENTS_PER_YIELD + 10
        async with EventBus() as bus, bus.subscribe(buffer_size=total) as sub:
            for index in range(total):
                bus.emit(delta(str(index)))
            for _ in range(EVENTS_PER_YIELD - 4):
                await sub.receive()
            assert len(await sub.receive_batch()) == 4
            assert len(await sub.receive_batch()) == 10

    async def test_ends_with_end_of_stream_after_the_terminal_event(self) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r1") as sub:
            bus.emit(delta("1"))
            bus.emit(RunFinished(run_id="r1"))
            bus.emit(delta("other run", run_id="r2"))
            batch = await sub.receive_batch()
            assert [e.kind for e in batch] == ["message.delta", "run.finished"]
            with pytest.raises(anyio.EndOfStream):
                await sub.receive_batch()
            with pytest.raises(anyio.EndOfStream):
                await sub.receive_batch()

    async def test_ends_with_end_of_stream_when_the_bus_closes(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("1"))
            await bus.aclose()
            assert texts(await sub.receive_batch()) == ["1"]
            with pytest.raises(anyio.EndOfStream):
                await sub.receive_batch()

    async def test_raises_closed_resource_error_after_close(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("1"))
            sub.close()
            with pytest.raises(anyio.ClosedResourceError):
                await sub.receive_batch()
            assert sub.statistics().dropped == 1

    async def test_close_wakes_a_task_waiting_in_receive_batch(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            caught = await closed_while_waiting(sub, sub.receive_batch)
            assert len(caught) == 1

    async def test_receive_batch_before_entering_raises_runtime_error(self) -> None:
        async with EventBus() as bus:
            sub = bus.subscribe()
            try:
                with pytest.raises(RuntimeError, match="enter"):
                    await sub.receive_batch()
            finally:
                sub.close()

    @pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
    async def test_gap_notices_come_at_their_place(self, policy: Overflow) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(buffer_size=2, overflow=policy, gap_events=True) as sub,
        ):
            for index in range(5):
                bus.emit(delta(str(index)))
            batch = await sub.receive_batch()
            if policy is Overflow.DROP_OLDEST:
                assert isinstance(batch[0], EventsDropped)
                assert (batch[0].count, batch[0].first_offset) == (3, 1)
                assert texts(batch[1:]) == ["3", "4"]
            else:
                assert texts(batch[:2]) == ["0", "1"]
                assert isinstance(batch[2], EventsDropped)
                assert (batch[2].count, batch[2].first_offset) == (3, 3)
                assert len(batch) == 3
            stats = sub.statistics()
            assert (stats.delivered, stats.dropped, stats.buffered) == (2, 3, 0)

    async def test_replay_then_live_in_batches(self) -> None:
        async with EventBus() as bus:
            for index in range(100):
                bus.emit(delta(f"h{index}"))
            async with bus.subscribe(replay=True) as sub:
                bus.emit(delta("live"))
                received: list[Event] = []
                while len(received) < 101:
                    batch = await sub.receive_batch(30)
                    assert 1 <= len(batch) <= 30
                    received += batch
                assert texts(received) == [f"h{i}" for i in range(100)] + ["live"]
                assert [e.offset for e in received] == list(range(1, 102))
                with pytest.raises(anyio.WouldBlock):
                    sub.receive_nowait()
                assert sub.statistics().delivered == 101

    async def test_batches_iterates_until_the_end(self) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r1") as sub:
            for index in range(3):
                bus.emit(delta(str(index)))
            bus.emit(RunFinished(run_id="r1"))
            batches = [batch async for batch in sub.batches(2)]
            assert [[e.kind for e in b] for b in batches] == [
                ["message.delta", "message.delta"],
                ["message.delta", "run.finished"],
            ]

    async def test_batches_raises_closed_resource_error_after_close(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            sub.close()
            batches = sub.batches()
            with pytest.raises(anyio.ClosedResourceError):
                await batches.__anext__()

    async def test_kinds_with_one_class_types_the_batch(self) -> None:
        async with EventBus() as bus, bus.subscribe(kinds=MessageDelta) as sub:
            bus.emit(delta("1"))
            batch = await sub.receive_batch()
            assert batch[0].text == "1"  # typed: list[MessageDelta]


def _same(event: Event) -> object:
    """What two subscriptions must agree on for one received item (a notice is
    made per subscription: its fields, not its span id)."""
    if isinstance(event, EventsDropped):
        fields = (event.count, event.first_offset, event.last_offset)
        return ("gap", *fields, event.run_id, event.lane_id)
    return event


def _take_nowait(sub: Subscription[Event], count: int) -> list[Event] | type:
    """Up to *count* events by repeated ``receive_nowait()``; or the exception
    type if the first call raised."""
    taken: list[Event] = []
    while len(taken) < count:
        try:
            taken.append(sub.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream) as exc:
            return taken or type(exc)
    return taken


class TestReceiveBatchProperty:
    @given(
        spec=subscribe_kwargs(),
        buffer_size=st.integers(1, 12),
        operations=st.lists(
            # Mostly emits, mostly non-terminal, so that batches find several
            # events (and notices) ready.
            st.one_of(
                *[bus_events(classes=(MessageDelta, Log))] * 6,
                bus_events(),
                st.integers(1, 6) | st.just(EVENTS_PER_YIELD),
            ),
            max_size=80,
        ),
    )
    async def test_a_batch_is_what_receive_nowait_gives(
        self,
        anyio_backend: str,
        spec: dict[str, Any],
        buffer_size: int,
        operations: list[Any],
    ) -> None:
        spec = {**spec, "buffer_size": buffer_size}
        # Two subscriptions with the same arguments: one takes batches, the other
        # as many events one at a time. They agree on every item and every
        # counter, and delivered + dropped + buffered == matched.
        async with (
            EventBus() as bus,
            bus.subscribe(**spec) as batched,
            bus.subscribe(**spec) as single,
        ):
            for operation in operations:
                if isinstance(operation, int):
                    expected = _take_nowait(single, operation)
                    if expected is anyio.WouldBlock:
                        assert await cancelled_while_waiting(batched.receive_batch)
                    elif expected is anyio.EndOfStream:
                        with pytest.raises(anyio.EndOfStream):
                            await batched.receive_batch(operation)
                    else:
                        assert isinstance(expected, list)
                        batch = await batched.receive_batch(operation)
                        assert [_same(e) for e in batch] == [_same(e) for e in expected]
                else:
                    with suppress(anyio.WouldBlock):  # a full BLOCK pair
                        bus.emit(operation)
                one, other = batched.statistics(), single.statistics()
                counters = (one.delivered, one.dropped, one.buffered)
                assert counters == (other.delivered, other.dropped, other.buffered)
                assert one.matched == sum(counters)
            await bus.aclose()
            rest = [e async for batch in batched.batches() for e in batch]
            assert [_same(e) for e in rest] == [_same(e) for e in drain(single)]
            one, other = batched.statistics(), single.statistics()
            assert attrs.evolve(one, name=other.name) == other
