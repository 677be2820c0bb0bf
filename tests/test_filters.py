"""Tests of subscription filters (:class:`purpose_bus.EventFilter`): run, lane,
kinds and visibility, as ``subscribe`` and ``replay`` take them."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from helpers import drain
from hypothesis import given
from hypothesis import strategies as st
from strategies import bus_events, matches_kwargs, subscribe_kwargs

from purpose_bus import (
    Event,
    EventBus,
    EventFilter,
    Log,
    MessageDelta,
    Overflow,
    RunFinished,
    RunStarted,
    ToolCall,
    Visibility,
)
from purpose_bus._filters import make_filter


@attrs.frozen(kw_only=True)
class Chatter(MessageDelta):
    """A subclass with a kind of its own: ``kinds=MessageDelta`` must not match it."""

    kind = "test_filters.chatter"


def mixed_events() -> list[Event]:
    """Two runs, two lanes, three kinds, three visibilities."""
    events: list[Event] = []
    for run in ("r1", "r2"):
        for lane in ("main", "lane-1"):
            for visibility in Visibility:
                events.append(
                    MessageDelta(
                        run_id=run, lane_id=lane, text="t", visibility=visibility
                    )
                )
                events.append(
                    Log(run_id=run, lane_id=lane, message="m", visibility=visibility)
                )
                events.append(
                    ToolCall(run_id=run, lane_id=lane, name="n", visibility=visibility)
                )
    return events


class TestEventFilter:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"run_id": "r1"},
            {"run_id": ["r1"]},
            {"run_id": ("r1", "r2")},
            {"run_id": {"r2"}},
            {"lane_id": "lane-1"},
            {"lane_id": ["main", "lane-1"]},
            {"kinds": "log"},
            {"kinds": Log},
            {"kinds": ["log", ToolCall]},
            {"kinds": {MessageDelta, Log}},
            {"kinds": ("tool.call",)},
            {"run_id": "r2", "lane_id": "main", "kinds": [MessageDelta, "log"]},
            {"visibility": Visibility.INTERNAL},
            {"visibility": Visibility.PRIVATE, "run_id": "r1", "kinds": "tool.call"},
        ],
        ids=repr,
    )
    async def test_subscribe_and_replay_filter(self, kwargs: dict[str, Any]) -> None:
        events = mixed_events()
        async with EventBus() as bus, bus.subscribe(**kwargs) as sub:
            for event in events:
                bus.emit(event)
            received = drain(sub)
            replayed = bus.replay(**kwargs)
        expected = [i + 1 for i, e in enumerate(events) if matches_kwargs(kwargs, e)]
        assert expected
        assert [e.offset for e in received] == expected
        assert [e.offset for e in replayed] == expected

    @given(kwargs=subscribe_kwargs(), event=bus_events())
    def test_the_index_matcher_with_run_and_visibility_is_matches(
        self, kwargs: dict[str, Any], event: Event
    ) -> None:
        """What the run index checks (run, visibility as an int) and the
        lane-and-kind matcher, together, decide exactly as ``matches``."""
        keys = ("run_id", "lane_id", "kinds", "visibility")
        flt = make_filter(**{k: v for k, v in kwargs.items() if k in keys})
        match = flt.lane_and_kind_matcher()
        indexed = (
            (flt.run_ids is None or event.run_id in flt.run_ids)
            and int(event.visibility) <= int(flt.visibility)
            and (match is None or match(event))
        )
        assert indexed == flt.matches(event)

    async def test_a_class_stands_for_its_own_kind_only(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(kinds=MessageDelta) as deltas,
            bus.subscribe(kinds=Chatter) as chatter,
        ):
            bus.emit(MessageDelta(run_id="r1", text="plain"))
            bus.emit(Chatter(run_id="r1", text="sub"))
            assert [e.kind for e in drain(deltas)] == ["message.delta"]
            assert [e.kind for e in drain(chatter)] == ["test_filters.chatter"]

    async def test_a_non_matching_event_costs_nothing(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(run_id="r1", buffer_size=1) as oldest,
            bus.subscribe(
                run_id="r1", buffer_size=1, overflow=Overflow.DROP_NEWEST
            ) as newest,
            bus.subscribe(run_id="r1", buffer_size=1, overflow=Overflow.BLOCK) as block,
            bus.subscribe(kinds=Log, buffer_size=1) as logs,
        ):
            bus.emit(Log(run_id="r1", message="fills every buffer"))
            subs = (oldest, newest, block, logs)
            before = [s.statistics() for s in subs]
            for index in range(100):
                bus.emit(MessageDelta(run_id=f"other-{index}", text="t"))
                bus.emit(
                    Log(
                        run_id="r1",
                        message="private",
                        visibility=Visibility.PRIVATE,
                    )
                )
            # Nothing evicted, discarded, blocked or counted.
            assert [s.statistics() for s in subs] == before
            assert bus.statistics().dropped == 0
            for sub in subs:
                assert [e.offset for e in drain(sub)] == [1]

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"run_id": []}, ValueError),
            ({"lane_id": ()}, ValueError),
            ({"kinds": []}, ValueError),
            ({"run_id": 5}, TypeError),
            ({"run_id": [1]}, TypeError),
            ({"lane_id": [None]}, TypeError),
            ({"kinds": Event}, TypeError),
            ({"kinds": [int]}, TypeError),
            ({"kinds": 3}, TypeError),
            ({"visibility": "public"}, TypeError),
            ({"visibility": 7}, ValueError),
        ],
        ids=repr,
    )
    async def test_bad_filters(
        self, kwargs: dict[str, Any], error: type[Exception]
    ) -> None:
        async with EventBus() as bus:
            with pytest.raises(error):
                bus.subscribe(**kwargs)
            with pytest.raises(error):
                bus.replay(**kwargs)
            assert bus.statistics().subscriptions == ()

    async def test_the_subscription_exposes_its_filter(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(run_id="r1", kinds=[Log, "run.started"]) as sub,
        ):
            flt = sub.filter
        assert isinstance(flt, EventFilter)
        assert flt.run_ids == frozenset({"r1"})
        assert flt.lane_ids is None
        assert flt.kinds == frozenset({"log", "run.started"})
        assert flt.visibility is Visibility.PUBLIC
        assert flt.single_run == "r1"
        assert flt.matches(RunStarted(run_id="r1"))
        assert not flt.matches(RunFinished(run_id="r1"))
        assert not flt.matches(RunStarted(run_id="r2"))
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            flt.visibility = Visibility.PRIVATE  # type: ignore[misc]

    def test_event_filter_defaults_match_public_events(self) -> None:
        flt = EventFilter()
        assert flt.single_run is None
        assert flt.matches(Log(run_id="any", message="m"))
        assert not flt.matches(
            Log(run_id="any", message="m", visibility=Visibility.INTERNAL)
        )
        assert EventFilter(run_ids=frozenset({"a", "b"})).single_run is None

    @given(
        events=st.lists(
            bus_events(classes=(MessageDelta, Log, ToolCall, RunStarted)),
            max_size=30,
        )
    )
    async def test_visibility(self, anyio_backend: str, events: list[Event]) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe() as public,
            bus.subscribe(visibility=Visibility.INTERNAL) as internal,
            bus.subscribe(visibility=Visibility.PRIVATE) as private,
        ):
            for event in events:
                bus.emit(event)
            seen = {
                level: [e.visibility for e in drain(sub)]
                for level, sub in (
                    (Visibility.PUBLIC, public),
                    (Visibility.INTERNAL, internal),
                    (Visibility.PRIVATE, private),
                )
            }
        emitted = [e.visibility for e in events]
        for level, visibilities in seen.items():
            assert visibilities == [v for v in emitted if v <= level]
        assert set(seen[Visibility.PUBLIC]) <= {Visibility.PUBLIC}
        assert set(seen[Visibility.INTERNAL]) <= {
            Visibility.PUBLIC,
            Visibility.INTERNAL,
        }

    @given(
        kwargs=subscribe_kwargs(),
        events=st.lists(
            bus_events(classes=(MessageDelta, Log, ToolCall, RunStarted)),
            max_size=30,
        ),
    )
    async def test_filters_match_what_design_says(
        self, anyio_backend: str, kwargs: dict[str, Any], events: list[Event]
    ) -> None:
        kwargs = {**kwargs, "buffer_size": 100, "gap_events": False}
        async with EventBus() as bus, bus.subscribe(**kwargs) as sub:
            for event in events:
                bus.emit(event)
            received = drain(sub)
            replayed = bus.replay(
                **{k: v for k, v in kwargs.items() if k not in _SUBSCRIBE_ONLY}
            )
        expected = [i + 1 for i, e in enumerate(events) if matches_kwargs(kwargs, e)]
        assert [e.offset for e in received] == expected
        assert [e.offset for e in replayed] == expected
        stats = sub.statistics()
        assert stats.delivered == len(expected)
        assert stats.dropped == 0


_SUBSCRIBE_ONLY = frozenset({"buffer_size", "overflow", "gap_events"})
