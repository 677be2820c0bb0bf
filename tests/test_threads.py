"""Emitting into the bus from other threads: :meth:`EventBus.emit` off the loop,
:meth:`EventBus.publish_from_thread`, and what closing does to both.

Threads are plain daemon threads joined through :func:`anyio.to_thread.run_sync`
(so a bug that blocks a thread fails the test at its ``fail_after`` deadline
instead of hanging the run). Nothing here sleeps to synchronise: a thread tells
the loop what it has done through a :class:`threading.Event`, and the loop waits
for it in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar, cast

import anyio
import attrs
import pytest
import trio
from anyio.lowlevel import checkpoint
from helpers import all_tasks_blocked

from purpose_bus import (
    BusClosed,
    Event,
    EventBus,
    EventRejected,
    Log,
    Overflow,
    RunFinished,
    RunStarted,
    Subscription,
)

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Tick(Event):
    """A numbered event: ``n`` counts 0, 1, 2 ... per producing thread."""

    kind = "tests.threads.tick"

    thread: int
    n: int


class Worker(threading.Thread, Generic[T]):
    """A daemon thread that keeps what its target returned or raised."""

    def __init__(self, target: Callable[[], T]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.result: T | None = None
        self.error: BaseException | None = None
        self.ident_seen: int | None = None

    def run(self) -> None:
        self.ident_seen = threading.get_ident()
        try:
            self.result = self._target_fn()
        except BaseException as exc:
            self.error = exc

    @classmethod
    def started(cls, target: Callable[[], T]) -> Worker[T]:
        worker = cls(target)
        worker.start()
        return worker

    async def join_async(self) -> None:
        """Wait for the thread without blocking the loop; abandoned (not awaited)
        if the caller's ``fail_after`` expires."""
        await anyio.to_thread.run_sync(self.join, abandon_on_cancel=True)

    async def outcome(self) -> T:
        """Join the thread; return what its target returned, raise what it
        raised."""
        await self.join_async()
        if self.error is not None:
            raise self.error
        return cast(T, self.result)


async def wait_in_thread(flag: threading.Event) -> None:
    """Wait for a flag set by another thread, without blocking the loop."""
    await anyio.to_thread.run_sync(flag.wait, abandon_on_cancel=True)


def in_thread(target: Callable[[], T]) -> Worker[T]:
    return Worker.started(target)


def ticks(thread: int, count: int, *, run_id: str, lane_id: str) -> list[Tick]:
    return [
        Tick(run_id=run_id, lane_id=lane_id, thread=thread, n=n) for n in range(count)
    ]


def emit_all(bus: EventBus, events: Iterable[Event]) -> int:
    emit = bus.emit
    count = 0
    for event in events:
        emit(event)
        count += 1
    return count


class Tally:
    """Events accepted by several threads; ``reached`` is set at ``target``."""

    def __init__(self, target: int) -> None:
        self._lock = threading.Lock()
        self._target = target
        self.total = 0
        self.reached = threading.Event()

    def add(self) -> None:
        with self._lock:
            self.total += 1
            if self.total == self._target:
                self.reached.set()


def emit_until_closed(bus: EventBus, thread: int, limit: int, tally: Tally) -> int:
    """Emit numbered ticks until the bus refuses with BusClosed (re-raised with
    the number accepted in a note ``accepted=N``); return *limit* if it never
    refused."""
    n = 0
    try:
        for n in range(limit):
            bus.emit(Tick(run_id="r", lane_id=f"t{thread}", thread=thread, n=n))
            tally.add()
    except BusClosed as exc:
        exc.add_note(f"accepted={n}")
        raise
    return limit


def accepted_before_close(error: BaseException | None) -> int:
    assert isinstance(error, BusClosed), error
    (note,) = [n for n in error.__notes__ if n.startswith("accepted=")]
    return int(note.removeprefix("accepted="))


async def collect(sub: Subscription[Event], into: list[Event], count: int) -> int:
    """Receive *count* events into *into*; return the most that were buffered."""
    most_buffered = 0
    while len(into) < count:
        into.append(await sub.receive())
        most_buffered = max(most_buffered, sub.statistics().buffered + 1)
    return most_buffered


def by_thread(events: Iterable[Event]) -> dict[int, list[Tick]]:
    out: dict[int, list[Tick]] = defaultdict(list)
    for event in events:
        assert isinstance(event, Tick)
        out[event.thread].append(event)
    return out


def assert_in_offset_order(events: list[Event]) -> None:
    offsets = [e.offset for e in events]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)


class TestEmitFromThreads:
    """``EventBus.emit`` called from threads other than the loop's."""

    @pytest.mark.parametrize("scope", ["lane", "run"])
    async def test_four_threads_each_event_once_in_order(self, scope: str) -> None:
        threads, count = 4, 10_000
        total = threads * count
        received: list[Event] = []
        with anyio.fail_after(15):
            async with (
                EventBus(history_size=0) as bus,
                bus.subscribe(buffer_size=total) as sub,
            ):
                batches = [
                    ticks(
                        t,
                        count,
                        run_id=f"r{t}" if scope == "run" else "r",
                        lane_id=f"t{t}" if scope == "lane" else "main",
                    )
                    for t in range(threads)
                ]
                workers = [in_thread(partial(emit_all, bus, b)) for b in batches]
                await collect(sub, received, total)
                for worker in workers:
                    assert await worker.outcome() == count
                await bus.aclose()
                assert [e async for e in sub] == []  # nothing more: exactly once

        assert sorted(e.offset for e in received) == list(range(1, total + 1))
        assert_in_offset_order(received)
        got = by_thread(received)
        assert sorted(got) == list(range(threads))
        for events in got.values():
            assert [e.n for e in events] == list(range(count))
            assert [e.seq for e in events] == list(range(1, count + 1))
            assert len({(e.run_id, e.lane_id) for e in events}) == 1
        statistics = bus.statistics()
        assert (statistics.emitted, statistics.rejected) == (total, 0)
        assert statistics.dropped == 0

    async def test_block_subscriber_backpressures_threads(self) -> None:
        threads, count, bound = 4, 3_000, 16
        total = threads * count
        received: list[Event] = []
        with anyio.fail_after(15):
            async with (
                EventBus(history_size=0, thread_buffer_size=32) as bus,
                bus.subscribe(buffer_size=bound, overflow=Overflow.BLOCK) as sub,
            ):
                workers = [
                    in_thread(
                        partial(
                            emit_all, bus, ticks(t, count, run_id="r", lane_id=f"t{t}")
                        )
                    )
                    for t in range(threads)
                ]
                most_buffered = await collect(sub, received, total)
                for worker in workers:
                    assert await worker.outcome() == count

        assert_in_offset_order(received)
        got = by_thread(received)
        assert sorted(got) == list(range(threads))
        for events in got.values():
            assert [e.n for e in events] == list(range(count))
            assert [e.seq for e in events] == list(range(1, count + 1))
        assert most_buffered <= bound  # the bound held: the threads waited
        assert bus.statistics().dropped == 0

    async def test_guards_run_in_the_emitting_thread(self) -> None:
        seen: list[int] = []

        def guard(event: Event) -> str | None:
            seen.append(threading.get_ident())
            return "no" if event.payload.get("bad") else None

        with anyio.fail_after(5):
            async with EventBus(guards=[guard], strict=True) as bus:
                worker = in_thread(
                    partial(bus.emit, Log(run_id="r", message="", payload={"bad": 1}))
                )
                with pytest.raises(EventRejected, match="no"):
                    await worker.outcome()
                assert seen == [worker.ident_seen]
                assert bus.statistics().rejected == 1  # counted in the thread
                assert bus.statistics().emitted == 0

    async def test_non_strict_guard_rejection_is_counted_in_the_thread(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with anyio.fail_after(5):
            async with EventBus() as bus, bus.subscribe() as sub:
                hidden = Log(run_id="r", message="", payload={"chain_of_thought": "x"})
                with caplog.at_level(logging.WARNING, logger="purpose_bus"):
                    await in_thread(partial(bus.emit, hidden)).outcome()
                # Counted before emit returned in the thread: no loop round trip.
                assert bus.statistics().rejected == 1
                assert "chain_of_thought" in caplog.text
                await in_thread(
                    partial(bus.emit, Log(run_id="r", message="ok"))
                ).outcome()
                assert isinstance(event := await sub.receive(), Log)
                assert event.message == "ok"
                assert bus.statistics().emitted == 1

    async def test_type_error_raised_in_the_thread(self) -> None:
        with anyio.fail_after(5):
            async with EventBus() as bus:
                worker = in_thread(partial(bus.emit, "not an event"))  # type: ignore[arg-type]
                with pytest.raises(TypeError, match="expected an Event"):
                    await worker.outcome()

    async def test_bus_closed_raised_in_the_thread(self) -> None:
        with anyio.fail_after(5):
            bus = EventBus()
            worker = in_thread(partial(bus.emit, Log(run_id="r", message="")))
            with pytest.raises(BusClosed, match="not open"):
                await worker.outcome()
            async with bus:
                pass
            worker = in_thread(partial(bus.emit, Log(run_id="r", message="")))
            with pytest.raises(BusClosed, match="closed"):
                await worker.outcome()

    async def test_late_event_from_thread_is_counted_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with anyio.fail_after(5):
            async with EventBus(strict=True) as bus, bus.subscribe() as sub:
                bus.emit(RunStarted(run_id="done"))
                bus.emit(RunFinished(run_id="done"))

                def late_then_marker() -> None:
                    bus.emit(Log(run_id="done", message="late"))  # must not raise
                    bus.emit(Log(run_id="other", message="marker"))

                with caplog.at_level(logging.WARNING, logger="purpose_bus"):
                    await in_thread(late_then_marker).outcome()
                    got = [await sub.receive() for _ in range(3)]
                # Per-thread order: the marker arrives after the late event was
                # handled on the loop.
                assert [type(e) for e in got] == [RunStarted, RunFinished, Log]
                assert isinstance(got[2], Log)
                assert got[2].message == "marker"
                assert bus.statistics().rejected == 1
                assert bus.statistics().emitted == 3
                assert "already ended" in caplog.text
                with pytest.raises(anyio.WouldBlock):
                    sub.receive_nowait()


class TestEmitOnTheLoopThread:
    """``emit`` from synchronous code running on the loop thread: delivered at
    once, never handed off to itself (which would deadlock)."""

    @staticmethod
    def call_soon(anyio_backend_name: str, callback: Callable[[], None]) -> None:
        if anyio_backend_name == "trio":
            trio.lowlevel.current_trio_token().run_sync_soon(callback)
        else:
            asyncio.get_running_loop().call_soon(callback)

    async def test_emit_in_a_loop_callback_delivers_synchronously(
        self, anyio_backend_name: str
    ) -> None:
        seen: dict[str, Any] = {}
        with anyio.fail_after(5):
            async with (
                EventBus() as bus,
                bus.subscribe(run_id="r") as sub,
                bus.subscribe(run_id="b", overflow=Overflow.BLOCK, buffer_size=1),
            ):
                bus.emit(Log(run_id="b", message="fills the BLOCK subscriber"))

                def callback() -> None:
                    bus.emit(Log(run_id="r", message="from a callback"))
                    seen["buffered"] = sub.statistics().buffered
                    try:
                        bus.emit(Log(run_id="b", message="no room"))
                    except anyio.WouldBlock:
                        seen["would_block"] = True

                self.call_soon(anyio_backend_name, callback)
                event = await sub.receive()
        assert isinstance(event, Log)
        assert event.message == "from a callback"
        assert event.offset == 2
        assert seen == {"buffered": 1, "would_block": True}

    async def test_emit_in_a_sync_function_called_from_a_task(self) -> None:
        with anyio.fail_after(5):
            async with EventBus() as bus, bus.subscribe() as sub:

                def helper() -> int:
                    bus.emit(Log(run_id="r", message="x"))
                    return sub.statistics().buffered

                assert helper() == 1
                assert sub.receive_nowait().offset == 1

    async def test_publish_from_thread_on_the_loop_raises(
        self, anyio_backend_name: str
    ) -> None:
        with anyio.fail_after(5):
            async with EventBus() as bus, bus.subscribe() as sub:
                with pytest.raises(RuntimeError, match="loop"):
                    bus.publish_from_thread(Log(run_id="r", message=""))
                errors: list[BaseException] = []

                def callback() -> None:
                    try:
                        bus.publish_from_thread(Log(run_id="r", message=""))
                    except RuntimeError as exc:
                        errors.append(exc)
                    bus.emit(Log(run_id="r", message="done"))

                self.call_soon(anyio_backend_name, callback)
                assert (await sub.receive()).offset == 1
                assert len(errors) == 1
                assert bus.statistics().emitted == 1


class TestPublishFromThread:
    """``EventBus.publish_from_thread``: publish on the loop, wait, return."""

    async def test_returns_the_stamped_event(self) -> None:
        with anyio.fail_after(5):
            async with EventBus() as bus, bus.subscribe() as sub:
                bus.emit(Log(run_id="r", message="first"))
                original = Log(run_id="r", message="second")
                stamped = await in_thread(
                    partial(bus.publish_from_thread, original)
                ).outcome()
                assert stamped is not None
                assert stamped is not original
                assert (stamped.seq, stamped.offset) == (2, 2)
                assert (original.seq, original.offset) == (0, 0)  # not mutated
                assert attrs.evolve(stamped, seq=0, offset=0) == original
                assert [sub.receive_nowait(), sub.receive_nowait()][1] == stamped

    async def test_returns_none_when_a_non_strict_bus_rejects(self) -> None:
        with anyio.fail_after(5):
            async with EventBus() as bus, bus.subscribe() as sub:
                hidden = Log(run_id="r", message="", payload={"thinking": "..."})
                assert (
                    await in_thread(partial(bus.publish_from_thread, hidden)).outcome()
                    is None
                )
                bus.emit(RunFinished(run_id="r"))
                late = Log(run_id="r", message="late")
                assert (
                    await in_thread(partial(bus.publish_from_thread, late)).outcome()
                    is None
                )
                assert bus.statistics().rejected == 2
                assert bus.statistics().emitted == 1
                assert isinstance(sub.receive_nowait(), RunFinished)
                with pytest.raises(anyio.WouldBlock):
                    sub.receive_nowait()

    async def test_raises_event_rejected_on_a_strict_bus(self) -> None:
        with anyio.fail_after(5):
            async with EventBus(strict=True) as bus:
                hidden = Log(run_id="r", message="", payload={"thinking": "..."})
                with pytest.raises(EventRejected, match="thinking"):
                    await in_thread(partial(bus.publish_from_thread, hidden)).outcome()
                # The run-lifecycle check runs on the loop; publish_from_thread
                # raises what publish raises, so a late event raises too.
                bus.emit(RunFinished(run_id="r"))
                late = Log(run_id="r", message="late")
                with pytest.raises(EventRejected, match="already ended"):
                    await in_thread(partial(bus.publish_from_thread, late)).outcome()
                assert bus.statistics().rejected == 2

    async def test_waits_for_room_under_block(self) -> None:
        calling = threading.Event()
        with anyio.fail_after(5):
            async with (
                EventBus() as bus,
                bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
            ):
                bus.emit(Log(run_id="r", message="fills the buffer"))

                def publish() -> Event | None:
                    calling.set()
                    return bus.publish_from_thread(Log(run_id="r", message="waits"))

                worker = in_thread(publish)
                await wait_in_thread(calling)
                await all_tasks_blocked()
                assert worker.is_alive()  # no room yet: it cannot have returned
                assert sub.statistics().buffered == 1
                first = await sub.receive()  # makes room
                stamped = await worker.outcome()
                assert stamped is not None
                assert (first.offset, stamped.offset) == (1, 2)
                assert await sub.receive() == stamped
                assert bus.statistics().dropped == 0


class TestClosingWithThreads:
    """``aclose`` while threads emit: accepted events are delivered, the rest
    raise :exc:`BusClosed`, nothing hangs."""

    async def test_every_accepted_event_is_delivered(self) -> None:
        threads, first, bound, hand_off = 4, 2_000, 64, 100
        # Once this many are accepted with only `first` read, some must still be
        # in the hand-off (the subscriber holds `bound`, the drain's batch at most
        # `hand_off`); the threads can get this far before they all block.
        tally = Tally(first + bound + hand_off + 1)
        received: list[Event] = []
        with anyio.fail_after(15):
            async with (
                EventBus(history_size=0, thread_buffer_size=hand_off) as bus,
                bus.subscribe(buffer_size=bound, overflow=Overflow.BLOCK) as sub,
            ):
                workers = [
                    in_thread(partial(emit_until_closed, bus, t, 10**9, tally))
                    for t in range(threads)
                ]
                await collect(sub, received, first)
                await wait_in_thread(tally.reached)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(bus.aclose)  # while the threads keep emitting
                    received.extend([e async for e in sub])
                for worker in workers:
                    await worker.join_async()

        accepted = [accepted_before_close(w.error) for w in workers]
        got = by_thread(received)
        assert_in_offset_order(received)
        for t in range(threads):
            assert [e.n for e in got[t]] == list(range(accepted[t]))
        assert len(received) == sum(accepted) == bus.statistics().emitted
        assert sub.statistics().dropped == 0

    async def test_thread_blocked_on_a_full_hand_off_gets_bus_closed(self) -> None:
        bound, limit = 16, 1_000
        # The subscriber's buffer and the hand-off (bound 1) can hold this many.
        tally = Tally(bound + 1)
        with anyio.fail_after(5):
            async with (
                EventBus(thread_buffer_size=1) as bus,
                bus.subscribe(buffer_size=bound, overflow=Overflow.BLOCK) as sub,
            ):
                worker = in_thread(partial(emit_until_closed, bus, 0, limit, tally))
                await wait_in_thread(tally.reached)
                await all_tasks_blocked()
                assert worker.is_alive()  # it cannot get far: nobody reads
                await bus.aclose()
                await worker.join_async()
                received = [e async for e in sub]

        # The thread was released with BusClosed, and everything it got in before
        # the close was delivered, the full BLOCK subscriber taking the last ones
        # beyond its bound.
        accepted = accepted_before_close(worker.error)
        assert bound + 1 <= accepted < limit
        assert [e.n for e in received if isinstance(e, Tick)] == list(range(accepted))
        assert bus.statistics().emitted == accepted

    async def test_publish_from_thread_waiting_for_room_completes_on_close(
        self,
    ) -> None:
        calling = threading.Event()
        with anyio.fail_after(5):
            async with (
                EventBus() as bus,
                bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
            ):
                bus.emit(Log(run_id="r", message="fills the buffer"))

                def publish() -> Event | None:
                    calling.set()
                    return bus.publish_from_thread(Log(run_id="r", message="handed"))

                worker = in_thread(publish)
                await wait_in_thread(calling)
                await all_tasks_blocked()
                await bus.aclose()
                # Handed off before the close: accepted and delivered, beyond the
                # bound -- unless the close came first, then it was refused.
                try:
                    stamped = await worker.outcome()
                except BusClosed:
                    stamped = None
                received = [e async for e in sub]
        assert received[0].offset == 1
        if stamped is not None:
            assert received[1:] == [stamped]
        else:
            assert len(received) == 1

    async def test_events_handed_off_survive_a_cancelled_bus_task_group(
        self,
    ) -> None:
        """An outer cancel scope cancels the bus's drain task while it waits for
        a full ``BLOCK`` subscriber; what a thread had handed off is still
        accepted (by the close), and a thread waiting in ``publish_from_thread``
        gets an answer instead of hanging."""
        calling = threading.Event()

        def emit_then_publish(bus: EventBus) -> Event | None:
            bus.emit(Log(run_id="r", message="handed off"))
            calling.set()
            return bus.publish_from_thread(Log(run_id="r", message="published"))

        with anyio.fail_after(5):
            with anyio.CancelScope() as outer:
                async with (
                    EventBus() as bus,
                    bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1),
                ):
                    bus.emit(Log(run_id="r", message="fills the BLOCK subscriber"))
                    worker = in_thread(partial(emit_then_publish, bus))
                    await wait_in_thread(calling)
                    await all_tasks_blocked()
                    outer.cancel()
                    await checkpoint()
                    pytest.fail("not cancelled")
            try:
                stamped = await worker.outcome()
            except BusClosed:  # the close came before its hand-off
                stamped = None
        history = bus.replay(run_id="r")
        assert [e.message for e in history if isinstance(e, Log)][:2] == [
            "fills the BLOCK subscriber",
            "handed off",  # emit() returned in the thread: it must be accepted
        ]
        if stamped is not None:
            assert history[2:] == [stamped]
        else:
            assert len(history) == 2
