"""Reliability: cancellation at every await point, fault injection, closing under
load, a thread storm with subscribers joining and leaving, and leaks.

Cancellation is swept, not sampled: a scenario runs once per ``k`` with its
victim cancelled after the test task has passed ``k`` checkpoints, from 0 until
the victim finishes first, so every point where the victim yields to the
scheduler is hit by a cancellation, on each backend. Cancellation checks that do
not yield (``receive()`` handing out buffered events) are hit by the victim
cancelling itself before its j-th call, for every j; waits with more than one
wake-up (``publish`` on two full ``BLOCK`` subscribers) are enumerated. Whatever
point was hit, the bus must keep its invariants (stamps gapless, history
consistent, accounting exact, nothing lost or duplicated) and stay usable.

Nothing sleeps to synchronise: tasks meet through ``all_tasks_blocked()``,
``task_status.started()`` and thread events waited for in worker threads, and
every wait is bounded by ``fail_after()``.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from contextlib import nullcontext
from functools import partial
from typing import Any

import anyio
import attrs
import pytest
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from helpers import all_tasks_blocked, drain

from purpose_bus import (
    BusClosed,
    Event,
    EventBus,
    EventRejected,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    RunFinished,
    Subscription,
    SubscriptionStatistics,
    Visibility,
)

#: Every wait in this module is bounded by this (seconds): a hang fails the test.
DEADLINE = 30


@attrs.frozen(kw_only=True)
class Tick(Event):
    """A numbered event from one producer: ``n`` counts 0, 1, 2 ... per ``source``."""

    kind = "tests.reliability.tick"

    source: int
    n: int


def tick(source: int, n: int, *, run_id: str | None = None) -> Tick:
    return Tick(run_id=run_id or f"t{source}", source=source, n=n)


def history(bus: EventBus) -> list[Event]:
    return bus.replay(visibility=Visibility.PRIVATE)


def check_stamps(bus: EventBus) -> None:
    """History holds offsets ``emitted - history + 1 ... emitted`` in order,
    and per run and lane the seqs it holds are consecutive."""
    stats = bus.statistics()
    events = history(bus)
    assert len(events) == stats.history
    assert [e.offset for e in events] == list(
        range(stats.emitted - stats.history + 1, stats.emitted + 1)
    )
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event in events:
        seqs[event.run_id, event.lane_id].append(event.seq)
    for values in seqs.values():
        assert values == list(range(values[0], values[0] + len(values)))


def check_accounting(sub: Subscription[Event], matched: int) -> None:
    stats = sub.statistics()
    assert stats.delivered + stats.dropped + stats.buffered == matched, stats


async def check_usable(bus: EventBus) -> None:
    """A new subscription gets a new event, stamped with the next offset."""
    emitted = bus.statistics().emitted
    async with bus.subscribe(run_id="probe", visibility=Visibility.PRIVATE) as sub:
        published = await bus.publish(Log(run_id="probe", message="still usable"))
        assert published is not None
        assert published.offset == emitted + 1
        with anyio.fail_after(DEADLINE):
            assert await sub.receive() == published
    check_stamps(bus)


async def cancelled_after(steps: int, victim: Callable[[], Awaitable[object]]) -> bool:
    """Run *victim* in a task and cancel it once this task has passed *steps*
    checkpoints; return whether it was cancelled (``False``: it finished
    first)."""
    scope = anyio.CancelScope()
    finished = False

    async def run() -> None:
        nonlocal finished
        with scope:
            await victim()
            finished = True

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            for _ in range(steps):
                await checkpoint()
            scope.cancel()
    return not finished


async def sweep(
    scenario: Callable[[int], Awaitable[bool]], *, at_least: int = 2, limit: int = 400
) -> int:
    """Run ``scenario(k)`` for k = 0, 1, 2 ... until it reports that its victim
    finished before the cancellation; return how many points were cancelled."""
    for steps in range(limit):
        if not await scenario(steps):
            assert steps >= at_least, f"only {steps} cancellation points reached"
            return steps
    raise AssertionError(f"the victim never finished within {limit} checkpoints")


# -- cancellation at every await point --------------------------------------------


class TestCancellationSweep:
    async def test_publish_waiting_on_block(self) -> None:
        """A producer publishes 6 events through a ``BLOCK`` subscriber of
        buffer 1 while a consumer receives them one by one; cancelled anywhere,
        every event it published was accepted and delivered once, the one it was
        publishing left no trace, and the bus goes on."""

        async def scenario(steps: int) -> bool:
            published: list[Event] = []
            received: list[Event] = []
            async with (
                EventBus() as bus,
                bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
                bus.subscribe(name="other", buffer_size=100) as other,
            ):

                async def producer() -> None:
                    for n in range(6):
                        stamped = await bus.publish(tick(0, n))
                        assert stamped is not None
                        published.append(stamped)

                async def consumer() -> None:
                    async for event in sub:
                        received.append(event)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consumer)
                    cancelled = await cancelled_after(steps, producer)
                    await all_tasks_blocked()
                    tg.cancel_scope.cancel()
                assert history(bus) == published
                received.extend(drain(sub))
                assert received == published
                assert drain(other) == published
                check_accounting(sub, len(published))
                check_accounting(other, len(published))
                assert bus.statistics().dropped == 0
                check_stamps(bus)
                await check_usable(bus)
            return cancelled

        await sweep(scenario)

    @pytest.mark.parametrize(
        "point",
        [
            "waiting on the first",
            "woken by the first",
            "waiting on the second",
            "woken by the second",
            None,
        ],
    )
    async def test_publish_waiting_on_two_block_subscribers(
        self, point: str | None
    ) -> None:
        """Room in one full ``BLOCK`` subscriber wakes the publisher, which then
        waits for the other: cancelled at either wait, or just after either
        wake-up, it leaves no trace (or, woken, completes: either is allowed)."""
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as first,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as second,
        ):
            bus.emit(tick(0, 0))  # both full: a publisher waits on the first
            before = bus.statistics()
            result: list[Event | None] = []

            scope = anyio.CancelScope()

            async def publish() -> None:
                with scope:
                    result.append(await bus.publish(tick(0, 1)))

            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish)
                    await all_tasks_blocked()
                    if point == "waiting on the first":
                        scope.cancel()
                    first.receive_nowait()
                    if point == "woken by the first":
                        scope.cancel()
                    await all_tasks_blocked()
                    assert result == []  # still waiting (for the second), or gone
                    if point == "waiting on the second":
                        scope.cancel()
                    second.receive_nowait()
                    if point == "woken by the second":
                        scope.cancel()
            if result:
                [stamped] = result
                assert stamped is not None
                assert point in (None, "woken by the second")
                assert drain(first) == drain(second) == [stamped]
                assert history(bus)[-1] == stamped
            else:
                assert point is not None
                assert bus.statistics().emitted == before.emitted
                assert drain(first) == drain(second) == []
            emitted = bus.statistics().emitted
            check_accounting(first, emitted)
            check_accounting(second, emitted)
            assert bus.statistics().dropped == 0
            await check_usable(bus)

    @pytest.mark.parametrize("replay", [False, True], ids=["live", "replay"])
    async def test_receive(self, replay: bool) -> None:
        """A consumer receives 150 events (replayed from history, or live while
        a producer emits them) and is cancelled: from outside after k of the
        test's checkpoints (hitting its waits), or by itself before its j-th
        receive (hitting every receive's cancellation check). Receiving again
        continues exactly where it stopped: nothing lost, nothing twice."""
        total = 150

        async def scenario(steps: int, own: int | None) -> bool:
            received: list[Event] = []
            async with EventBus() as bus:
                if replay:
                    for n in range(total):
                        bus.emit(tick(0, n))
                async with bus.subscribe(replay=replay, buffer_size=total) as sub:

                    async def consume() -> None:
                        while len(received) < total:
                            if len(received) == own:
                                with anyio.CancelScope() as scope:
                                    scope.cancel()
                                    await sub.receive()
                                    raise AssertionError("receive() was not cancelled")
                                assert scope.cancelled_caught
                                return
                            received.append(await sub.receive())

                    async def produce() -> None:
                        for n in range(total):
                            bus.emit(tick(0, n))
                            if n % 7 == 0:
                                await checkpoint()

                    async with anyio.create_task_group() as tg:
                        if not replay:
                            tg.start_soon(produce)
                        if own is None:
                            cancelled = await cancelled_after(steps, consume)
                        else:
                            with anyio.fail_after(DEADLINE):
                                await consume()
                            cancelled = True
                    own = None
                    with anyio.fail_after(DEADLINE):
                        await consume()
                    assert [e.n for e in received if isinstance(e, Tick)] == list(
                        range(total)
                    )
                    assert received == history(bus)
                    check_accounting(sub, total)
                    assert sub.statistics().dropped == 0
                    await check_usable(bus)
            return cancelled

        # Replayed events are handed out without a scheduler round trip (up to
        # EVENTS_PER_YIELD of them): from outside, only the first receive and the
        # live waits can be hit; the loop below hits every receive.
        await sweep(lambda steps: scenario(steps, None), at_least=1)
        for own in range(total + 1):
            assert await scenario(0, own)

    async def test_subscribe_with_replay_and_leave(self) -> None:
        """A task enters ``subscribe(replay=True)`` over a history that is being
        evicted, reads some, and is cancelled anywhere (from outside, or by
        itself before its j-th receive): its subscription is unregistered at
        once and later evictions are not counted against it."""

        async def scenario(steps: int, own: int | None = None) -> bool:
            async with EventBus(history_size=20) as bus:
                for n in range(20):
                    bus.emit(tick(0, n))
                subs: list[Subscription[Event]] = []

                async def late_joiner() -> None:
                    with anyio.CancelScope() as scope:
                        async with bus.subscribe(replay=True, gap_events=True) as sub:
                            subs.append(sub)
                            for j in range(7):
                                if j == own:
                                    scope.cancel()
                                await sub.receive()
                                bus.emit(tick(1, j))  # evicts unread history
                    if own is not None:
                        assert scope.cancelled_caught

                if own is None:
                    cancelled = await cancelled_after(steps, late_joiner)
                else:
                    await late_joiner()
                    cancelled = True
                assert bus.statistics().subscriptions == ()
                dropped = bus.statistics().dropped
                if not subs:  # cancelled while entering: nothing was registered
                    assert cancelled
                    await check_usable(bus)
                    return cancelled
                [sub] = subs
                stats = sub.statistics()
                assert stats.buffered == 0
                if cancelled:
                    assert stats.delivered < 7
                for n in range(50):
                    bus.emit(tick(2, n))
                assert bus.statistics().dropped == dropped
                assert sub.statistics() == stats
                check_stamps(bus)
                await check_usable(bus)
            return cancelled

        await sweep(scenario, at_least=1)
        for own in range(7):
            assert await scenario(0, own)

    async def test_aclose_with_threads_and_blocked_publishers(self) -> None:
        """``aclose`` while a thread waits on a full hand-off behind a full
        ``BLOCK`` subscriber and a task waits in ``publish``: cancelled anywhere,
        the close completes (it is shielded), the thread is released, the
        publisher gets ``BusClosed``, and every event the thread got in is
        delivered."""

        async def scenario(steps: int) -> bool:
            accepted: list[int] = []
            handed_off = threading.Event()
            async with EventBus(thread_buffer_size=2) as bus:
                sub = bus.subscribe(overflow=Overflow.BLOCK, buffer_size=2)
                async with sub:

                    def produce() -> None:
                        try:
                            for n in range(100):
                                bus.emit(tick(0, n))
                                accepted.append(n)
                                if n == 2:  # (the hand-off and buffer hold 5)
                                    handed_off.set()
                        except BusClosed:
                            pass
                        finally:
                            handed_off.set()

                    publisher_outcome: list[object] = []

                    async def publisher() -> None:
                        try:
                            publisher_outcome.append(await bus.publish(tick(1, 0)))
                        except BusClosed as exc:
                            publisher_outcome.append(exc)

                    with anyio.fail_after(DEADLINE):
                        async with anyio.create_task_group() as tg:
                            thread = threading.Thread(target=produce, daemon=True)
                            thread.start()
                            await anyio.to_thread.run_sync(handed_off.wait)
                            tg.start_soon(publisher)
                            await all_tasks_blocked()
                            cancelled = await cancelled_after(steps, bus.aclose)
                        await anyio.to_thread.run_sync(thread.join)
                    assert bus.closed
                    received = [e async for e in sub]
                assert len(publisher_outcome) == 1
                if isinstance(publisher_outcome[0], Event):
                    assert publisher_outcome[0] in received
                else:
                    assert isinstance(publisher_outcome[0], BusClosed)
                ticks = [e.n for e in received if isinstance(e, Tick) and e.source == 0]
                assert ticks == accepted  # every event the thread got in, in order
                assert sub.statistics().dropped == 0
                assert received == history(bus)
            return cancelled

        await sweep(scenario, at_least=1)


# -- faults -------------------------------------------------------------------------


class TestFaults:
    async def test_a_subscriber_body_that_raises(self) -> None:
        """A ``BLOCK`` subscriber's body raises while a publisher waits on it and
        a thread emits: it is unregistered at once, the publisher goes on, and a
        healthy subscriber receives every event exactly once."""
        total = 2_000
        async with (
            EventBus(thread_buffer_size=64) as bus,
            bus.subscribe(run_id="p", buffer_size=total * 2) as healthy,
        ):
            faulty = bus.subscribe(
                run_id="p", overflow=Overflow.BLOCK, buffer_size=2, name="faulty"
            )

            async def consume_until_the_bug() -> None:
                async with faulty:
                    async for event in faulty:
                        if isinstance(event, Tick) and event.n == 50:
                            raise ValueError("consumer bug")

            async def faulty_consumer() -> None:
                with pytest.raises(ValueError, match="consumer bug"):
                    await consume_until_the_bug()

            async def publisher() -> None:
                for n in range(total):
                    await bus.publish(Tick(run_id="p", source=0, n=n))

            def thread_producer() -> None:
                for n in range(total):
                    bus.emit(Tick(run_id="p", source=1, n=n))

            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(faulty_consumer)
                    tg.start_soon(publisher)
                    await anyio.to_thread.run_sync(thread_producer)
            names = [s.name for s in bus.statistics().subscriptions]
            assert "faulty" not in names
            stats = faulty.statistics()
            assert stats.buffered == 0
            assert stats.delivered >= 51
            with anyio.fail_after(DEADLINE):
                received = [await healthy.receive() for _ in range(2 * total)]
            by_source: dict[int, list[int]] = defaultdict(list)
            for event in received:
                assert isinstance(event, Tick)
                by_source[event.source].append(event.n)
            assert by_source == {0: list(range(total)), 1: list(range(total))}
            assert drain(healthy) == []
            await check_usable(bus)

    @pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
    async def test_a_guard_that_raises_in_threads_and_on_the_loop(
        self, strict: bool, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A guard raises on every seventh event, from four threads (``emit`` and
        ``publish_from_thread``) and on the loop: those events are rejected and
        counted (raised as ``EventRejected`` where the bus is strict), the
        others are delivered in order, and nothing else breaks."""

        def flaky(event: Event) -> str | None:
            if isinstance(event, Tick) and event.n % 7 == 3:
                raise RuntimeError(f"guard bug on {event.n}")
            return None

        per_thread = 300
        outcomes: dict[int, list[str]] = defaultdict(list)

        def produce(source: int, bus: EventBus) -> None:
            for n in range(per_thread):
                event = tick(source, n)
                send = bus.publish_from_thread if n % 2 else bus.emit
                try:
                    send(event)
                except EventRejected:
                    outcomes[source].append("raised")
                else:
                    outcomes[source].append("returned")

        with caplog.at_level(logging.ERROR, logger="purpose_bus"):
            async with (
                EventBus(guards=(flaky,), strict=strict) as bus,
                bus.subscribe(buffer_size=10_000) as sub,
            ):
                with anyio.fail_after(DEADLINE):
                    async with anyio.create_task_group() as tg:
                        for source in range(4):
                            tg.start_soon(
                                anyio.to_thread.run_sync, partial(produce, source, bus)
                            )
                        for n in range(per_thread):  # the loop, at the same time
                            try:
                                bus.emit(tick(9, n))
                            except EventRejected:
                                assert strict
                            await checkpoint()
                received = drain(sub)
                stats = bus.statistics()
        bad = [n for n in range(per_thread) if n % 7 == 3]
        assert stats.rejected == 5 * len(bad)
        assert stats.emitted == 5 * (per_thread - len(bad))
        by_source: dict[int, list[int]] = defaultdict(list)
        for event in received:
            assert isinstance(event, Tick)
            by_source[event.source].append(event.n)
        for source in (0, 1, 2, 3, 9):
            assert by_source[source] == [n for n in range(per_thread) if n % 7 != 3]
        for source in range(4):
            raised = [n for n, o in enumerate(outcomes[source]) if o == "raised"]
            assert raised == (bad if strict else [])
        errors = [r for r in caplog.records if "raised on a" in r.getMessage()]
        assert len(errors) == 5 * len(bad)
        assert all(r.exc_info is not None for r in errors)

    async def test_close_while_publishers_wait_threads_emit_and_subscribers_replay(
        self,
    ) -> None:
        """Close the bus while two loop publishers wait on a full ``BLOCK``
        auditor, four threads emit (blocked on a full hand-off), one thread
        waits in ``publish_from_thread``, and two late joiners replay a history
        that is being evicted. Nothing hangs; every event accepted (an ``emit``
        that returned, a publish that returned an event) reaches the auditor
        once, in order; what a late joiner did not get is counted and
        announced."""
        threads, history_size = 4, 50
        accepted: dict[int, int] = {}
        published: list[Event] = []
        refused: list[BusClosed] = []
        joiners: dict[str, tuple[int, list[Event], Subscription[Event]]] = {}
        audited: list[Event] = []

        def emit_until_closed(source: int, bus: EventBus) -> None:
            n = 0
            try:
                while True:
                    bus.emit(tick(source, n, run_id="load"))
                    n += 1
            except BusClosed:
                accepted[source] = n

        def publish_until_closed(bus: EventBus) -> None:
            try:
                while True:
                    result = bus.publish_from_thread(tick(7, 0, run_id="load"))
                    assert result is not None
                    published.append(result)
            except BusClosed as exc:
                refused.append(exc)

        async def loop_publisher(bus: EventBus, source: int) -> None:
            n = 0
            try:
                while True:
                    result = await bus.publish(tick(source, n, run_id="load"))
                    assert result is not None
                    published.append(result)
                    n += 1
            except BusClosed as exc:
                refused.append(exc)

        async def auditor(
            sub: Subscription[Event], *, task_status: TaskStatus[None]
        ) -> None:
            task_status.started()
            async for event in sub:  # then stops reading: everything backs up
                audited.append(event)
                if len(audited) == 300:
                    return

        async def late_joiner(
            bus: EventBus, name: str, *, task_status: TaskStatus[None]
        ) -> None:
            sub = bus.subscribe(replay=True, gap_events=True, buffer_size=8, name=name)
            async with sub:
                stats = bus.statistics()
                first = stats.emitted - stats.history + 1  # what it will replay from
                task_status.started()
                received = [e async for e in sub]
            joiners[name] = (first, received, sub)

        with anyio.fail_after(DEADLINE):
            async with EventBus(
                history_size=history_size, thread_buffer_size=16
            ) as bus:
                audit = bus.subscribe(
                    overflow=Overflow.BLOCK, buffer_size=32, name="audit"
                )
                async with audit, anyio.create_task_group() as tg:
                    await tg.start(auditor, audit)
                    for source in range(threads):
                        emit = partial(emit_until_closed, source, bus)
                        tg.start_soon(anyio.to_thread.run_sync, emit)
                    publish = partial(publish_until_closed, bus)
                    tg.start_soon(anyio.to_thread.run_sync, publish)
                    for source in (10, 11):
                        tg.start_soon(loop_publisher, bus, source)
                    await tg.start(late_joiner, bus, "early")
                    while len(audited) < 300:
                        await all_tasks_blocked()
                    await tg.start(late_joiner, bus, "late")
                    await all_tasks_blocked()
                    await bus.aclose()
                    audited.extend([e async for e in audit])
        emitted = bus.statistics().emitted
        assert len(refused) == 3  # two loop publishers and the publishing thread
        assert [e.offset for e in audited] == list(range(1, emitted + 1))
        by_source: dict[int, list[int]] = defaultdict(list)
        for event in audited:
            assert isinstance(event, Tick)
            by_source[event.source].append(event.n)
        for source in range(threads):
            assert by_source[source] == list(range(accepted[source]))
        offsets = {e.offset for e in audited}
        assert all(e.offset in offsets for e in published)
        assert audit.statistics().dropped == 0
        for name in ("early", "late"):
            first, received, sub = joiners[name]
            stats = check_accounting_closed(sub, received)
            assert stats.delivered + stats.dropped == emitted - first + 1


def check_accounting_closed(
    sub: Subscription[Event], received: Iterable[Event]
) -> SubscriptionStatistics:
    """After a subscription ended: what it received plus what its notices
    announced is everything it matched, and the notices add up to dropped."""
    received = list(received)
    stats = sub.statistics()
    notices = [e for e in received if isinstance(e, EventsDropped)]
    events = [e for e in received if not isinstance(e, EventsDropped)]
    assert stats.buffered == 0
    assert stats.delivered == len(events)
    assert stats.dropped == sum(n.count for n in notices)
    offsets = [e.offset for e in events]
    assert offsets == sorted(set(offsets))
    for notice in notices:
        assert not any(notice.first_offset <= o <= notice.last_offset for o in offsets)
    return stats


async def live_subscriptions() -> int:
    """How many ``Subscription`` objects exist, after an unrelated cancellation
    and a collection (the backend keeps the latest cancellation exception, and
    through its traceback the ``receive()`` frame it interrupted, until the
    next one)."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await checkpoint()
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Subscription))


# -- a thread storm -------------------------------------------------------------------


@attrs.define
class Visit:
    """One subscription that joined and left during the storm."""

    kwargs: dict[str, Any]
    entered_at: int  # the newest offset when it was registered
    left_at: int = 0
    received: list[Event] = attrs.Factory(list)
    delivered: int = 0
    dropped: int = 0
    buffered: int = 0


def _matches(kwargs: dict[str, Any], event: Event) -> bool:
    runs = kwargs.get("run_id")
    if runs is not None and event.run_id not in runs:
        return False
    level: Visibility = kwargs.get("visibility", Visibility.PUBLIC)
    return event.visibility <= level


async def storm(
    *,
    threads: int,
    per_thread: int,
    visits: int,
    seed: int = 7,
    history_size: int | None = None,
    thread_buffer_size: int = 256,
) -> dict[str, Any]:
    """*threads* threads each emit *per_thread* events (then their run's
    terminal event) while subscriptions join and leave *visits* times on the
    loop; return what happened, checked."""
    rng = random.Random(seed)
    total = threads * (per_thread + 1)
    done: list[Visit] = []
    everything: list[Event] = []
    notices = 0
    ends: list[str] = []

    def produce(source: int, bus: EventBus) -> None:
        run = f"t{source}"
        for n in range(per_thread):
            vis = Visibility.INTERNAL if n % 5 == 0 else Visibility.PUBLIC
            bus.emit(Tick(run_id=run, source=source, n=n, visibility=vis))
        bus.emit(RunFinished(run_id=run))

    async def visit(bus: EventBus) -> None:
        kwargs: dict[str, Any] = {
            "overflow": rng.choice(list(Overflow)),
            "buffer_size": rng.choice([1, 4, 64]),
            "gap_events": rng.random() < 0.5,
        }
        if rng.random() < 0.5:
            kwargs["run_id"] = [f"t{s}" for s in rng.sample(range(threads), 2)]
        if rng.random() < 0.3:
            kwargs["visibility"] = Visibility.INTERNAL
        sub = bus.subscribe(**kwargs)
        async with sub:
            record = Visit(kwargs, entered_at=bus.statistics().emitted)
            for _ in range(rng.randrange(0, 40)):
                if rng.random() < 0.5:
                    await checkpoint()
                try:
                    record.received.append(sub.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    await checkpoint()
            stats = sub.statistics()
            record.left_at = bus.statistics().emitted
            record.delivered, record.dropped = stats.delivered, stats.dropped
            record.buffered = stats.buffered
            if sub.statistics().overflow is Overflow.BLOCK:
                assert stats.dropped == 0
        done.append(record)

    async def auditor(
        sub: Subscription[Event], *, task_status: TaskStatus[None]
    ) -> None:
        task_status.started()
        async for event in sub:
            everything.append(event)

    async def slow(sub: Subscription[Event], *, task_status: TaskStatus[None]) -> None:
        nonlocal notices
        task_status.started()
        async for event in sub:
            if isinstance(event, EventsDropped):
                notices += event.count
            elif event.terminal:
                ends.append(event.run_id)
            await checkpoint()

    before = await live_subscriptions()
    bus = EventBus(
        history_size=history_size or total + 10,
        thread_buffer_size=thread_buffer_size,
    )
    with anyio.fail_after(DEADLINE * 4):
        async with bus:
            audit = bus.subscribe(
                overflow=Overflow.BLOCK, buffer_size=128, visibility=Visibility.PRIVATE
            )
            lossy = bus.subscribe(buffer_size=16, gap_events=True)
            async with audit, lossy, anyio.create_task_group() as tg:
                await tg.start(auditor, audit)
                await tg.start(slow, lossy)
                async with anyio.create_task_group() as producers:
                    for source in range(threads):
                        producers.start_soon(
                            anyio.to_thread.run_sync, partial(produce, source, bus)
                        )
                    for _ in range(visits):
                        await visit(bus)
                await bus.aclose()
            lossy_stats = lossy.statistics()
            audit_stats = audit.statistics()
            remaining = bus.statistics().subscriptions
            held = history(bus)

    # The BLOCK auditor lost nothing: every event, each thread's in order.
    assert audit_stats.dropped == 0
    assert len(everything) == total == len(held)
    assert everything == held
    by_source: dict[int, list[int]] = defaultdict(list)
    for event in everything:
        if isinstance(event, Tick):
            by_source[event.source].append(event.n)
    assert by_source == {s: list(range(per_thread)) for s in range(threads)}
    # The lossy one announced every loss.
    assert lossy_stats.delivered + lossy_stats.dropped == total - sum(
        1 for e in held if e.visibility > Visibility.PUBLIC
    )
    assert notices == lossy_stats.dropped
    assert sorted(ends) == sorted(f"t{s}" for s in range(threads))  # never dropped
    # Every visitor: delivered + dropped + buffered == matched while registered,
    # and it received a subsequence of what it matched, in order.
    for record in done:
        window = held[record.entered_at : record.left_at]  # offsets are 1, 2, ...
        matched = [e for e in window if _matches(record.kwargs, e)]
        assert record.delivered + record.dropped + record.buffered == len(matched)
        got = [e for e in record.received if not isinstance(e, EventsDropped)]
        offsets = [e.offset for e in got]
        assert offsets == sorted(set(offsets))
        assert got == [held[o - 1] for o in offsets]
        assert all(_matches(record.kwargs, e) for e in got)
        if record.kwargs["overflow"] is Overflow.BLOCK:
            assert got == matched[: len(got)]
    assert remaining == ()
    del audit, lossy
    assert await live_subscriptions() == before, "a subscription that left is held"
    return {
        "events": total,
        "visits": len(done),
        "lossy dropped": lossy_stats.dropped,
    }


class TestThreadStorm:
    async def test_eight_threads_while_subscribers_join_and_leave(self) -> None:
        result = await storm(threads=8, per_thread=1_500, visits=300)
        assert result["events"] == 8 * 1_501
        assert result["visits"] == 300

    async def test_with_a_hand_off_of_one(self) -> None:
        """Maximum backpressure on the threads: a hand-off of one event."""
        result = await storm(threads=8, per_thread=200, visits=50, thread_buffer_size=1)
        assert result["events"] == 8 * 201


# -- leaks ----------------------------------------------------------------------------


class TestLeaks:
    async def test_subscribe_and_leave_cycles_retain_nothing(self) -> None:
        """Thousands of subscriptions of every kind (replaying, resuming, run
        scoped, BLOCK, cancelled while waiting, failing) come and go: none is
        left alive, and the bus's memory does not grow. (A history of one event:
        see the next test for what a longer one retains.)"""
        async with EventBus(history_size=1) as bus:

            async def cycle(index: int) -> None:
                run = f"r{index % 13}"
                mode = index % 5
                kwargs: dict[str, Any] = {
                    "run_id": run if index % 2 else None,
                    "overflow": list(Overflow)[index % 3],
                    "buffer_size": 2,
                    "replay": mode == 1,
                    "after": index % 3_000 if mode == 2 else None,
                    "gap_events": bool(index % 3),
                }
                sub = bus.subscribe(**kwargs)
                if mode == 3:
                    with anyio.CancelScope() as scope:
                        async with sub:
                            bus.emit(MessageDelta(run_id=run, text="x"))
                            drain(sub)
                            scope.cancel()
                            await sub.receive()
                    return
                with pytest.raises(KeyError) if mode == 4 else nullcontext():
                    async with sub:
                        bus.emit(MessageDelta(run_id=run, text="x"))
                        drain(sub)
                        bus.emit(MessageDelta(run_id=run, text="y"))
                        if mode == 4:
                            raise KeyError(run)

            before = await live_subscriptions()
            for index in range(1_000):  # warm up: caches, interned names
                await cycle(index)
            gc.collect()
            tracemalloc.start()
            try:
                for index in range(1_000, 2_000):
                    await cycle(index)
                gc.collect()
                first, _ = tracemalloc.get_traced_memory()
                for index in range(2_000, 5_000):
                    await cycle(index)
                gc.collect()
                second, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert bus.statistics().subscriptions == ()
            assert await live_subscriptions() == before
            # 3,000 more cycles: a leak of 8 bytes a cycle would show.
            assert second - first < 16 * 1024, (first, second)

    async def test_history_releases_evicted_events(self) -> None:
        """History is a ring of the last ``history_size`` events: an evicted
        event is no longer referenced by the bus, however many runs are open.

        Regression test: the per-run index kept up to 32 evicted events of each
        run (more for long runs) referenced, so with 90 runs interleaved a
        history of 200 kept about 3,000 events alive."""
        history_size, runs = 200, 90

        def alive() -> int:
            gc.collect()
            return sum(1 for o in gc.get_objects() if type(o) is Tick)

        async with EventBus(history_size=history_size) as bus:
            peak = 0
            for n in range(100 * runs):
                bus.emit(tick(n % runs, n))
                if n % 997 == 996:
                    peak = max(peak, alive())
            assert bus.statistics().history == history_size
        assert peak <= history_size, (
            f"{peak} events alive, history holds {history_size}"
        )
