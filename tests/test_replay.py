"""Tests of history replay: :meth:`EventBus.replay`, ``subscribe(replay=True)``
and ``subscribe(after=...)``, on asyncio and trio.

Nothing here sleeps to synchronise: single-task tests use ``receive_nowait``,
the others ``all_tasks_blocked()`` and ``anyio.fail_after()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint
from helpers import all_tasks_blocked, drain
from hypothesis import given
from hypothesis import strategies as st

from purpose_bus import (
    Event,
    EventBus,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    RunFinished,
    RunStarted,
    Subscription,
    SubscriptionStatistics,
    ToolCall,
    Visibility,
)

RUNS = ["a", "b", "c"]
LANES = ["main", "l1"]
NON_TERMINAL: list[type[Event]] = [Log, MessageDelta, ToolCall]
ALL_KINDS: list[type[Event]] = [*NON_TERMINAL, RunFinished]


def make(
    cls: type[Event] = Log,
    run_id: str = "r",
    lane_id: str = "main",
    visibility: Visibility = Visibility.PUBLIC,
) -> Event:
    extra: dict[str, Any] = {
        Log: {"message": "m"},
        MessageDelta: {"text": "t"},
        ToolCall: {"name": "search"},
    }.get(cls, {})
    return cls(run_id=run_id, lane_id=lane_id, visibility=visibility, **extra)


def emit_many(bus: EventBus, count: int, **fields: Any) -> None:
    for _ in range(count):
        bus.emit(make(**fields))


def take(sub: Subscription[Event], count: int) -> list[Event]:
    """Up to *count* items from *sub*, without waiting."""
    events: list[Event] = []
    for _ in range(count):
        try:
            events.append(sub.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return events


def offsets(events: Iterable[Event]) -> list[int]:
    return [e.offset for e in events]


def notices(events: Iterable[Event]) -> list[EventsDropped]:
    return [e for e in events if isinstance(e, EventsDropped)]


def accounted(sub: Subscription[Event]) -> int:
    stats = sub.statistics()
    return stats.delivered + stats.dropped + stats.buffered


def check_accounting(sub: Subscription[Event]) -> None:
    """delivered + dropped + buffered == matched (the subscription's own count,
    in which a replayed event is matched when it is read from history)."""
    assert accounted(sub) == sub.statistics().matched


def check_never_skipped(
    received: list[Event], matching: list[int], stats: SubscriptionStatistics
) -> None:
    """Every offset of *matching* was delivered once, in order, or was dropped and
    is covered by exactly one notice, which came after the delivered events
    before the loss and before the first one after it; the counts add up."""
    covered: list[int] = []
    previous = 0
    for position, item in enumerate(received):
        if isinstance(item, EventsDropped):
            following = next(
                (
                    e.offset
                    for e in received[position + 1 :]
                    if not isinstance(e, EventsDropped)
                ),
                None,
            )
            assert previous < item.first_offset <= item.last_offset
            assert following is None or item.last_offset < following
            lost = [n for n in matching if item.first_offset <= n <= item.last_offset]
            assert item.count == len(lost)
            covered.extend(lost)
        else:
            assert item.offset > previous
            previous = item.offset
    delivered = [e.offset for e in received if not isinstance(e, EventsDropped)]
    assert sorted(delivered + covered) == matching
    assert stats.delivered == len(delivered)
    assert stats.dropped == len(covered) == sum(n.count for n in notices(received))
    assert stats.delivered + stats.dropped == len(matching)


# -- filters, the same for bus.replay() and bus.subscribe() -------------------


def _kind(item: str | type[Event]) -> str:
    return item if isinstance(item, str) else item.kind


def _wanted(value: Any) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str | type):
        return {_kind(value)}
    return {_kind(v) for v in value}


def matches(event: Event, filters: dict[str, Any]) -> bool:
    """An independent statement of what a filter matches."""
    runs = _wanted(filters.get("run_id"))
    lanes = _wanted(filters.get("lane_id"))
    kinds = _wanted(filters.get("kinds"))
    return (
        event.visibility <= filters.get("visibility", Visibility.PUBLIC)
        and (runs is None or event.run_id in runs)
        and (lanes is None or event.lane_id in lanes)
        and (kinds is None or event.kind in kinds)
    )


def _one_or_many(values: list[Any]) -> st.SearchStrategy[Any]:
    one = st.sampled_from(values)
    return one | st.lists(one, min_size=1, max_size=3) | st.sets(one, min_size=1)


FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "run_id": _one_or_many(RUNS),
        "lane_id": _one_or_many(LANES),
        "kinds": _one_or_many([*ALL_KINDS, *(c.kind for c in ALL_KINDS)]),
        "visibility": st.sampled_from(Visibility),
    },
)


def event_specs(
    classes: list[type[Event]], max_size: int
) -> st.SearchStrategy[list[Event]]:
    return st.lists(
        st.builds(
            make,
            st.sampled_from(classes),
            st.sampled_from(RUNS),
            st.sampled_from(LANES),
            st.sampled_from(Visibility),
        ),
        max_size=max_size,
    )


#: What a test does next: ("emit", events) or ("receive", how many), drawn up
#: front (a draw inside the bus's task group would hide hypothesis' own signals
#: in an exception group).
Step = tuple[str, Any]


def steps(batch: int, count: int) -> st.SearchStrategy[list[Step]]:
    return st.lists(
        event_specs(NON_TERMINAL, batch).map(lambda b: ("emit", b))
        | st.integers(1, batch).map(lambda n: ("receive", n)),
        max_size=count,
    )


def run_steps(
    bus: EventBus, sub: Subscription[Event], plan: list[Step], emitted: list[Event]
) -> list[Event]:
    """Do *plan*, checking the accounting after each step; return what *sub*
    handed out."""
    received: list[Event] = []
    for action, argument in plan:
        if action == "emit":
            for event in argument:
                bus.emit(event)
            emitted.extend(argument)
        else:
            received.extend(take(sub, argument))
        check_accounting(sub)
        assert bus.statistics().dropped == sub.statistics().dropped
    return received


# -- bus.replay() -------------------------------------------------------------


class TestReplayMethod:
    async def populate(self, bus: EventBus) -> list[Event]:
        specs = [
            (Log, "a", "main", Visibility.PUBLIC),  # 1
            (ToolCall, "a", "l1", Visibility.PUBLIC),  # 2
            (Log, "b", "main", Visibility.INTERNAL),  # 3
            (MessageDelta, "a", "main", Visibility.PRIVATE),  # 4
            (MessageDelta, "b", "l1", Visibility.PUBLIC),  # 5
            (Log, "a", "l1", Visibility.PUBLIC),  # 6
            (ToolCall, "c", "main", Visibility.PUBLIC),  # 7
            (Log, "a", "main", Visibility.PUBLIC),  # 8
        ]
        published = []
        for spec in specs:
            event = await bus.publish(make(*spec))
            assert event is not None
            published.append(event)
        return published

    async def test_everything_public_in_offset_order(self) -> None:
        async with EventBus() as bus:
            published = await self.populate(bus)
            replayed = bus.replay()
            assert offsets(replayed) == [1, 2, 5, 6, 7, 8]
            # The very objects that were delivered: stamped, never copied again.
            assert all(e is published[e.offset - 1] for e in replayed)

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"visibility": Visibility.INTERNAL}, [1, 2, 3, 5, 6, 7, 8]),
            ({"visibility": Visibility.PRIVATE}, [1, 2, 3, 4, 5, 6, 7, 8]),
            ({"run_id": "a"}, [1, 2, 6, 8]),
            ({"run_id": ["a", "c"]}, [1, 2, 6, 7, 8]),
            ({"run_id": {"b", "c"}, "visibility": Visibility.INTERNAL}, [3, 5, 7]),
            ({"lane_id": "l1"}, [2, 5, 6]),
            ({"lane_id": ("main", "l1")}, [1, 2, 5, 6, 7, 8]),
            ({"kinds": "log"}, [1, 6, 8]),
            ({"kinds": ToolCall}, [2, 7]),
            ({"kinds": [ToolCall, "message.delta"]}, [2, 5, 7]),
            ({"run_id": "a", "lane_id": "main", "kinds": Log}, [1, 8]),
            ({"since_seq": 1}, [6, 8]),  # seq per (run, lane): a/l1 2, a/main 3
            ({"since_seq": 1, "visibility": Visibility.PRIVATE}, [4, 6, 8]),
            ({"since_seq": 2, "visibility": Visibility.PRIVATE}, [8]),
            ({"after": 5}, [6, 7, 8]),
            ({"after": 5, "run_id": "a"}, [6, 8]),
            ({"after": 1, "since_seq": 1, "lane_id": "l1"}, [6]),
            ({"after": 8}, []),
            ({"after": 100}, []),
            ({"run_id": "nobody"}, []),
        ],
    )
    async def test_filters(self, filters: dict[str, Any], expected: list[int]) -> None:
        async with EventBus() as bus:
            await self.populate(bus)
            assert offsets(bus.replay(**filters)) == expected

    async def test_only_what_history_holds(self) -> None:
        async with EventBus(history_size=4) as bus:
            await self.populate(bus)
            assert offsets(bus.replay(visibility=Visibility.PRIVATE)) == [5, 6, 7, 8]
            assert offsets(bus.replay(run_id="a")) == [6, 8]
            assert offsets(bus.replay(after=2, run_id=["a", "b"])) == [5, 6, 8]

    async def test_no_history(self) -> None:
        async with EventBus(history_size=0) as bus:
            await self.populate(bus)
            assert bus.replay(visibility=Visibility.PRIVATE) == []

    @pytest.mark.parametrize("argument", ["after", "since_seq"])
    async def test_negative_cursor(self, argument: str) -> None:
        arguments: dict[str, Any] = {argument: -1}
        async with EventBus() as bus:
            with pytest.raises(ValueError, match=argument):
                bus.replay(**arguments)

    async def test_after_the_bus_closed(self) -> None:
        async with EventBus() as bus:
            await self.populate(bus)
        assert offsets(bus.replay(run_id="a")) == [1, 2, 6, 8]


# -- subscribe(replay=True) ---------------------------------------------------


class TestReplayThenLive:
    async def test_history_then_live(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 3, run_id="a")
            emit_many(bus, 2, run_id="b")
            async with bus.subscribe(run_id="a", replay=True) as sub:
                bus.emit(make(run_id="a"))
                bus.emit(make(run_id="b"))
                assert offsets(drain(sub)) == [1, 2, 3, 6]
                bus.emit(make(run_id="a"))
                assert offsets(drain(sub)) == [8]
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped, stats.buffered) == (5, 0, 0)

    async def test_without_replay_only_live(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 3)
            async with bus.subscribe() as sub:
                emit_many(bus, 2)
                assert offsets(drain(sub)) == [4, 5]

    async def test_replay_sees_history_evicted_before_it_subscribed_as_gone(
        self,
    ) -> None:
        # replay=True means "what history holds": what was evicted before the
        # subscription was made is not a loss of this subscription's.
        async with EventBus(history_size=5) as bus:
            emit_many(bus, 12)
            async with bus.subscribe(replay=True, gap_events=True) as sub:
                assert offsets(drain(sub)) == [8, 9, 10, 11, 12]
                assert sub.statistics().dropped == 0

    @given(
        history=event_specs(NON_TERMINAL, 150),
        filters=FILTERS,
        plan=steps(batch=20, count=20),
    )
    async def test_gapless_switch_property(
        self, history: list[Event], filters: dict[str, Any], plan: list[Step]
    ) -> None:
        """Random history, then emits interleaved with receives while the
        subscriber is still reading history: it receives exactly the matching
        offsets, in order, once each (nothing is evicted)."""
        emitted = list(history)
        async with EventBus(history_size=10_000) as bus:
            for event in history:
                bus.emit(event)
            async with bus.subscribe(replay=True, **filters) as sub:
                received = run_steps(bus, sub, plan, emitted)
                received.extend(drain(sub))
                stats = sub.statistics()
        expected = [n for n, e in enumerate(emitted, start=1) if matches(e, filters)]
        assert offsets(received) == expected
        assert not notices(received)
        assert (stats.delivered, stats.dropped, stats.buffered) == (len(expected), 0, 0)

    @pytest.mark.parametrize(
        "filters",
        [{}, {"run_id": "a"}, {"run_id": ["a", "b"], "kinds": Log}, {"lane_id": "l1"}],
    )
    async def test_gapless_with_concurrent_producer(
        self, filters: dict[str, Any]
    ) -> None:
        """A producer task emits while a consumer task replays 300 events and
        then goes live; the scheduler interleaves them."""
        specs = [
            make(NON_TERMINAL[n % 3], RUNS[n % 3], LANES[n % 2]) for n in range(600)
        ]
        expected = [n for n, e in enumerate(specs, start=1) if matches(e, filters)]
        received: list[Event] = []
        async with EventBus() as bus:
            for event in specs[:300]:
                bus.emit(event)
            async with bus.subscribe(replay=True, **filters) as sub:

                async def consume() -> None:
                    async for event in sub:
                        received.append(event)
                        if len(received) == len(expected):
                            return

                async def produce() -> None:
                    for event in specs[300:]:
                        bus.emit(event)
                        await checkpoint()

                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(consume)
                        tg.start_soon(produce)
        assert offsets(received) == expected

    async def test_replay_is_not_bounded_by_the_buffer(self) -> None:
        # A BLOCK subscriber with a buffer of 16 replays 10,000 events, and
        # emits made while it replays never block.
        async with EventBus(history_size=20_000) as bus:
            emit_many(bus, 10_000)
            async with bus.subscribe(
                replay=True, overflow=Overflow.BLOCK, buffer_size=16
            ) as sub:
                assert offsets(take(sub, 5)) == [1, 2, 3, 4, 5]
                emit_many(bus, 100)  # would raise WouldBlock if bounded
                received = 5
                with anyio.fail_after(10):
                    async for event in sub:
                        received += 1
                        assert event.offset == received
                        if received == 10_100:
                            break
                stats = sub.statistics()
                assert stats.delivered == 10_100
                assert stats.dropped == 0
                assert stats.buffer_size == 16

    async def test_block_policy_applies_after_the_switch(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 50)
            async with bus.subscribe(
                replay=True, overflow=Overflow.BLOCK, buffer_size=4
            ) as sub:
                assert len(drain(sub)) == 50  # history read, then live (empty)
                emit_many(bus, 4)
                with pytest.raises(anyio.WouldBlock):
                    bus.emit(make())
                assert bus.statistics().emitted == 54  # all or nothing
                async with anyio.create_task_group() as tg:
                    tg.start_soon(bus.publish, make())
                    await all_tasks_blocked()
                    assert bus.statistics().emitted == 54  # waiting for room
                    assert (await sub.receive()).offset == 51
                assert bus.statistics().emitted == 55
                assert offsets(drain(sub)) == [52, 53, 54, 55]
                assert sub.statistics().dropped == 0

    @pytest.mark.parametrize(
        ("policy", "kept"),
        [
            (Overflow.DROP_OLDEST, [57, 58, 59, 60]),
            (Overflow.DROP_NEWEST, [51, 52, 53, 54]),
        ],
    )
    async def test_drop_policies_apply_after_the_switch(
        self, policy: Overflow, kept: list[int]
    ) -> None:
        async with EventBus() as bus:
            emit_many(bus, 50)
            async with bus.subscribe(
                replay=True, overflow=policy, buffer_size=4, gap_events=True
            ) as sub:
                assert offsets(drain(sub)) == list(range(1, 51))
                emit_many(bus, 10)
                received = drain(sub)
                assert [
                    e.offset for e in received if not isinstance(e, EventsDropped)
                ] == kept
                [notice] = notices(received)
                assert notice.count == 6
                assert sub.statistics().dropped == 6
                assert bus.statistics().dropped == 6
                check_accounting(sub)

    async def test_accounting_while_replaying(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 200)
            async with bus.subscribe(replay=True) as sub:
                for received in range(1, 201):
                    sub.receive_nowait()
                    stats = sub.statistics()
                    assert (stats.delivered, stats.dropped) == (received, 0)
                    # What was read ahead from history counts as buffered.
                    assert stats.buffered <= 200 - received
                    check_accounting(sub)

    async def test_close_during_replay_counts_read_ahead_as_dropped(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 200)
            sub = bus.subscribe(replay=True)
            async with sub:
                take(sub, 10)
                buffered = sub.statistics().buffered
            assert sub.statistics().dropped == buffered
            assert bus.statistics().dropped == buffered
            with pytest.raises(anyio.ClosedResourceError):
                sub.receive_nowait()

    async def test_bus_closing_during_replay_ends_after_history(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 100)
            async with bus.subscribe(replay=True) as sub:
                take(sub, 10)
                await bus.aclose()
                with anyio.fail_after(5):
                    rest = [e async for e in sub]
                assert offsets(rest) == list(range(11, 101))


# -- subscribe(after=...) -----------------------------------------------------


class TestResume:
    async def test_after_a_cursor_history_holds(self) -> None:
        async with EventBus(history_size=10) as bus:
            emit_many(bus, 30)
            async with bus.subscribe(after=25, gap_events=True) as sub:
                assert offsets(drain(sub)) == [26, 27, 28, 29, 30]
                emit_many(bus, 1)
                assert offsets(drain(sub)) == [31]
                assert sub.statistics().dropped == 0

    async def test_after_zero_replays_everything(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 5)
            async with bus.subscribe(after=0) as sub:
                assert offsets(drain(sub)) == [1, 2, 3, 4, 5]

    async def test_after_beyond_history_counts_the_missing_offsets(self) -> None:
        async with EventBus(history_size=10) as bus:
            emit_many(bus, 30)  # history holds 21..30
            async with bus.subscribe(after=5, gap_events=True) as sub:
                received = drain(sub)
                assert isinstance(received[0], EventsDropped)
                notice = received[0]
                assert (notice.count, notice.first_offset, notice.last_offset) == (
                    15,
                    6,
                    20,
                )
                assert notice.exact is False  # an upper bound
                assert offsets(received[1:]) == list(range(21, 31))
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped) == (10, 15)
                assert bus.statistics().dropped == 15
                check_accounting(sub)

    async def test_missing_offsets_counted_without_gap_events(self) -> None:
        async with EventBus(history_size=10) as bus:
            emit_many(bus, 30)
            async with bus.subscribe(after=5) as sub:
                received = drain(sub)
                assert offsets(received) == list(range(21, 31))
                assert sub.statistics().dropped == 15

    async def test_missing_offsets_notice_names_the_single_run(self) -> None:
        async with EventBus(history_size=2) as bus:
            emit_many(bus, 6, run_id="r1", lane_id="l1")
            async with bus.subscribe(
                run_id="r1", lane_id="l1", after=1, gap_events=True
            ) as sub:
                notice = sub.receive_nowait()
                assert isinstance(notice, EventsDropped)
                assert (notice.run_id, notice.lane_id, notice.count) == ("r1", "l1", 3)
                assert offsets(drain(sub)) == [5, 6]

    @pytest.mark.parametrize("after", [30, 31, 1_000_000])
    async def test_after_newest_or_beyond_starts_live(self, after: int) -> None:
        async with EventBus(history_size=10) as bus:
            emit_many(bus, 30)
            async with bus.subscribe(after=after, gap_events=True) as sub:
                assert drain(sub) == []
                emit_many(bus, 2)
                assert offsets(drain(sub)) == [31, 32]
                assert sub.statistics().dropped == 0

    async def test_negative_after(self) -> None:
        async with EventBus() as bus:
            with pytest.raises(ValueError, match="after"):
                bus.subscribe(after=-1)

    async def test_after_with_filters(self) -> None:
        async with EventBus() as bus:
            for run in "ababab":
                bus.emit(make(run_id=run))
            async with bus.subscribe(run_id="b", after=3) as sub:
                assert offsets(drain(sub)) == [4, 6]


# -- history evicted while a subscriber replays -------------------------------


class TestEvictionDuringReplay:
    async def test_evicted_unread_history_is_dropped_and_announced(self) -> None:
        async with EventBus(history_size=100) as bus:
            emit_many(bus, 100)
            async with bus.subscribe(replay=True, gap_events=True) as sub:
                received = take(sub, 3)
                assert offsets(received) == [1, 2, 3]
                emit_many(bus, 200)  # 101..300 evict 1..200, mostly unread
                check_accounting(sub)
                received += drain(sub)
                check_accounting(sub)
                stats = sub.statistics()
                assert bus.statistics().dropped == stats.dropped
        # What was read (ahead) before the eviction is still delivered; the rest
        # of 4..200 is dropped and announced before 201.
        [notice] = notices(received)
        assert notice.last_offset == 200
        assert notice.count >= 100
        assert offsets(received[received.index(notice) + 1 :]) == list(range(201, 301))
        check_never_skipped(received, list(range(1, 301)), stats)

    async def test_eviction_counted_without_gap_events(self) -> None:
        async with EventBus(history_size=100) as bus:
            emit_many(bus, 100)
            async with bus.subscribe(replay=True) as sub:
                take(sub, 1)
                emit_many(bus, 300)
                rest = drain(sub)
                assert not notices(rest)
                stats = sub.statistics()
                assert stats.dropped > 0
                assert stats.delivered + stats.dropped == 400
                assert offsets(rest)[-100:] == list(range(301, 401))

    async def test_only_matching_evictions_count(self) -> None:
        async with EventBus(history_size=100) as bus:
            for n in range(100):
                bus.emit(make(run_id="ab"[n % 2]))
            async with bus.subscribe(run_id="a", replay=True, gap_events=True) as sub:
                take(sub, 1)
                for n in range(300):
                    bus.emit(make(run_id="ab"[n % 2]))
                rest = drain(sub)
                stats = sub.statistics()
                # Run a has 200 events (odd offsets); every one is accounted for.
                assert stats.delivered + stats.dropped == 200
                assert sum(n.count for n in notices(rest)) == stats.dropped
                assert all(e.run_id == "a" for e in rest)

    @given(
        history_size=st.integers(1, 40),
        history=event_specs(NON_TERMINAL, 80),
        filters=FILTERS,
        plan=steps(batch=30, count=20),
    )
    async def test_never_skipped_silently_property(
        self,
        history_size: int,
        history: list[Event],
        filters: dict[str, Any],
        plan: list[Step],
    ) -> None:
        """With a small history and a slow replaying subscriber, every matching
        event is delivered, or dropped and covered by exactly one notice that
        comes before the next delivered event; counts add up."""
        emitted = list(history)
        async with EventBus(history_size=history_size) as bus:
            for event in history:
                bus.emit(event)
            oldest = bus.statistics().emitted - bus.statistics().history + 1
            async with bus.subscribe(replay=True, gap_events=True, **filters) as sub:
                received = run_steps(bus, sub, plan, emitted)
                received.extend(drain(sub))
                check_accounting(sub)
                stats = sub.statistics()
        matching = [
            n
            for n, e in enumerate(emitted, start=1)
            if n >= oldest and matches(e, filters)
        ]
        assert all(matches(e, filters) for e in received if e.kind != "events.dropped")
        check_never_skipped(received, matching, stats)


# -- subscriptions scoped to one run ------------------------------------------


class TestFinishedRun:
    async def emit_finished_run(self, bus: EventBus) -> None:
        bus.emit(RunStarted(run_id="r1"))
        bus.emit(make(run_id="r1"))
        bus.emit(make(run_id="r2"))
        bus.emit(RunFinished(run_id="r1"))
        bus.emit(make(run_id="r2"))

    async def test_replays_up_to_the_terminal_event_then_ends(self) -> None:
        async with EventBus() as bus:
            await self.emit_finished_run(bus)
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                with anyio.fail_after(5):
                    events = [e async for e in sub]
                assert [e.kind for e in events] == [
                    "run.started",
                    "log",
                    "run.finished",
                ]
                with pytest.raises(anyio.EndOfStream):
                    sub.receive_nowait()

    async def test_without_replay_ends_at_once(self) -> None:
        async with EventBus() as bus:
            await self.emit_finished_run(bus)
            async with bus.subscribe(run_id="r1") as sub:
                with anyio.fail_after(5):
                    assert [e async for e in sub] == []

    async def test_after_a_cursor_in_a_finished_run(self) -> None:
        async with EventBus() as bus:
            await self.emit_finished_run(bus)
            async with bus.subscribe(run_id="r1", after=1) as sub:
                with anyio.fail_after(5):
                    assert offsets([e async for e in sub]) == [2, 4]

    async def test_after_beyond_a_finished_run_ends_at_once(self) -> None:
        async with EventBus() as bus:
            await self.emit_finished_run(bus)
            async with bus.subscribe(run_id="r1", after=5) as sub:
                with anyio.fail_after(5):
                    assert [e async for e in sub] == []

    async def test_run_finishing_during_replay(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 100, run_id="r1")
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                assert offsets(take(sub, 3)) == [1, 2, 3]
                emit_many(bus, 5, run_id="r1")
                bus.emit(RunFinished(run_id="r1"))
                with anyio.fail_after(5):
                    rest = [e async for e in sub]
                assert offsets(rest) == list(range(4, 107))
                assert rest[-1].kind == "run.finished"

    async def test_a_live_waiter_ends_with_the_terminal_event(self) -> None:
        async with EventBus() as bus:
            emit_many(bus, 3, run_id="r1")
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                received: list[Event] = []

                async def consume() -> None:
                    async for event in sub:
                        received.append(event)

                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(consume)
                        await all_tasks_blocked()
                        assert offsets(received) == [1, 2, 3]  # now live, waiting
                        bus.emit(RunFinished(run_id="r1"))
                assert offsets(received) == [1, 2, 3, 4]

    async def test_many_runs_do_not_end_with_one(self) -> None:
        async with EventBus() as bus:
            await self.emit_finished_run(bus)
            async with bus.subscribe(run_id=["r1", "r2"], replay=True) as sub:
                assert offsets(drain(sub)) == [1, 2, 3, 4, 5]
                with pytest.raises(anyio.WouldBlock):
                    sub.receive_nowait()


# -- replay filters are subscription filters ----------------------------------


class TestFiltersAgree:
    @given(
        events=event_specs(ALL_KINDS, 60),
        filters=FILTERS,
        after=st.integers(0, 65),
        since_seq=st.integers(0, 4),
    )
    async def test_replay_equals_subscriptions_property(
        self,
        events: list[Event],
        filters: dict[str, Any],
        after: int,
        since_seq: int,
    ) -> None:
        async with EventBus() as bus:
            async with bus.subscribe(**filters) as live:
                for event in events:
                    bus.emit(event)  # late events of a finished run are rejected
                from_live = drain(live)
            assert all(matches(e, filters) for e in from_live)
            replayed = bus.replay(**filters)
            assert replayed == from_live
            async with bus.subscribe(replay=True, **filters) as sub:
                assert drain(sub) == replayed
            async with bus.subscribe(after=after, **filters) as sub:
                from_cursor = drain(sub)
            assert from_cursor == [e for e in replayed if e.offset > after]
            assert bus.replay(after=after, **filters) == from_cursor
            assert bus.replay(since_seq=since_seq, **filters) == [
                e for e in replayed if e.seq > since_seq
            ]


# -- known bugs ---------------------------------------------------------------


class TestNothingLeftToReplay:
    """A subscription with nothing (left) to replay is live: events accepted
    before its next receive go to its buffer, and are not lost to history
    eviction while the buffer has room.

    The first two tests are for a subscription with nothing to replay when it
    is registered (fixed in 0327990); the last one is for a replay the
    subscriber has consumed to the end: the switch to live happens only at the
    next receive that finds history exhausted, so until then new events must
    survive in history (see the report).
    """

    @pytest.mark.parametrize("history_size", [0, 2])
    async def test_replay_on_empty_history_loses_nothing(
        self, history_size: int
    ) -> None:
        async with (
            EventBus(history_size=history_size) as bus,
            bus.subscribe(replay=True, gap_events=True) as sub,
        ):
            emit_many(bus, 5)
            assert offsets(drain(sub)) == [1, 2, 3, 4, 5]
            assert sub.statistics().dropped == 0

    async def test_resume_without_history_loses_only_the_missing_offsets(
        self,
    ) -> None:
        async with EventBus(history_size=0) as bus:
            emit_many(bus, 3)
            async with bus.subscribe(after=1, gap_events=True) as sub:
                emit_many(bus, 2)  # accepted after registration: deliverable
                received = drain(sub)
                notice = received[0]
                assert isinstance(notice, EventsDropped)
                assert (notice.first_offset, notice.last_offset) == (2, 3)
                assert notice.exact is False
                assert offsets(received[1:]) == [4, 5]
                assert sub.statistics().dropped == 2

    async def test_a_consumed_replay_is_live(self) -> None:
        # Once the subscriber has received everything history held, events
        # accepted afterwards are live events: its buffer (1000) has room for
        # them, so none may be lost to history eviction.
        async with EventBus(history_size=5) as bus:
            emit_many(bus, 3)
            async with bus.subscribe(replay=True, gap_events=True) as sub:
                assert offsets(take(sub, 3)) == [1, 2, 3]  # all of history
                emit_many(bus, 10)
                assert offsets(drain(sub)) == list(range(4, 14))
                assert sub.statistics().dropped == 0


class TestOldBusReplayCall:
    async def test_a_positional_since_seq_says_to_pass_it_by_keyword(self) -> None:
        # The old bus's replay(run_id, lane_id, since_seq): here the third
        # positional argument is kinds.
        async with EventBus() as bus:
            bus.emit(MessageDelta(run_id="r1", lane_id="a", text="x"))
            with pytest.raises(TypeError) as info:
                bus.replay("r1", "a", 1)  # type: ignore[arg-type]
            assert str(info.value) == (
                "replay()'s third argument is kinds; pass since_seq by keyword: "
                "replay(run_id, lane_id, since_seq=1)"
            )
            assert bus.replay("r1", "a", since_seq=0) != []
