"""The bus against its reference model (``tests/model.py``), as a hypothesis
state machine, on asyncio and on trio.

Rules subscribe (random filters, policy, buffer size, replay or a resume cursor,
gap notices), emit and publish (terminal kinds, every visibility, other runs,
events carrying hidden reasoning), emit bursts, end runs, emit from another
thread, join late (replaying a burst), receive (without waiting, or waiting),
leave (mid-replay too), replay and close the bus. After every step each
subscription's counters, the bus's counters and the history must equal the
model's; every event or notice a subscriber receives must be the one the model
says comes next.

The machine's rules are synchronous; the bus lives on a real event loop of the
chosen backend in a :func:`anyio.from_thread.start_blocking_portal` thread (one
per machine instance), and every call that must run on the loop goes through
the portal. An ``emit`` from the machine's own thread is the bus's thread
hand-off. Where the model says an operation waits (``publish`` on a full
``BLOCK`` subscriber, ``receive`` on an empty buffer, entering a subscription
in a cancelled scope), the machine starts it, waits until every task is
blocked, cancels it and checks that it left no trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from helpers import all_tasks_blocked, cancelled_while_waiting
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from model import (
    READ_AHEAD,
    Expected,
    ModelBus,
    ModelSubscription,
    check_received,
    check_statistics,
)
from strategies import (
    BUS_LANE_IDS,
    MACHINE_RUN_IDS,
    MACHINE_RUNS,
    SECRET,
    VISIBILITIES,
    machine_events,
    machine_subscribe_kwargs,
)

from purpose_bus import (
    EVENTS_PER_YIELD,
    BusClosed,
    Event,
    EventBus,
    Log,
    MessageDelta,
    Overflow,
    RunCancelled,
    RunError,
    RunFinished,
    Subscription,
    Visibility,
)
from purpose_bus import _replay as replay_module

T = TypeVar("T")

#: At most this many subscriptions open at once.
MAX_OPEN = 5
#: How long any single call on the loop may take before the test fails (a hang).
TIMEOUT = 10


async def outcome(call: Callable[[], Awaitable[T]]) -> T | BaseException:
    """Run *call* under a deadline; return what it returned or the exception."""
    try:
        with anyio.fail_after(TIMEOUT):
            return await call()
    except Exception as exc:
        return exc


def outcome_sync(call: Callable[[], T]) -> T | BaseException:
    try:
        return call()
    except Exception as exc:
        return exc


def same_outcome(expected: Event | type[Exception] | None, got: Any) -> None:
    if isinstance(expected, type):
        assert isinstance(got, expected), (expected, got)
    else:
        assert got == expected, (expected, got)


async def publish_cancelled_while_waiting(bus: EventBus, event: Event) -> bool:
    """Start ``publish(event)``, wait until it blocks, cancel it; return
    whether it was still waiting (it must be)."""
    done: list[object] = []
    before = bus.statistics()

    async def publisher() -> None:
        done.append(await bus.publish(event))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher)
            await all_tasks_blocked()
            assert bus.statistics() == before  # nothing recorded while it waits
            tg.cancel_scope.cancel()
    return not done


async def enter_cancelled(sub: Subscription[Event]) -> str:
    """Enter *sub* in a cancelled scope and receive: "entry" if entering raised
    the cancellation, "body" if the body's receive did (and leaving closed
    it)."""
    where = "entry"
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with sub:
            where = "body"
            await sub.receive()
            raise AssertionError("receive() did not raise the cancellation")
    assert scope.cancelled_caught
    return where


def receive_nowait(sub: Subscription[Event]) -> Event | BaseException:
    return outcome_sync(sub.receive_nowait)


class BusMachine(RuleBasedStateMachine):
    """One bus and up to :data:`MAX_OPEN` subscriptions against the model, on
    an event loop of :attr:`backend` (each subclass below picks one)."""

    backend = "asyncio"
    backend_options: dict[str, object] = {}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal(
            self.backend, self.backend_options
        )
        self.portal = self._portal_cm.__enter__()
        self.bus: EventBus | None = None
        self._bus_cm: AbstractContextManager[EventBus] | None = None
        self.model = ModelBus()
        self.subs: list[tuple[Subscription[Event], ModelSubscription]] = []
        self.names = 0
        #: Set when a step fails: teardown then only releases resources.
        self.failed = False

    # -- plumbing ---------------------------------------------------------------

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run *func* on the loop thread (awaited if it is async)."""
        return self.portal.call(func, *args)

    def step(self) -> None:
        self.failed = True  # cleared by the invariant, which runs after each step

    @property
    def open_bus(self) -> EventBus:
        assert self.bus is not None
        return self.bus

    # -- rules ------------------------------------------------------------------

    @initialize(
        history_size=st.sampled_from([0, 1, 3, 8, 10_000]),
        max_runs=st.sampled_from([2, 10_000]),
        strict=st.booleans(),
        specs=st.lists(machine_subscribe_kwargs(), min_size=1, max_size=3),
    )
    def open(
        self,
        history_size: int,
        max_runs: int,
        strict: bool,
        specs: list[dict[str, Any]],
    ) -> None:
        """Open a bus, with a few subscriptions (rules add and remove more)."""
        self.step()
        self.bus = EventBus(history_size=history_size, max_runs=max_runs, strict=strict)
        self._bus_cm = self.portal.wrap_async_context_manager(self.bus)
        self._bus_cm.__enter__()
        self.model = ModelBus(
            history_size=history_size, max_runs=max_runs, strict=strict
        )
        for spec in specs:
            self._subscribe(spec, after=None)

    @precondition(lambda self: sum(not m.closed for _, m in self.subs) < MAX_OPEN)
    @rule(spec=machine_subscribe_kwargs(), data=st.data())
    def subscribe(self, spec: dict[str, Any], data: st.DataObject) -> None:
        self.step()
        after = data.draw(
            st.none() | st.integers(0, self.model.offset + 2), label="after"
        )
        cancelled = data.draw(st.integers(0, 9), label="enter cancelled") == 0
        self._subscribe(spec, after=after, cancelled=cancelled)

    def _subscribe(
        self, spec: dict[str, Any], *, after: int | None, cancelled: bool = False
    ) -> None:
        kwargs = dict(spec)
        replay = kwargs.pop("replay")
        self.names += 1
        name = f"s{self.names}"
        sub = self.call(
            lambda: self.open_bus.subscribe(
                **kwargs, replay=replay, after=after, name=name
            )
        )
        filters = {
            k: v
            for k, v in kwargs.items()
            if k in ("run_id", "lane_id", "kinds", "visibility")
        }
        model = ModelSubscription(
            kwargs=filters,
            name=name,
            bound=kwargs["buffer_size"],
            policy=kwargs["overflow"],
            gap_events=kwargs["gap_events"],
            replay=replay,
            after=after,
        )
        if cancelled:
            self._enter_cancelled(sub, model)
            return
        expected = self.model.register(model)
        got = self.call(outcome, sub.__aenter__)
        if expected is None:
            assert got is sub
        else:
            assert isinstance(got, expected), got
        self.subs.append((sub, model))

    def _enter_cancelled(
        self, sub: Subscription[Event], model: ModelSubscription
    ) -> None:
        if self.model.closed:
            return
        where = self.call(enter_cancelled, sub)
        if where == "body":
            # Entered, then left at the body's first checkpoint: it was registered
            # (and counted what history no longer holds) and is closed now.
            self.model.register(model)
            self.model.close_subscription(model)
        self.subs.append((sub, model))
        model.closed = True

    def runs(self) -> st.SearchStrategy[str]:
        """Mostly the runs that have not ended (events for ended ones are
        refused, which is worth testing, but not all the time)."""
        going = [r for r in MACHINE_RUNS if r not in self.model.finished]
        if not going:
            return MACHINE_RUN_IDS
        return st.sampled_from(going) | st.sampled_from(going) | MACHINE_RUN_IDS

    @rule(data=st.data())
    def emit(self, data: st.DataObject) -> None:
        self.step()
        events = data.draw(
            st.lists(machine_events(self.runs()), min_size=1, max_size=4),
            label="events",
        )
        for event in events:
            expected = self.model.emit(event)
            got = self.call(outcome_sync, partial(self.open_bus.emit, event))
            if isinstance(expected, Event):
                assert got is None
            else:
                same_outcome(expected, got)

    @rule(
        data=st.data(),
        cls=st.sampled_from([RunFinished, RunError, RunCancelled]),
        visibility=VISIBILITIES,
    )
    def finish_run(
        self, data: st.DataObject, cls: type[Event], visibility: Visibility
    ) -> None:
        """End a run (a run-scoped subscription ends; buffers fill with terminal
        events; with ``max_runs=2`` the oldest ended run is forgotten)."""
        self.step()
        run_id = data.draw(self.runs(), label="run_id")
        event: Event = (
            RunError(run_id=run_id, visibility=visibility, error="e")
            if cls is RunError
            else cls(run_id=run_id, visibility=visibility)
        )
        expected = self.model.emit(event)
        got = self.call(outcome_sync, partial(self.open_bus.emit, event))
        if isinstance(expected, Event):
            assert got is None
        else:
            same_outcome(expected, got)

    @rule(
        data=st.data(),
        count=st.integers(10, READ_AHEAD + 10),
        lane_id=BUS_LANE_IDS,
        visibility=VISIBILITIES,
    )
    def emit_many(
        self, data: st.DataObject, count: int, lane_id: str, visibility: Visibility
    ) -> None:
        """A burst: evicts history under replaying subscribers, crosses the
        read-ahead batch, overflows buffers."""
        self.step()
        run_id = data.draw(self.runs(), label="run_id")
        self._burst(count, run_id, lane_id, visibility)

    def _burst(
        self, count: int, run_id: str, lane_id: str, visibility: Visibility
    ) -> None:
        events = [
            MessageDelta(
                run_id=run_id, lane_id=lane_id, visibility=visibility, text=str(n)
            )
            for n in range(count)
        ]
        expected = [self.model.emit(e) for e in events]

        def emit_all() -> list[object]:
            emit = self.open_bus.emit
            return [outcome_sync(partial(emit, e)) for e in events]

        got = self.call(emit_all)
        for want, have in zip(expected, got, strict=True):
            if isinstance(want, Event):
                assert have is None
            else:
                same_outcome(want, have)

    @precondition(lambda self: sum(not m.closed for _, m in self.subs) < MAX_OPEN)
    @rule(
        data=st.data(),
        spec=machine_subscribe_kwargs(),
        count=st.integers(READ_AHEAD // 2, 2 * READ_AHEAD + 10),
        visibility=VISIBILITIES,
        reads=st.integers(0, 3),
    )
    def late_joiner(
        self,
        data: st.DataObject,
        spec: dict[str, Any],
        count: int,
        visibility: Visibility,
        reads: int,
    ) -> None:
        """A burst, then a subscriber that replays it (or resumes inside it) and
        reads a little: it is left mid-replay, with events read ahead, for the
        next rules to evict under it, read on, or leave."""
        self.step()
        run_id = data.draw(self.runs(), label="run_id")
        self._burst(count, run_id, "main", visibility)
        start = self.model.offset - count
        after = data.draw(st.none() | st.integers(max(0, start - 5), start + count))
        self._subscribe({**spec, "replay": True}, after=after)
        sub, model = self.subs[-1]
        self._receive_from(sub, model, reads, wait=False)

    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        self.step()
        event = data.draw(machine_events(self.runs()), label="event")
        if self.model.classify(event) == "block":
            assert self.call(publish_cancelled_while_waiting, self.open_bus, event)
            return
        expected = self.model.emit(event)
        got = self.call(outcome, lambda: self.open_bus.publish(event))
        same_outcome(expected, got)

    @precondition(
        lambda self: (
            not any(
                m.policy is Overflow.BLOCK and m.live for m in self.model.subscriptions
            )
        )
    )
    @rule(data=st.data())
    def emit_from_thread(self, data: st.DataObject) -> None:
        """``emit`` from the machine's thread (the thread hand-off), then a
        ``publish_from_thread``, which returns once everything before it was
        delivered."""
        self.step()
        events = data.draw(
            st.lists(machine_events(self.runs()), min_size=1, max_size=4),
            label="events",
        )
        bus = self.open_bus
        for event in events:
            expected = self.model.emit(event, thread=True)
            got = outcome_sync(partial(bus.emit, event))
            if isinstance(expected, Event):
                assert got is None
            else:
                same_outcome(expected, got)
        flush = Log(run_id="flush", message="flush", visibility=Visibility.PRIVATE)
        expected_flush = self.model.emit(flush, thread=True)
        same_outcome(
            expected_flush, outcome_sync(lambda: bus.publish_from_thread(flush))
        )

    @rule(data=st.data(), count=st.integers(1, 8), wait=st.booleans())
    def receive(self, data: st.DataObject, count: int, wait: bool) -> None:
        """Receive a few events, waiting (``receive()``) or not."""
        self.step()
        self._receive(data, count, wait)

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        """Receive without waiting until nothing is ready."""
        self.step()
        self._receive(data, 10**6, wait=False)

    @rule(data=st.data(), max_items=st.integers(1, 8) | st.just(EVENTS_PER_YIELD))
    def receive_batch(self, data: st.DataObject, max_items: int) -> None:
        """Receive a batch (``receive_batch()``): what the model's repeated
        ``receive_nowait()`` gives, up to *max_items*."""
        self.step()
        picked = self._pick(data)
        if picked is None:
            return
        sub, model = picked
        expected: list[Expected] = [model.take(self.model)]
        first = expected[0]
        may_hand_out = model.before_batch()
        if first is anyio.WouldBlock:
            model.waited()
            assert self.call(cancelled_while_waiting, sub.receive_batch)
            return
        if isinstance(first, type):  # EndOfStream, ClosedResourceError
            check_received(first, self.call(outcome, sub.receive_batch))
            return
        # The bounded-yield rule may cut a batch short: at most EVENTS_PER_YIELD
        # events between two yields to the scheduler.
        limit = min(max_items, may_hand_out)
        while len(expected) < limit:
            following = model.take(self.model)
            if isinstance(following, type):
                break  # nothing more ready: the batch ends here
            expected.append(following)
        got = self.call(outcome, lambda: sub.receive_batch(max_items))
        assert isinstance(got, list), got
        assert len(got) == len(expected), (expected, got)
        model.streak += len(got)
        for want, event in zip(expected, got, strict=True):
            check_received(want, event)
            self._check_visible(model, event)

    def _pick(
        self, data: st.DataObject
    ) -> tuple[Subscription[Event], ModelSubscription] | None:
        if not self.subs:
            return None
        open_subs = [(s, m) for s, m in self.subs if not m.closed]
        choices = st.sampled_from(self.subs)
        if open_subs:
            choices = st.sampled_from(open_subs) | st.sampled_from(open_subs) | choices
        return data.draw(choices, label="subscription")

    def _receive(self, data: st.DataObject, count: int, wait: bool) -> None:
        if not self.subs:
            return
        open_subs = [(s, m) for s, m in self.subs if not m.closed]
        choices = st.sampled_from(self.subs)
        if open_subs:
            choices = st.sampled_from(open_subs) | st.sampled_from(open_subs) | choices
        sub, model = data.draw(choices, label="subscription")
        self._receive_from(sub, model, count, wait)

    def _receive_from(
        self,
        sub: Subscription[Event],
        model: ModelSubscription,
        count: int,
        wait: bool,
    ) -> None:
        for _ in range(count):
            expected: Expected = model.take(self.model)
            if wait:
                model.before_receive()
            if wait and expected is anyio.WouldBlock:
                model.waited()
                assert self.call(cancelled_while_waiting, sub.receive)
                return
            if wait:
                got = self.call(outcome, sub.receive)
            else:
                got = self.call(receive_nowait, sub)
            check_received(expected, got)
            if isinstance(got, BaseException):
                return
            self._check_visible(model, got)

    def _check_visible(self, model: ModelSubscription, event: Event) -> None:
        assert event.visibility <= model.visibility
        assert SECRET not in repr(event)

    @precondition(lambda self: any(not m.closed for _, m in self.subs))
    @rule(data=st.data(), how=st.sampled_from(["close", "exit", "exit-error"]))
    def leave(self, data: st.DataObject, how: str) -> None:
        self.step()
        open_subs = [(s, m) for s, m in self.subs if not m.closed]
        choices = st.sampled_from(open_subs)
        # Mid-replay, with events read ahead, is the interesting time to leave.
        reading = [(s, m) for s, m in open_subs if m.read_ahead]
        if reading:
            choices = st.sampled_from(reading) | choices
        sub, model = data.draw(choices, label="subscription")
        self.model.close_subscription(model)
        if how == "close":
            self.call(sub.close)
        else:
            error = ValueError("the body failed") if how == "exit-error" else None
            self.call(sub.__aexit__, type(error) if error else None, error, None)

    @rule(
        filters=st.fixed_dictionaries(
            {},
            optional={
                "run_id": MACHINE_RUN_IDS,
                "lane_id": BUS_LANE_IDS,
                "visibility": VISIBILITIES,
                "kinds": st.sampled_from(["message.delta", "run.finished", "log"]),
            },
        ),
        since_seq=st.integers(0, 3),
        after=st.integers(0, 20),
    )
    def replay(self, filters: dict[str, Any], since_seq: int, after: int) -> None:
        self.step()
        got = self.call(
            lambda: self.open_bus.replay(**filters, since_seq=since_seq, after=after)
        )
        assert got == self.model.replay(filters, since_seq=since_seq, after=after)

    @precondition(lambda self: not self.model.closed and self.model.offset >= 40)
    @rule(now=st.integers(0, 9))
    def close_bus(self, now: int) -> None:
        """Close the bus (now and then: after it, most rules have little to do)."""
        self.step()
        if now:
            return
        self.model.close()
        self.call(self.open_bus.aclose)

    # -- after every step -------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.bus is None:
            return
        bus = self.bus

        def snapshot() -> tuple[Any, ...]:
            return (
                bus.statistics(),
                [s.statistics() for s, _ in self.subs],
                bus.replay(visibility=Visibility.PRIVATE),
            )

        bus_stats, sub_stats, history = self.call(snapshot)
        check_statistics(
            self.model,
            bus_stats,
            [(m, s) for (_, m), s in zip(self.subs, sub_stats, strict=True)],
        )
        assert history == list(self.model.history)
        assert SECRET not in repr(bus_stats)
        self.failed = False

    def teardown(self) -> None:
        try:
            if not self.failed and self.bus is not None:
                self._close_and_drain()
        finally:
            try:
                for sub, _ in self.subs:
                    self.call(sub.close)  # (idempotent) no leak, whatever happened
                if self._bus_cm is not None:
                    self._bus_cm.__exit__(None, None, None)
            finally:
                self._portal_cm.__exit__(None, None, None)

    def _close_and_drain(self) -> None:
        """Close the bus: every subscription hands out what the model says is
        left, then ends; nothing waits."""
        bus = self.open_bus
        if not self.model.closed:
            self.model.close()
            self.call(bus.aclose)
        for sub, model in self.subs:
            while True:
                expected = model.take(self.model)
                got = self.call(receive_nowait, sub)
                check_received(expected, got)
                if isinstance(got, BaseException):
                    assert isinstance(
                        got, anyio.EndOfStream | anyio.ClosedResourceError
                    ), got
                    break
                self._check_visible(model, got)
            if not model.closed:
                self.model.close_subscription(model)
                self.call(sub.close)
        self.agrees_with_the_model()
        stats = self.call(bus.statistics)
        assert stats.subscriptions == ()
        assert isinstance(
            self.call(outcome_sync, lambda: bus.emit(Log(run_id="x", message="m"))),
            BusClosed,
        )


def test_read_ahead_agrees_with_the_model() -> None:
    assert replay_module.READ_AHEAD == READ_AHEAD


class AsyncioBusMachine(BusMachine):
    backend = "asyncio"


class UvloopBusMachine(BusMachine):
    backend = "asyncio"
    backend_options = {"use_uvloop": True}  # noqa: RUF012


class TrioBusMachine(BusMachine):
    backend = "trio"


MACHINES: dict[object, type[BusMachine]] = {
    "asyncio": AsyncioBusMachine,
    ("asyncio", (("use_uvloop", True),)): UvloopBusMachine,
    "trio": TrioBusMachine,
}


#: The machine's example budget (the rest comes from the active profile): at 60,
#: two of the model's rules could be broken unnoticed; at 150 none could be
#: (checked by mutating tests/model.py).
MACHINE_SETTINGS = settings(max_examples=150)


def test_bus_against_the_model(anyio_backend: object) -> None:
    """Runs the state machine on *anyio_backend* (a sync test: each machine
    runs its own event loop of that backend in a portal thread)."""
    if isinstance(anyio_backend, tuple):
        name, options = anyio_backend
        anyio_backend = (name, tuple(sorted(options.items())))
    run_state_machine_as_test(MACHINES[anyio_backend], settings=MACHINE_SETTINGS)
