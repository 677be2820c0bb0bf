"""Tests of the guards: :func:`purpose_bus.create_hidden_reasoning_guard`, the
default :data:`purpose_bus.reject_hidden_reasoning`, and how the bus applies
guards (strict and not, guards that raise)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
import pytest
from helpers import drain
from hypothesis import given
from hypothesis import strategies as st

from purpose_bus import (
    DEFAULT_HIDDEN_KEYS,
    Event,
    EventBus,
    EventRejected,
    Log,
    MessageDelta,
    ReasoningSummary,
    ToolCall,
    ToolResult,
    Visibility,
    create_hidden_reasoning_guard,
    reject_hidden_reasoning,
)


@attrs.frozen(kw_only=True)
class Annotated(Event):
    """A user-defined event with a sequence field of its own."""

    kind = "test_guards.annotated"

    notes: tuple[Any, ...] = ()


def nested(depth: int, leaf: Mapping[str, Any]) -> Mapping[str, Any]:
    """*leaf* under *depth* levels of alternating dicts and lists."""
    value: Any = leaf
    for level in range(depth):
        value = {"level": value} if level % 2 else [value]
    return {"data": value}


def hidden(key: str = "chain_of_thought") -> MessageDelta:
    return MessageDelta(run_id="r1", text="", payload={key: "step 1, step 2"})


class TestHiddenReasoningGuard:
    @pytest.mark.parametrize("key", sorted(DEFAULT_HIDDEN_KEYS))
    def test_default_keys_are_rejected(self, key: str) -> None:
        reason = reject_hidden_reasoning(hidden(key))
        assert isinstance(reason, str)
        assert reason

    @pytest.mark.parametrize(
        "key", ["Chain_Of_Thought", "HIDDEN_REASONING", "CoT", "THINKING"]
    )
    def test_keys_match_in_any_casing(self, key: str) -> None:
        assert reject_hidden_reasoning(hidden(key)) is not None

    def test_the_expected_keys_are_in_the_default_set(self) -> None:
        assert {"chain_of_thought", "hidden_reasoning"} <= DEFAULT_HIDDEN_KEYS

    @pytest.mark.parametrize(
        "event",
        [
            pytest.param(
                Log(run_id="r1", message="m", payload=nested(5, {"cot": 1})),
                id="payload-nested",
            ),
            pytest.param(
                Log(
                    run_id="r1",
                    message="m",
                    payload=MappingProxyType({"x": ({"hidden_reasoning": 1},)}),
                ),
                id="payload-read-only-and-tuple",
            ),
            pytest.param(
                ToolCall(run_id="r1", name="t", arguments={"Chain_Of_Thought": "."}),
                id="tool-arguments",
            ),
            pytest.param(
                ToolCall(run_id="r1", name="t", arguments=nested(4, {"thinking": 1})),
                id="tool-arguments-nested",
            ),
            pytest.param(
                ToolResult(run_id="r1", name="t", result=[1, {"COT": "x"}]),
                id="tool-result-list",
            ),
            pytest.param(
                ToolResult(run_id="r1", name="t", result={"raw_reasoning": None}),
                id="tool-result-dict",
            ),
            pytest.param(
                Annotated(run_id="r1", notes=("a", [{"k": {"cot": 1}}])),
                id="custom-field",
            ),
        ],
    )
    def test_hidden_keys_anywhere_are_rejected(self, event: Event) -> None:
        assert reject_hidden_reasoning(event) is not None

    @pytest.mark.parametrize("depth", [50, 99, 150, 254])
    def test_hidden_keys_at_any_depth_are_rejected(self, depth: int) -> None:
        event = Log(run_id="r1", message="m", payload=nested(depth, {"cot": "."}))
        assert reject_hidden_reasoning(event) is not None

    def test_deeper_than_json_carries_is_refused_when_made(self) -> None:
        with pytest.raises(ValueError, match="nested too deeply"):
            Log(run_id="r1", message="m", payload=nested(500, {"cot": "."}))

    @pytest.mark.parametrize(
        "event",
        [
            pytest.param(MessageDelta(run_id="r1", text="chain_of_thought"), id="text"),
            pytest.param(
                Log(run_id="r1", message="m", payload={"note": "chain_of_thought"}),
                id="as-a-value",
            ),
            pytest.param(
                Log(run_id="r1", message="m", payload={"chain_of_thoughts": 1}),
                id="a-longer-key",
            ),
            pytest.param(
                ToolResult(run_id="r1", name="t", result=["cot", ["thinking"]]),
                id="in-a-list",
            ),
            pytest.param(ReasoningSummary(run_id="r1", summary="why"), id="summary"),
            pytest.param(
                Log(run_id="r1", message="m", payload=nested(30, {"ok": 1})),
                id="deep-but-clean",
            ),
        ],
    )
    def test_clean_events_pass(self, event: Event) -> None:
        assert reject_hidden_reasoning(event) is None

    @given(
        key=st.sampled_from(sorted(DEFAULT_HIDDEN_KEYS)),
        flips=st.lists(st.booleans(), min_size=20, max_size=20),
        depth=st.integers(0, 12),
    )
    def test_any_casing_at_any_depth(
        self, key: str, flips: list[bool], depth: int
    ) -> None:
        cased = "".join(
            c.upper() if flip else c.lower()
            for c, flip in zip(key, flips, strict=False)
        )
        event = ToolCall(run_id="r1", name="t", arguments=nested(depth, {cased: 1}))
        assert reject_hidden_reasoning(event) is not None

    def test_the_key_set_is_configurable(self) -> None:
        guard = create_hidden_reasoning_guard(["Secret", "scratchpad"])
        assert guard(Log(run_id="r1", message="m", payload={"SECRET": 1})) is not None
        assert guard(Log(run_id="r1", message="m", payload={"scratchPad": 1}))
        assert guard(hidden("chain_of_thought")) is None

    def test_an_empty_key_set_is_refused(self) -> None:
        with pytest.raises(ValueError):  # noqa: PT011  (any message)
            create_hidden_reasoning_guard([])


class TestGuardsOnTheBus:
    async def test_a_rejected_event_reaches_nobody(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe() as public,
            bus.subscribe(visibility=Visibility.PRIVATE) as private,
        ):
            bus.emit(MessageDelta(run_id="r1", text="1"))
            with caplog.at_level(logging.WARNING, logger="purpose_bus"):
                assert bus.emit(hidden()) is None  # type: ignore[func-returns-value]
                assert await bus.publish(hidden("thinking")) is None
                secret = ToolCall(
                    run_id="r1",
                    name="t",
                    arguments={"cot": 1},
                    visibility=Visibility.PRIVATE,
                )
                assert await bus.publish(secret) is None
            published = await bus.publish(MessageDelta(run_id="r1", text="2"))
            assert published is not None
            assert published.seq == 2
            stats = bus.statistics()
            assert (stats.emitted, stats.rejected, stats.history) == (2, 3, 2)
            assert [e.offset for e in drain(public)] == [1, 2]
            assert [e.offset for e in drain(private)] == [1, 2]
            assert len(bus.replay(visibility=Visibility.PRIVATE)) == 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 3

    async def test_strict_raises_event_rejected(self) -> None:
        async with EventBus(strict=True) as bus, bus.subscribe() as sub:
            with pytest.raises(EventRejected) as info:
                bus.emit(hidden())
            assert isinstance(info.value, ValueError)
            assert "chain_of_thought" in info.value.reason
            with pytest.raises(EventRejected):
                await bus.publish(hidden())
            assert bus.statistics().rejected == 2
            assert bus.statistics().emitted == 0
            assert drain(sub) == []

    async def test_no_guards(self) -> None:
        async with EventBus(guards=()) as bus, bus.subscribe() as sub:
            bus.emit(hidden())
            assert len(drain(sub)) == 1

    async def test_a_configured_key_set_on_the_bus(self) -> None:
        guard = create_hidden_reasoning_guard({"scratchpad"})
        async with (
            EventBus(guards=(guard,), strict=True) as bus,
            bus.subscribe() as sub,
        ):
            with pytest.raises(EventRejected):
                bus.emit(
                    ToolResult(run_id="r1", name="t", result=[{"ScratchPad": "."}])
                )
            bus.emit(hidden("chain_of_thought"))  # not in this key set
            assert [e.kind for e in drain(sub)] == ["message.delta"]
            assert bus.statistics().rejected == 1

    async def test_custom_guards_see_the_unstamped_event(self) -> None:
        seen: list[Event] = []

        def spy(event: Event) -> str | None:
            seen.append(event)
            return None

        def no_logs(event: Event) -> str | None:
            return "no logs here" if isinstance(event, Log) else None

        async with (
            EventBus(guards=(spy, no_logs), strict=True) as bus,
            bus.subscribe() as sub,
        ):
            original = MessageDelta(run_id="r1", text="1")
            bus.emit(original)
            with pytest.raises(EventRejected, match="no logs here"):
                bus.emit(Log(run_id="r1", message="m"))
            bus.emit(hidden())  # the default guard is replaced
            assert len(drain(sub)) == 2
        assert seen[0] is original
        assert len(seen) == 3

    async def test_a_guard_that_raises_rejects_the_event_and_the_bus_goes_on(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(event: Event) -> str | None:
            if isinstance(event, Log):
                raise RuntimeError("guard bug")
            return None

        async with EventBus(guards=(broken,)) as bus, bus.subscribe() as sub:
            with caplog.at_level(logging.WARNING, logger="purpose_bus"):
                bus.emit(Log(run_id="r1", message="m"))
                assert await bus.publish(Log(run_id="r1", message="m")) is None
            bus.emit(MessageDelta(run_id="r1", text="after"))
            assert [e.kind for e in drain(sub)] == ["message.delta"]
            stats = bus.statistics()
            assert (stats.emitted, stats.rejected) == (1, 2)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 2
        assert all(r.exc_info is not None for r in errors)
        assert "guard bug" in caplog.text

    async def test_a_guard_that_raises_on_a_strict_bus(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(event: Event) -> str | None:
            raise RuntimeError("guard bug")

        async with EventBus(guards=(broken,), strict=True) as bus:
            with (
                caplog.at_level(logging.ERROR, logger="purpose_bus"),
                pytest.raises(EventRejected),
            ):
                bus.emit(Log(run_id="r1", message="m"))
            assert bus.statistics().rejected == 1
        assert "guard bug" in caplog.text

    def test_guards_must_be_callable(self) -> None:
        with pytest.raises(TypeError):
            EventBus(guards=("not a guard",))  # type: ignore[arg-type]


class TestAnySequence:
    """Regression: the guard looked only into lists, tuples and sets. Now a
    container JSON cannot carry never gets into an event: admission refuses it
    when the event is made, so the guard has nothing left unsearched."""

    def test_deque_userlist_and_mapping_views_are_refused_when_made(self) -> None:
        import collections

        for container in (collections.deque, collections.UserList):
            with pytest.raises(TypeError, match="is not JSON-compatible"):
                Log(run_id="r", message="m", payload={"s": container([{"COT": 1}])})
        with pytest.raises(TypeError, match="dict_values is not JSON-compatible"):
            Log(
                run_id="r",
                message="m",
                payload={"s": {"a": {"x": {"cot": 1}}}.values()},
            )
