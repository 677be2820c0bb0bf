"""Tests of :class:`purpose_bus.EventBus`: construction, emitting and publishing,
stamping, the run lifecycle, closing and statistics."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import attrs
import pytest
from anyio.lowlevel import checkpoint
from helpers import all_tasks_blocked, delta, drain, texts

from purpose_bus import (
    EVENTS_PER_YIELD,
    BusClosed,
    BusStatistics,
    Event,
    EventBus,
    EventRejected,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    PurposeBusError,
    RunCancelled,
    RunError,
    RunFinished,
    RunStarted,
    SubscriptionStatistics,
    Visibility,
)


@attrs.frozen(kw_only=True)
class Citation(Event):
    """A user-defined event, as in the README."""

    kind = "test_bus.citation"

    url: str
    title: str = ""
    tags: tuple[str, ...] = ()


TERMINALS: list[Event] = [
    RunFinished(run_id="r1"),
    RunError(run_id="r1", error="boom"),
    RunCancelled(run_id="r1"),
]


class TestEventBus:
    # -- construction ---------------------------------------------------------

    def test_defaults(self) -> None:
        bus = EventBus()
        assert not bus.closed

    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"buffer_size": 0}, id="buffer_size=0"),
            pytest.param({"buffer_size": -1}, id="buffer_size=-1"),
            pytest.param({"history_size": -1}, id="history_size=-1"),
            pytest.param({"thread_buffer_size": 0}, id="thread_buffer_size=0"),
            pytest.param({"thread_buffer_size": -5}, id="thread_buffer_size=-5"),
            pytest.param({"overflow": "sideways"}, id="overflow=unknown"),
            pytest.param({"overflow": 3}, id="overflow=int"),
        ],
    )
    def test_invalid_arguments_raise_value_error(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):  # noqa: PT011  (any message)
            EventBus(**kwargs)

    def test_smallest_valid_sizes(self) -> None:
        EventBus(buffer_size=1, history_size=0, thread_buffer_size=1)

    @pytest.mark.parametrize("overflow", list(Overflow))
    def test_every_overflow_policy_is_accepted(self, overflow: Overflow) -> None:
        EventBus(overflow=overflow)

    async def test_subscribe_rejects_a_zero_buffer(self) -> None:
        async with EventBus() as bus:
            with pytest.raises(ValueError, match="buffer_size"):
                bus.subscribe(buffer_size=0)
            with pytest.raises(ValueError, match="overflow"):
                bus.subscribe(overflow="sideways")  # type: ignore[call-overload]
            assert bus.statistics().subscriptions == ()

    async def test_opening_twice_raises_runtime_error(self) -> None:
        bus = EventBus()
        async with bus:
            with pytest.raises(RuntimeError):
                await bus.__aenter__()
        with pytest.raises(RuntimeError):
            async with bus:
                pass  # pragma: no cover

    # -- emit and publish -----------------------------------------------------

    async def test_emit_delivers_before_it_returns(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("a"))
            event = sub.receive_nowait()
        assert isinstance(event, MessageDelta)
        assert (event.text, event.offset) == ("a", 1)

    async def test_publish_returns_the_stamped_event(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            original = delta("a")
            published = await bus.publish(original)
            assert published is not None
            assert published is not original
            assert (published.seq, published.offset) == (1, 1)
            assert sub.receive_nowait() == published
            assert bus.replay() == [published]

    async def test_publish_returns_the_type_it_was_given(self) -> None:
        """Typed: ``publish(MessageDelta(...))`` gives ``MessageDelta | None``
        (mypy --strict checks these annotations)."""
        async with EventBus() as bus:
            published: MessageDelta | None = await bus.publish(delta("a"))
            assert isinstance(published, MessageDelta)
            assert published.text == "a"
            from_thread: MessageDelta | None = await anyio.to_thread.run_sync(
                bus.publish_from_thread, delta("b")
            )
            assert isinstance(from_thread, MessageDelta)
            assert from_thread.offset == 2

    @pytest.mark.parametrize(
        "value", [None, "event", {"run_id": "r1"}, 42, MessageDelta]
    )
    async def test_non_event_raises_type_error(self, value: object) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            with pytest.raises(TypeError):
                bus.emit(value)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await bus.publish(value)  # type: ignore[type-var]
            assert bus.statistics().emitted == 0
            assert drain(sub) == []

    async def test_emit_before_entering_raises_bus_closed(self) -> None:
        bus = EventBus()
        with pytest.raises(BusClosed) as info:
            bus.emit(delta())
        assert isinstance(info.value, anyio.ClosedResourceError)
        assert isinstance(info.value, PurposeBusError)
        with pytest.raises(BusClosed):
            await bus.publish(delta())
        assert bus.statistics().emitted == 0

    async def test_emit_and_publish_after_close_raise_bus_closed(self) -> None:
        async with EventBus() as bus:
            bus.emit(delta("before"))
        assert bus.closed
        with pytest.raises(BusClosed) as info:
            bus.emit(delta("after"))
        assert isinstance(info.value, anyio.ClosedResourceError)
        with pytest.raises(BusClosed):
            await bus.publish(delta("after"))
        assert bus.statistics().emitted == 1
        assert texts(bus.replay()) == ["before"]

    async def test_emit_after_aclose_inside_the_block_raises_bus_closed(self) -> None:
        async with EventBus() as bus:
            await bus.aclose()
            assert bus.closed
            with pytest.raises(BusClosed):
                bus.emit(delta())
            await bus.aclose()  # idempotent

    # -- stamping -------------------------------------------------------------

    async def test_seq_counts_per_run_and_lane_offset_per_bus(self) -> None:
        async with EventBus() as bus:
            keys = [
                ("r1", "main"),
                ("r1", "main"),
                ("r1", "lane-1"),
                ("r2", "main"),
                ("r1", "main"),
                ("r1", "lane-1"),
                ("r2", "main"),
            ]
            stamped = [
                await bus.publish(delta(str(i), r, ln))
                for i, (r, ln) in enumerate(keys)
            ]
        assert [e.offset for e in stamped if e] == [1, 2, 3, 4, 5, 6, 7]
        assert [e.seq for e in stamped if e] == [1, 2, 1, 1, 3, 2, 2]

    async def test_stamping_makes_a_new_instance_and_leaves_the_original(self) -> None:
        original = Log(run_id="r1", lane_id="l", message="m", payload={"a": [1]})
        before = attrs.asdict(original, recurse=False)
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(original)
            received = sub.receive_nowait()
        assert attrs.asdict(original, recurse=False) == before
        assert (original.seq, original.offset) == (0, 0)
        assert received is not original
        assert type(received) is Log
        assert received == attrs.evolve(original, seq=1, offset=1)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            received.seq = 5  # type: ignore[misc]

    async def test_a_user_defined_event_is_stamped_whole(self) -> None:
        original = Citation(
            run_id="r1",
            url="https://example.org",
            tags=("a", "b"),
            parent_span_id="parent",
        )
        async with EventBus() as bus, bus.subscribe(kinds=Citation) as sub:
            bus.emit(original)
            received = sub.receive_nowait()
        assert type(received) is Citation
        assert received == attrs.evolve(original, seq=1, offset=1)
        assert (received.span_id, received.ts) == (original.span_id, original.ts)

    async def test_offsets_count_per_bus(self) -> None:
        async with EventBus() as first, EventBus() as second:
            first.emit(delta("1"))
            first.emit(delta("2"))
            second.emit(delta("3", run_id="r1"))
            assert [e.offset for e in first.replay()] == [1, 2]
            assert [(e.seq, e.offset) for e in second.replay()] == [(1, 1)]

    async def test_the_same_object_emitted_twice_is_stamped_twice(self) -> None:
        event = delta("again")
        async with EventBus() as bus:
            bus.emit(event)
            bus.emit(event)
            history = bus.replay()
        assert [(e.seq, e.offset) for e in history] == [(1, 1), (2, 2)]
        assert (event.seq, event.offset) == (0, 0)

    async def test_stamps_are_gapless_over_rejected_and_blocked_events(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(run_id="r2", overflow=Overflow.BLOCK, buffer_size=1),
        ):
            bus.emit(delta("1"))
            bus.emit(MessageDelta(run_id="r1", text="", payload={"cot": "secret"}))
            bus.emit(delta("r2", run_id="r2"))
            with pytest.raises(anyio.WouldBlock):
                bus.emit(delta("blocked", run_id="r2"))
            bus.emit(delta("2"))
            history = bus.replay()
        assert [(e.run_id, e.seq, e.offset) for e in history] == [
            ("r1", 1, 1),
            ("r2", 1, 2),
            ("r1", 2, 3),
        ]

    # -- the run lifecycle ----------------------------------------------------

    @pytest.mark.parametrize("terminal", TERMINALS, ids=lambda e: e.kind)
    async def test_events_after_the_terminal_event_are_rejected(
        self, terminal: Event, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(RunStarted(run_id="r1"))
            assert await bus.publish(terminal) is not None
            with caplog.at_level(logging.WARNING, logger="purpose_bus"):
                bus.emit(delta("late"))
                assert await bus.publish(delta("late")) is None
                assert await bus.publish(RunFinished(run_id="r1")) is None
            stats = bus.statistics()
            assert (stats.emitted, stats.rejected) == (2, 3)
            assert [e.kind for e in drain(sub)] == ["run.started", terminal.kind]
            assert [e.kind for e in bus.replay(run_id="r1")] == [
                "run.started",
                terminal.kind,
            ]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 3
        assert all("r1" in r.getMessage() for r in warnings)

    @pytest.mark.parametrize("terminal", TERMINALS, ids=lambda e: e.kind)
    async def test_strict_bus_raises_for_events_after_the_terminal_event(
        self, terminal: Event
    ) -> None:
        async with EventBus(strict=True) as bus, bus.subscribe() as sub:
            bus.emit(terminal)
            with pytest.raises(EventRejected) as info:
                bus.emit(delta("late"))
            assert isinstance(info.value, ValueError)
            assert isinstance(info.value, PurposeBusError)
            assert info.value.reason
            with pytest.raises(EventRejected):
                await bus.publish(RunFinished(run_id="r1"))
            assert bus.statistics().rejected == 2
            assert bus.statistics().emitted == 1
            assert [e.kind for e in drain(sub)] == [terminal.kind]

    async def test_one_finished_run_does_not_affect_others(self) -> None:
        async with EventBus(strict=True) as bus:
            bus.emit(RunFinished(run_id="r1"))
            bus.emit(delta(run_id="r2"))
            bus.emit(RunFinished(run_id="r2"))
            assert bus.statistics().rejected == 0

    async def test_finished_runs_are_remembered(self) -> None:
        async with EventBus(strict=True) as bus:
            bus.emit(RunFinished(run_id="r1"))
            for index in range(200):
                bus.emit(delta(run_id=f"other-{index}"))
                bus.emit(RunFinished(run_id=f"other-{index}"))
            with pytest.raises(EventRejected):
                bus.emit(delta(run_id="r1"))

    # -- BLOCK, seen from the producer -----------------------------------------

    async def test_emit_on_a_full_block_subscriber_is_all_or_nothing(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=2) as blocked,
            bus.subscribe(name="other") as other,
        ):
            bus.emit(delta("1"))
            bus.emit(delta("2"))
            history = bus.replay()
            before = bus.statistics()
            with pytest.raises(anyio.WouldBlock):
                bus.emit(delta("3"))
            after = bus.statistics()
            assert after.emitted == before.emitted == 2
            assert after == before
            assert bus.replay() == history
            assert texts(drain(other)) == ["1", "2"]
            assert texts(drain(blocked)) == ["1", "2"]
            bus.emit(delta("3"))
            assert texts(drain(blocked)) == ["3"]
            assert texts(drain(other)) == ["3"]

    async def test_a_full_block_subscriber_does_not_block_other_runs(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(run_id="r1", overflow=Overflow.BLOCK, buffer_size=1),
        ):
            bus.emit(delta(run_id="r1"))
            bus.emit(delta(run_id="r2"))
            with pytest.raises(anyio.WouldBlock):
                bus.emit(delta(run_id="r1"))

    async def test_publish_waits_for_room_and_completes_once_received(self) -> None:
        results: list[Event | None] = []
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
        ):
            bus.emit(delta("1"))

            async def publisher() -> None:
                results.append(await bus.publish(delta("2")))

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publisher)
                    await all_tasks_blocked()
                    assert results == []
                    assert bus.statistics().emitted == 1
                    assert texts([await sub.receive()]) == ["1"]
                second = await sub.receive()
            assert results == [second]
            assert texts([second]) == ["2"]
            assert bus.statistics().emitted == 2

    async def test_a_terminal_event_waits_under_block(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
        ):
            bus.emit(delta("1"))
            with pytest.raises(anyio.WouldBlock):
                bus.emit(RunFinished(run_id="r1"))
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(bus.publish, RunFinished(run_id="r1"))
                    await all_tasks_blocked()
                    assert bus.statistics().emitted == 1
                    await sub.receive()
                assert (await sub.receive()).kind == "run.finished"

    async def test_cancelled_publish_leaves_no_trace(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
            bus.subscribe(name="other") as other,
        ):
            bus.emit(delta("1"))
            before = bus.statistics()
            history = bus.replay()
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(bus.publish, delta("cancelled"))
                    await all_tasks_blocked()
                    tg.cancel_scope.cancel()
            assert bus.statistics() == before
            assert bus.replay() == history
            assert texts(drain(sub)) == ["1"]
            assert texts(drain(other)) == ["1"]
            # Room now: the next event gets the stamps the cancelled one never had.
            published = await bus.publish(delta("2"))
            assert published is not None
            assert (published.seq, published.offset) == (2, 2)
            assert texts(drain(sub)) == ["2"]

    async def test_publish_is_a_cancellation_point_on_the_fast_path(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            for _ in range(2 * EVENTS_PER_YIELD + 1):
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await bus.publish(delta("cancelled"))
                    pytest.fail("publish() did not raise the cancellation")
                assert scope.cancelled_caught
            assert bus.statistics().emitted == 0
            assert bus.replay() == []
            assert drain(sub) == []

    async def test_publish_yields_to_the_scheduler_at_bounded_intervals(
        self,
    ) -> None:
        windows = 10
        ticks = 0
        seen: list[int] = []

        async def counter() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await checkpoint()

        async with EventBus(history_size=0) as bus:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(counter)
                    for _ in range(windows):
                        for _ in range(EVENTS_PER_YIELD):
                            await bus.publish(delta())
                        seen.append(ticks)
                    tg.cancel_scope.cancel()
        for window, count in enumerate(seen, 1):
            assert count >= window - 1, seen

    async def test_closing_a_full_block_subscriber_releases_the_publisher(
        self,
    ) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(name="other") as other,
        ):
            blocked = bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1)
            async with blocked:
                bus.emit(delta("1"))
                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(bus.publish, delta("2"))
                        await all_tasks_blocked()
                        blocked.close()
            assert texts(drain(other)) == ["1", "2"]
            assert blocked.statistics().dropped == 1

    async def test_publish_waits_for_every_full_block_subscriber(self) -> None:
        done: list[Event | None] = []
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as first,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as second,
        ):
            bus.emit(delta("1"))

            async def publisher() -> None:
                done.append(await bus.publish(delta("2")))

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publisher)
                    await all_tasks_blocked()
                    await first.receive()
                    await all_tasks_blocked()
                    assert done == []
                    assert bus.statistics().emitted == 1
                    await second.receive()
            assert len(done) == 1
            assert texts(drain(first)) == texts(drain(second)) == ["2"]

    async def test_events_dropped_notices_cannot_be_emitted(self) -> None:
        notice = EventsDropped(run_id="r1", count=1, first_offset=1, last_offset=1)
        async with EventBus() as bus:
            with pytest.raises(TypeError):
                bus.emit(notice)
            with pytest.raises(TypeError):
                await bus.publish(notice)
            assert bus.statistics().emitted == 0

    # -- closing --------------------------------------------------------------

    async def test_waiting_publish_raises_bus_closed_when_the_bus_closes(self) -> None:
        raised: list[BaseException] = []
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
        ):
            bus.emit(delta("1"))

            async def publisher() -> None:
                try:
                    await bus.publish(delta("2"))
                except BusClosed as exc:
                    raised.append(exc)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publisher)
                    await all_tasks_blocked()
                    await bus.aclose()
                assert len(raised) == 1
                assert isinstance(raised[0], anyio.ClosedResourceError)
                assert texts([e async for e in sub]) == ["1"]
            assert bus.statistics().emitted == 1

    async def test_subscribers_drain_their_buffers_then_end(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe() as sub,
            bus.subscribe(run_id="r1") as run,
        ):
            for index in range(5):
                bus.emit(delta(str(index)))
            await bus.aclose()
            with anyio.fail_after(5):
                assert texts([e async for e in sub]) == list("01234")
                assert texts([e async for e in run]) == list("01234")
            with pytest.raises(anyio.EndOfStream):
                sub.receive_nowait()
            with pytest.raises(anyio.EndOfStream):
                await sub.receive()

    async def test_a_task_waiting_in_receive_ends_when_the_bus_closes(self) -> None:
        received: list[Event] = []
        async with EventBus() as bus, bus.subscribe() as sub:

            async def consumer(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                task_status.started()
                async for event in sub:
                    received.append(event)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    await tg.start(consumer)
                    bus.emit(delta("1"))
                    await all_tasks_blocked()
                    assert texts(received) == ["1"]
                    bus.emit(delta("2"))
                    await bus.aclose()
        assert texts(received) == ["1", "2"]

    async def test_aclose_is_a_cancellation_point_and_still_closes(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(delta("1"))
            with anyio.CancelScope() as scope:
                scope.cancel()
                await bus.aclose()
            assert bus.closed
            with pytest.raises(BusClosed):
                bus.emit(delta("2"))
            assert texts(drain(sub)) == ["1"]
            with pytest.raises(anyio.EndOfStream):
                sub.receive_nowait()
            assert scope.cancelled_caught  # "A checkpoint", says its docstring
            with anyio.CancelScope() as scope:
                scope.cancel()
                await bus.aclose()  # already closed
            assert scope.cancelled_caught

    async def test_leaving_the_block_closes_the_bus(self) -> None:
        async with EventBus() as bus:
            sub = bus.subscribe()
            async with sub:
                pass
        assert bus.closed
        with pytest.raises(BusClosed):
            bus.emit(delta())

    async def test_an_exception_in_the_block_propagates_and_closes(self) -> None:
        # The bus's task group runs only its own tasks: the body's exception comes
        # out as it was raised, not wrapped in an exception group.
        bus = EventBus()
        with pytest.raises(KeyError, match="boom"):
            async with bus:
                raise KeyError("boom")
        assert bus.closed

    async def test_cancellation_in_the_block_closes_the_bus(self) -> None:
        bus = EventBus()
        with anyio.fail_after(5), anyio.CancelScope() as scope:
            async with bus:
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert bus.closed

    async def test_subscriptions_are_named(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(name="ui") as named,
            bus.subscribe() as first,
            bus.subscribe() as second,
        ):
            assert named.name == named.statistics().name == "ui"
            assert first.name
            assert first.name != second.name

    async def test_history_visibility_defaults_to_public(self) -> None:
        async with EventBus() as bus:
            bus.emit(Log(run_id="r1", message="m", visibility=Visibility.INTERNAL))
            assert bus.replay() == []
            assert len(bus.replay(visibility=Visibility.INTERNAL)) == 1


class TestBusStatistics:
    async def test_statistics_fields(self) -> None:
        async with EventBus(history_size=3, strict=False) as bus:
            async with bus.subscribe(name="gone", buffer_size=1) as gone:
                bus.emit(delta("1"))
                bus.emit(delta("2"))  # evicts "1" from gone
                assert gone.statistics().dropped == 1
            # Closing it discarded "2": counted as dropped, and the bus remembers.
            assert gone.statistics().dropped == 2
            async with (
                bus.subscribe(name="a", buffer_size=2) as a,
                bus.subscribe(name="b", overflow=Overflow.DROP_NEWEST) as b,
            ):
                bus.emit(delta("3"))
                bus.emit(delta("4"))
                bus.emit(delta("5"))  # evicts "3" from a
                bus.emit(MessageDelta(run_id="r1", text="", payload={"cot": 1}))
                a.receive_nowait()
                stats = bus.statistics()
                assert isinstance(stats, BusStatistics)
                assert stats.emitted == 5
                assert stats.rejected == 1
                assert stats.history == 3
                assert stats.dropped == 2 + 1
                assert stats.subscriptions == (a.statistics(), b.statistics())
                assert stats.subscriptions[0] == SubscriptionStatistics(
                    name="a",
                    buffered=1,
                    buffer_size=2,
                    delivered=1,
                    dropped=1,
                    overflow=Overflow.DROP_OLDEST,
                    matched=3,
                )
                assert stats.subscriptions[1] == SubscriptionStatistics(
                    name="b",
                    buffered=3,
                    buffer_size=1000,
                    delivered=0,
                    dropped=0,
                    overflow=Overflow.DROP_NEWEST,
                    matched=3,
                )

    async def test_statistics_are_frozen_snapshots(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            stats = bus.statistics()
            bus.emit(delta())
            assert stats.emitted == 0
            assert stats.subscriptions[0].buffered == 0
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                stats.emitted = 3  # type: ignore[misc]
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                sub.statistics().dropped = 3  # type: ignore[misc]
            assert attrs.has(BusStatistics)
            assert [f.name for f in attrs.fields(BusStatistics)] == [
                "emitted",
                "rejected",
                "dropped",
                "history",
                "subscriptions",
            ]
            assert [f.name for f in attrs.fields(SubscriptionStatistics)] == [
                "name",
                "buffered",
                "buffer_size",
                "delivered",
                "dropped",
                "overflow",
                "matched",
            ]
