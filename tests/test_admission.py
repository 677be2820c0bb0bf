"""Admission: an event is checked once, completely, when it is made; what
exists can be encoded, cannot change afterwards and carries no hidden
reasoning; what is refused leaves no trace in the bus (issue #14, each numbered
case a regression test here, on both backends)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import gc
import math
import pickle
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import pytest
import trio
from helpers import drain, unchecked
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import json_values, non_json_values, spellings

from purpose_bus import (
    DEFAULT_HIDDEN_KEYS,
    Event,
    EventBus,
    EventRejected,
    FrozenDict,
    Log,
    MessageDelta,
    RunFinished,
    ToolCall,
    ToolResult,
    Visibility,
    create_hidden_reasoning_guard,
    decode,
    encode,
    reject_hidden_reasoning,
    thaw,
)

SECRET = "SECRET-raw-reasoning"


@dataclasses.dataclass
class _Point:
    x: int = 1


@attrs.define
class _Box:
    y: int = 2


class TestWrongFieldTypes:
    """Case 1: a wrong field type was stamped and written to history, then
    poisoned every replay and could leave a run without its end."""

    @pytest.mark.parametrize(
        ("make", "field"),
        [
            (lambda: MessageDelta(run_id="r", text=123), "text"),  # type: ignore[arg-type]
            (
                lambda: MessageDelta(run_id="r", text="x", visibility="PUBLIC"),  # type: ignore[arg-type]
                "visibility",
            ),
            (lambda: MessageDelta(run_id=None, text="x"), "run_id"),  # type: ignore[arg-type]
            (lambda: MessageDelta(run_id="r", lane_id=1, text="x"), "lane_id"),  # type: ignore[arg-type]
            (lambda: RunFinished(run_id="r", ts="now"), "ts"),  # type: ignore[arg-type]
            (lambda: RunFinished(run_id="r", parent_span_id=5), "parent_span_id"),  # type: ignore[arg-type]
            (lambda: RunFinished(run_id="r", seq=True), "seq"),
            (lambda: ToolCall(run_id="r", name="t", arguments=[1]), "arguments"),  # type: ignore[arg-type]
        ],
    )
    def test_refused_when_made_naming_kind_and_field(
        self, make: Callable[[], Event], field: str
    ) -> None:
        with pytest.raises(TypeError) as info:
            make()
        assert f"field {field}" in str(info.value)
        assert "event (" in str(info.value)  # the kind and the class

    async def test_a_refusal_leaves_no_trace(self) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r") as sub:
            bus.emit(MessageDelta(run_id="r", text="a"))
            with pytest.raises(TypeError):
                bus.emit(MessageDelta(run_id="r", text=123))  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                bus.emit(RunFinished(run_id="r", visibility="PUBLIC"))  # type: ignore[arg-type]
            bus.emit(MessageDelta(run_id="r", text="b"))
            bus.emit(RunFinished(run_id="r"))
            got = [e async for e in sub]
            assert [(e.seq, e.offset) for e in got] == [(1, 1), (2, 2), (3, 3)]
            stats = sub.statistics()
            assert (stats.delivered, stats.dropped) == (3, 0)
            assert [e.seq for e in bus.replay(run_id="r")] == [1, 2, 3]
            async with bus.subscribe(run_id="r", replay=True) as late:
                assert [e.seq async for e in late] == [1, 2, 3]
            assert bus.statistics().emitted == 3
            assert bus.statistics().rejected == 0

    def test_int_for_a_float_and_a_visibility_value_are_admitted_as_such(
        self,
    ) -> None:
        event = Log(run_id="r", message="m", ts=5, visibility=1)  # type: ignore[arg-type]
        assert type(event.ts) is float
        assert event.visibility is Visibility.INTERNAL
        assert decode(encode(event)) == event


NON_JSON = [
    pytest.param({"when": datetime.datetime(2026, 12, 4)}, TypeError, id="datetime"),
    pytest.param({"s": {1, 2}}, TypeError, id="set"),
    pytest.param({"b": b"raw"}, TypeError, id="bytes"),
    pytest.param({"o": object()}, TypeError, id="object"),
    pytest.param({"p": _Point()}, TypeError, id="dataclass"),
    pytest.param({"a": _Box()}, TypeError, id="attrs"),
    pytest.param({"n": [1, {"x": math.nan}]}, ValueError, id="nan"),
    pytest.param({"i": (math.inf,)}, ValueError, id="inf"),
    pytest.param({"k": {1: "x"}}, TypeError, id="int-key"),
    pytest.param({"big": 10**5000}, ValueError, id="huge-int"),
]


class TestValuesJsonCannotCarry:
    """Case 2: such values were delivered in-process, then skipped by SSE and
    dropped by the bridge without a word."""

    @pytest.mark.parametrize(("payload", "error"), NON_JSON)
    def test_refused_in_every_container_field(
        self, payload: dict[str, Any], error: type[Exception]
    ) -> None:
        with pytest.raises(error):
            Log(run_id="r", message="m", payload=payload)
        with pytest.raises(error):
            ToolCall(run_id="r", name="t", arguments=payload)
        with pytest.raises(error):
            ToolResult(run_id="r", name="t", result=[payload])

    @pytest.mark.parametrize(
        "result", [{1, 2}, b"x", object(), _Point(), datetime.date(2026, 1, 1)]
    )
    def test_a_tool_result_of_any_other_type_is_refused(self, result: Any) -> None:
        with pytest.raises(TypeError, match="field result"):
            ToolResult(run_id="r", name="t", result=result)

    async def test_nothing_reaches_the_bus(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            for param in NON_JSON:
                payload, error = param.values
                with pytest.raises(error):  # type: ignore[call-overload]
                    bus.emit(Log(run_id="r", message="m", payload=payload))  # type: ignore[arg-type]
            bus.emit(Log(run_id="r", message="ok"))
            assert [e.offset for e in drain(sub)] == [1]
            assert len(bus.replay()) == 1


class TestClassesWithoutAKind:
    """Case 3: a subclass without a kind of its own was accepted as the run's
    terminal; encode refused it, so other processes never saw the run end."""

    async def test_emit_refuses_it_naming_the_class(self) -> None:
        class MyFinished(RunFinished):
            pass

        async with EventBus() as bus, bus.subscribe(run_id="r") as sub:
            with pytest.raises(TypeError, match="MyFinished cannot be emitted"):
                bus.emit(MyFinished(run_id="r"))
            with pytest.raises(TypeError, match="MyFinished cannot be emitted"):
                await bus.publish(MyFinished(run_id="r"))
            with pytest.raises(TypeError, match="MyFinished cannot be emitted"):
                await anyio.to_thread.run_sync(bus.emit, MyFinished(run_id="r"))
            with pytest.raises(TypeError, match="cannot be emitted"):
                bus.emit(Event(run_id="r"))
            bus.emit(RunFinished(run_id="r"))  # the run still ends, once
            assert [e.kind async for e in sub] == ["run.finished"]
            assert bus.statistics().emitted == 1

    def test_a_subclass_with_a_kind_of_its_own_is_fine(self) -> None:
        class Finished2(RunFinished):
            kind = "test_admission.finished2"

        event = Finished2(run_id="r")
        assert decode(encode(event)) == event


def _mutable_payload() -> dict[str, Any]:
    return {"steps": [1, 2], "meta": {"tags": ["a"]}}


def _mutate(payload: dict[str, Any], arguments: dict[str, Any]) -> None:
    payload["steps"].append(3)
    payload["meta"]["tags"].append("b")
    payload["meta"]["chain_of_thought"] = SECRET
    payload["new"] = 1
    arguments["q"].append("changed")
    arguments["chain_of_thought"] = SECRET


class TestImmutability:
    """Case 4: payloads were held by reference, so the producer's later
    mutation (even one adding chain_of_thought after the guard ran) changed
    what subscribers, replay, encode, SSE and Redis saw."""

    @pytest.mark.parametrize("where", ["loop", "thread"])
    async def test_the_producer_mutating_after_emit_changes_nothing(
        self, where: str
    ) -> None:
        payload = _mutable_payload()
        arguments: dict[str, Any] = {"q": ["x"]}
        event = ToolCall(run_id="r", name="t", payload=payload, arguments=arguments)
        expected = encode(event)
        async with EventBus() as bus, bus.subscribe() as sub:
            if where == "loop":
                bus.emit(event)
            else:
                await anyio.to_thread.run_sync(bus.emit, event)
            _mutate(payload, arguments)  # before the loop took it, from a thread
            with anyio.fail_after(10):
                got = await sub.receive()
            _mutate(payload, arguments)
            assert got.payload == {"steps": (1, 2), "meta": {"tags": ("a",)}}
            assert isinstance(got, ToolCall)
            assert got.arguments == {"q": ("x",)}
            assert encode(event) == expected
            assert bus.replay()[0].payload == got.payload
            assert encode(got).replace(
                b'"seq":1,"offset":1', b'"seq":0,"offset":0'
            ) == (expected)

    def test_a_consumer_cannot_change_what_others_hold(self) -> None:
        event = Log(run_id="r", message="m", payload={"a": {"b": [1]}})
        payload: Any = event.payload
        changes: list[Callable[[], object]] = [
            lambda: payload.__setitem__("x", 1),
            lambda: payload.__delitem__("a"),
            lambda: payload.update(x=1),
            lambda: payload.setdefault("x", 1),
            lambda: payload.pop("a"),
            lambda: payload.popitem(),
            lambda: payload.clear(),
            lambda: payload["a"].__ior__({"x": 1}),
        ]
        for change in changes:
            with pytest.raises(TypeError, match="read-only"):
                change()
        with pytest.raises(AttributeError):
            payload["a"]["b"].append(2)  # a tuple
        assert payload == {"a": {"b": (1,)}}

    def test_copies_are_the_same_value_and_pickle_is_refused(self) -> None:
        event = Log(run_id="r", message="m", payload={"a": [1, {"b": 2}]})
        assert copy.copy(event.payload) is event.payload
        assert copy.deepcopy(event.payload) is event.payload
        assert copy.deepcopy(event) == event
        with pytest.raises(TypeError, match="not pickled"):
            pickle.dumps(event.payload)
        assert hash(event.payload) == hash(FrozenDict({"a": [1, {"b": 2}]}))

    def test_thaw_gives_plain_mutable_copies(self) -> None:
        event = Log(run_id="r", message="m", payload={"a": [1, {"b": (2,)}]})
        plain = thaw(event.payload)
        assert plain == {"a": [1, {"b": [2]}]}
        assert type(plain["a"][1]) is dict
        plain["a"].append(3)
        assert event.payload == {"a": (1, {"b": (2,)})}

    def test_a_structure_shared_twice_is_copied_not_aliased(self) -> None:
        shared = [1]
        event = Log(run_id="r", message="m", payload={"x": shared, "y": shared})
        shared.append(2)
        assert event.payload == {"x": (1,), "y": (1,)}


class TestHiddenReasoning:
    """Case 5: field names were never looked at, the key set missed today's
    names for raw reasoning, and other spellings passed."""

    def test_a_class_with_a_hidden_reasoning_field_name_is_refused(self) -> None:
        for name in ("chain_of_thought", "Reasoning_Content", "thinking", "cot"):
            with pytest.raises(TypeError, match="hidden-reasoning key"):
                attrs.frozen(kw_only=True)(
                    type(
                        f"Leaky_{name}",
                        (Event,),
                        {
                            "kind": f"test_admission.leaky.{name}",
                            "__annotations__": {name: str},
                        },
                    )
                )

    @pytest.mark.parametrize(
        "key",
        [
            "reasoning",
            "reasoning_content",
            "reasoning_details",
            "thinking",
            "redacted_thinking",
            "thought",
            "thoughts",
            "scratchpad",
            "inner_monologue",
            "Chain Of Thought",
            "chain.of.thought",
            "CHAIN-OF-THOUGHT",
            "\uff23\uff2f\uff34",  # full-width COT
            "chain\u200bof\u200bthought",
        ],
    )
    async def test_the_names_model_apis_use_in_any_spelling(self, key: str) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(visibility=Visibility.PRIVATE) as sub,
        ):
            bus.emit(ToolResult(run_id="r", name="t", result=[{"x": {key: SECRET}}]))
            assert drain(sub) == []
            assert bus.statistics().rejected == 1
            assert bus.replay(visibility=Visibility.PRIVATE) == []

    def test_the_whole_default_set_is_documented(self) -> None:
        from pathlib import Path

        readme = (Path(__file__).parents[1] / "README.md").read_text("utf-8")
        for key in DEFAULT_HIDDEN_KEYS:
            assert f"`{key}`" in readme, key

    def test_a_custom_key_set_checks_field_names_too(self) -> None:
        @attrs.frozen(kw_only=True)
        class Notes(Event):
            kind = "test_admission.notes"
            diary: str = ""

        guard = create_hidden_reasoning_guard(["Diary"])
        assert guard(Notes(run_id="r")) is not None
        assert guard(Log(run_id="r", message="m", payload={"di-ary": 1})) is not None
        assert guard(Log(run_id="r", message="m")) is None


def _in_another_loop(
    backend: str, action: Callable[[], object]
) -> BaseException | None:
    """Run *action* inside an event loop of *backend* of its own, in this
    (worker) thread; return what it raised."""
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            action()
        except BaseException as exc:
            raised.append(exc)

    if backend == "trio":
        trio.run(main)
    else:
        asyncio.run(main())
    return raised[0] if raised else None


class TestOtherThreadsAndLoops:
    """Case 6: subscribing from another event loop was accepted, and then the
    subscriber never woke (or the producer's own emit raised inside trio)."""

    @pytest.mark.parametrize("other", ["asyncio", "trio"])
    async def test_subscribe_from_another_loop_raises_at_once(self, other: str) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            raised = await anyio.to_thread.run_sync(
                _in_another_loop, other, lambda: bus.subscribe()
            )
            assert isinstance(raised, RuntimeError)
            assert "event loop the bus runs on" in str(raised)
            bus.emit(Log(run_id="r", message="still fine"))
            assert [e.offset for e in drain(sub)] == [1]

    async def test_entering_and_receiving_from_another_thread_raise(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            made = bus.subscribe()
            bus.emit(Log(run_id="r", message="m"))

            def enter() -> None:
                asyncio.run(made.__aenter__())

            with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                await anyio.to_thread.run_sync(enter)
            with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                await anyio.to_thread.run_sync(sub.receive_nowait)
            with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                await anyio.to_thread.run_sync(lambda: asyncio.run(sub.receive()))
            with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                await anyio.to_thread.run_sync(lambda: asyncio.run(sub.receive_batch()))
            with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                await anyio.to_thread.run_sync(bus.replay)
            assert [e.offset for e in drain(sub)] == [1]  # nothing was taken

    async def test_emitting_from_a_thread_in_its_own_loop_still_works(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            raised = await anyio.to_thread.run_sync(
                _in_another_loop,
                "trio",
                lambda: bus.emit(Log(run_id="r", message="from trio")),
            )
            assert raised is None
            with anyio.fail_after(10):
                assert (await sub.receive()).offset == 1
            assert threading.current_thread() is threading.main_thread()


class TestUnknownKinds:
    """Case 7: ``subscribe(kinds=["token"])`` matched nothing, silently."""

    async def test_an_unknown_kind_string_raises_naming_it(self) -> None:
        async with EventBus() as bus:
            with pytest.raises(ValueError, match="unknown kind 'token'") as info:
                bus.subscribe(kinds=["token"])
            assert "registered_kinds()" in str(info.value)
            with pytest.raises(ValueError, match="unknown kind 'token'"):
                bus.replay(kinds="token")
            async with bus.subscribe(kinds=["message.delta", Log]):
                pass


# -- properties ----------------------------------------------------------------


def _builds_from(value: Any) -> dict[str, Callable[[], Event]]:
    return {
        "payload": lambda: Log(run_id="r", message="m", payload={"v": value}),
        "arguments": lambda: ToolCall(run_id="r", name="t", arguments={"v": value}),
        "result": lambda: ToolResult(run_id="r", name="t", result=value),
    }


def _unchecked_from(value: Any) -> dict[str, Event]:
    return {
        "payload": unchecked(Log(run_id="r", message="m"), payload={"v": value}),
        "arguments": unchecked(ToolCall(run_id="r", name="t"), arguments={"v": value}),
        "result": unchecked(ToolResult(run_id="r", name="t"), result=value),
    }


class TestProperties:
    @given(
        values=st.lists(
            st.one_of(json_values(), non_json_values()), min_size=1, max_size=6
        ),
        field=st.sampled_from(["payload", "arguments", "result"]),
    )
    async def test_accepted_exactly_when_encodable_and_gapless_after_refusals(
        self, anyio_backend: str, values: list[Any], field: str
    ) -> None:
        """(a) An event can be made (so emitted) exactly when ``encode`` can
        write it; after each refusal the next event's seq follows on. (No
        guard: generated keys may well be "thought".)"""
        async with EventBus(guards=()) as bus, bus.subscribe() as sub:
            accepted = 0
            for value in values:
                try:
                    encode(_unchecked_from(value)[field])
                    encodable = True
                except (TypeError, ValueError):
                    encodable = False
                try:
                    event = _builds_from(value)[field]()
                except (TypeError, ValueError):
                    assert not encodable
                    continue
                assert encodable
                bus.emit(event)
                accepted += 1
            got = drain(sub)
            assert [e.seq for e in got] == list(range(1, accepted + 1))
            assert [e.offset for e in got] == list(range(1, accepted + 1))
            assert bus.statistics().emitted == accepted
            for event in got:
                assert decode(encode(event)) == event

    @given(
        payload=st.dictionaries(st.text(max_size=5), json_values(), max_size=4),
        result=json_values(),
        where=st.sampled_from(["loop", "thread"]),
    )
    async def test_mutating_what_was_passed_in_changes_nothing(
        self, anyio_backend: str, payload: dict[str, Any], result: Any, where: str
    ) -> None:
        """(b) Whatever the producer passed in, mutated after ``emit`` (on the
        loop or from a thread), changes nothing anyone sees."""
        event = ToolResult(run_id="r", name="t", payload=payload, result=result)
        assume(reject_hidden_reasoning(event) is None)  # "cot" is a text too
        before = encode(event)
        async with EventBus() as bus, bus.subscribe() as sub:
            if where == "loop":
                bus.emit(event)
            else:
                await anyio.to_thread.run_sync(bus.emit, event)
            _scramble(payload)
            _scramble(result)
            with anyio.fail_after(10):
                got = await sub.receive()
            _scramble(payload)
            _scramble(result)
            stamped_back = attrs.evolve(got, seq=0, offset=0)
            assert encode(stamped_back) == before
            assert encode(event) == before
            assert bus.replay()[0] == got

    @given(
        key=st.sampled_from(sorted(DEFAULT_HIDDEN_KEYS)).flatmap(spellings),
        depth=st.integers(0, 6),
        field=st.sampled_from(["payload", "arguments", "result"]),
        strict=st.booleans(),
    )
    async def test_a_hidden_key_in_any_spelling_is_rejected(
        self, anyio_backend: str, key: str, depth: int, field: str, strict: bool
    ) -> None:
        """(c) A hidden-reasoning key in any spelling, at any depth, in any
        field is rejected: strict, EventRejected in the caller; non-strict,
        counted; either way nothing delivered or recorded."""
        value: Any = {key: SECRET}
        for level in range(depth):
            value = [value] if level % 2 else {"x": value}
        event = _builds_from(value)[field]()
        async with (
            EventBus(strict=strict) as bus,
            bus.subscribe(visibility=Visibility.PRIVATE) as sub,
        ):
            if strict:
                with pytest.raises(EventRejected):
                    bus.emit(event)
            else:
                bus.emit(event)
            assert drain(sub) == []
            assert bus.replay(visibility=Visibility.PRIVATE) == []
            stats = bus.statistics()
            assert (stats.emitted, stats.rejected) == (0, 1)


def _scramble(value: Any) -> None:
    """Mutate every mutable container in *value*, in place."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _scramble(item)
        value["chain_of_thought"] = SECRET
        value.pop(next(iter(value)), None)
    elif isinstance(value, list):
        for item in value:
            _scramble(item)
        value.append(SECRET)


class TestWhatAHostileProbeFound:
    """Each break a hostile probe of the first version found, as a test."""

    def test_a_mixin_post_init_before_event_does_not_turn_admission_off(
        self,
    ) -> None:
        class Mixin:
            def __attrs_post_init__(self) -> None:
                pass

        @attrs.frozen(kw_only=True)
        class MI(Mixin, Event):
            kind = "test_admission.mi"

        with pytest.raises(TypeError, match="field run_id"):
            MI(run_id=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="datetime is not JSON"):
            MI(run_id="r", payload={"when": datetime.datetime(2026, 1, 1)})

        @attrs.frozen(kw_only=True)
        class NoPostInit(Event):
            kind = "test_admission.no-post-init"
            __attrs_post_init__ = None  # type: ignore[assignment]

        with pytest.raises(TypeError, match="field run_id"):
            NoPostInit(run_id=5)  # type: ignore[arg-type]

    async def test_a_class_whose_making_skips_admission_cannot_be_emitted(
        self,
    ) -> None:
        @attrs.frozen(kw_only=True)
        class Patched(Event):
            kind = "test_admission.patched"

        Patched.__attrs_post_init__ = lambda self: None  # type: ignore[method-assign]
        async with EventBus() as bus:
            with pytest.raises(TypeError, match="does not run admission"):
                bus.emit(Patched(run_id="r"))

    def test_fields_set_by_a_post_init_are_admitted_too(self) -> None:
        @attrs.frozen(kw_only=True)
        class Derived(Event):
            kind = "test_admission.derived"
            raw: str = ""
            parsed: Any = attrs.field(init=False, default=None)

            def __attrs_post_init__(self) -> None:
                super().__attrs_post_init__()
                object.__setattr__(self, "parsed", {"words": self.raw.split()})

        event = Derived(run_id="r", raw="a b")
        assert event.parsed == {"words": ("a", "b")}
        assert type(event.parsed) is FrozenDict
        assert reject_hidden_reasoning(event) is None

        @attrs.frozen(kw_only=True)
        class Leaks(Event):
            kind = "test_admission.leaks"
            raw: str = ""
            parsed: Any = attrs.field(init=False, default=None)

            def __attrs_post_init__(self) -> None:
                object.__setattr__(self, "parsed", {"reasoning": self.raw})

        assert reject_hidden_reasoning(Leaks(run_id="r", raw="secret")) is not None

        @attrs.frozen(kw_only=True)
        class Bad(Event):
            kind = "test_admission.bad-derived"
            at: Any = attrs.field(init=False, default=None)

            def __attrs_post_init__(self) -> None:
                object.__setattr__(self, "at", datetime.datetime(2026, 1, 1))

        with pytest.raises(TypeError, match="datetime"):
            Bad(run_id="r")

    @pytest.mark.parametrize("other", ["asyncio", "trio"])
    async def test_publish_and_aclose_from_another_loop_raise_and_harm_nothing(
        self, other: str
    ) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            event = Log(run_id="r", message="m")

            def publish() -> None:
                coroutine = bus.publish(event)
                try:
                    coroutine.send(None)
                finally:
                    coroutine.close()

            raised = await anyio.to_thread.run_sync(_in_another_loop, other, publish)
            assert isinstance(raised, RuntimeError)
            assert "event loop the bus runs on" in str(raised)

            def close() -> None:
                coroutine = bus.aclose()
                try:
                    coroutine.send(None)
                finally:
                    coroutine.close()

            raised = await anyio.to_thread.run_sync(_in_another_loop, other, close)
            assert isinstance(raised, RuntimeError)
            assert bus.statistics().emitted == 0
            bus.emit(event)
            assert [e.offset for e in drain(sub)] == [1]

    async def test_closing_a_subscription_from_another_thread_raises(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                await anyio.to_thread.run_sync(sub.close)
            bus.emit(Log(run_id="r", message="m"))  # the producer is unharmed
            assert [e.offset for e in drain(sub)] == [1]

    async def test_str_subclasses_become_plain_strings(self) -> None:
        class Liar(str):
            def __eq__(self, other: object) -> bool:
                return True

            def __hash__(self) -> int:
                return hash("victim")

        event = MessageDelta(run_id=Liar("attacker"), text=Liar("t"))
        assert type(event.run_id) is str
        assert type(event.text) is str
        async with EventBus() as bus, bus.subscribe(run_id="victim") as sub:
            bus.emit(event)
            assert drain(sub) == []

    def test_enum_members_json_cannot_carry_are_refused(self) -> None:
        import enum

        class Odd(float, enum.Enum):
            FINE = 1.5
            NAN = math.nan

        @attrs.frozen(kw_only=True)
        class WithOdd(Event):
            kind = "test_admission.with-odd"
            odd: Odd = Odd.FINE

        event = WithOdd(run_id="r")
        assert decode(encode(event)) == event
        with pytest.raises((TypeError, ValueError), match="field odd"):
            WithOdd(run_id="r", odd=Odd.NAN)

    def test_field_names_from_mixins_and_unannotated_fields_are_checked(
        self,
    ) -> None:
        @attrs.define(slots=False)
        class Mixin:
            thinking: str = ""

        def define() -> None:
            @attrs.frozen(kw_only=True)
            class FromMixin(Event, Mixin):
                kind = "test_admission.from-mixin"

            FromMixin(run_id="r")

        with pytest.raises(TypeError, match="hidden-reasoning key"):
            define()

        with pytest.raises(TypeError, match="hidden-reasoning key"):

            @attrs.frozen(kw_only=True)
            class Unannotated(Event):  # type: ignore[no-untyped-def]
                kind = "test_admission.unannotated"
                Reasoning = attrs.field(default="")  # type: ignore[var-annotated]

    def test_class_vars_named_like_hidden_keys_are_not_fields(self) -> None:
        from typing import ClassVar

        @attrs.frozen(kw_only=True)
        class Described(Event):
            kind = "test_admission.described"
            reasoning: ClassVar[str] = "why this event exists"

        assert Described(run_id="r").reasoning == "why this event exists"

    def test_unannotated_fields_take_any_json_value(self) -> None:
        @attrs.frozen(kw_only=True)
        class Loose(Event):  # type: ignore[no-untyped-def]
            kind = "test_admission.loose"
            x = attrs.field(default=None)  # type: ignore[var-annotated]
            n = attrs.field(default=0, type=int)

        assert Loose(run_id="r", x=[1]).x == (1,)
        with pytest.raises(TypeError, match="field n"):
            Loose(run_id="r", n="1")  # type: ignore[arg-type]

    def test_the_envelope_keeps_its_types_whatever_a_subclass_says(self) -> None:
        @attrs.frozen(kw_only=True)
        class Redeclared(Event):
            kind = "test_admission.redeclared"
            run_id: int = 0  # type: ignore[assignment]

        with pytest.raises(TypeError, match="field run_id: expected str"):
            Redeclared(run_id=5)

    def test_a_class_that_lost_its_kind_to_another_stops_being_emittable(
        self,
    ) -> None:
        from purpose_bus._admission import check_emittable

        def make() -> type[Event]:
            @attrs.frozen(kw_only=True)
            class Again(Event):
                kind = "test_admission.again"

            return Again

        first = make()
        check_emittable(first)
        second = make()  # same module and name: it takes the kind over
        check_emittable(second)
        with pytest.raises(TypeError, match="no registered kind"):
            check_emittable(first)

    def test_a_str_subclass_key_cannot_poison_the_normal_forms(self) -> None:
        # A key whose hash is that of "cot" and that equals everything: were
        # normal forms looked up by it, it would take the place of "cot" (then
        # "cot" passes every guard) or borrow its normal form (then a guard
        # made from it rejects "cot").
        class Poison(str):
            def __hash__(self) -> int:
                return hash("cot")

            def __eq__(self, other: object) -> bool:
                return True

        def log(key: str) -> Log:
            return Log(run_id="r", message="m", payload={key: 1})

        def check() -> None:
            guard = create_hidden_reasoning_guard([Poison("harmless")])
            assert guard(log("harmless")) is not None
            assert guard(log("cot")) is None
            assert reject_hidden_reasoning(log("cot")) is not None

        check()  # while the normal form of "cot" is known
        # More fresh keys than the normal forms kept (they are forgotten all at
        # once when too many), so that of "cot" is to be worked out again.
        create_hidden_reasoning_guard(f"flood-{i}" for i in range(1 << 17))
        check()

    def test_huge_keys_cost_time_never_memory(self) -> None:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(20):
                huge = f"{i}" + "k" * 100_000
                event = Log(run_id="r", message="m", payload={huge: 1})
                assert reject_hidden_reasoning(event) is None
            del event, huge
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert kept < 500_000  # kept with their normal forms, they would take 4 MB

    def test_invisible_hangul_fillers_are_removed(self) -> None:
        for filler in "\u115f\u1160\u3164\uffa0":
            key = f"chain{filler}of{filler}thought"
            assert reject_hidden_reasoning(
                Log(run_id="r", message="m", payload={key: 1})
            )

    def test_a_class_without_a_kind_in_kinds_is_named(self) -> None:
        class MyFinished(RunFinished):
            pass

        with pytest.raises(TypeError, match="MyFinished has no kind of its own"):
            EventBus().subscribe(kinds=[MyFinished])


class TestPastAdmission:
    """What only ``object.__setattr__`` on a frozen event can do: the guard
    still searches a value that is not frozen, the slow way."""

    @pytest.mark.parametrize(
        "value",
        [{"chain_of_thought": 1}, [{"x": {"Thinking": 1}}], {"a": [{"cot": 1}]}],
    )
    def test_the_guard_searches_values_that_are_not_frozen(self, value: Any) -> None:
        event = unchecked(ToolResult(run_id="r", name="t"), result=value)
        assert reject_hidden_reasoning(event) is not None
        event = unchecked(Log(run_id="r", message="m"), payload={"v": value})
        assert reject_hidden_reasoning(event) is not None


class TestCostOfNesting:
    """A review found that every nested mapping kept the key set of all below
    it: 250 levels around 20,000 keys held hundreds of MB (through Redis, a
    1 MB forged entry stalled a reader for seconds). Now the outermost mapping
    of a field keeps one set; the ones inside work theirs out when asked."""

    def test_deep_nesting_around_many_keys_holds_one_key_set(self) -> None:
        import tracemalloc

        value: Any = {f"k{i}": 0 for i in range(2_000)}
        for _ in range(250):
            value = {"n": value}
        data = encode(Log(run_id="r", message="m", payload=value))
        tracemalloc.start()
        try:
            event = decode(data)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held < 4_000_000  # one set of 2,000 keys, not 250 of them
        assert reject_hidden_reasoning(event) is None
        inner = event.payload
        for _ in range(100):
            inner = inner["n"]
        assert isinstance(inner, FrozenDict)
        assert "k1999" in inner.normal_keys()
        hidden = {"n": {"x": {"Chain-Of-Thought": 1}}}
        reused = Log(
            run_id="r",
            message="m",
            payload=decode(
                encode(Log(run_id="r", message="m", payload={"a": hidden}))
            ).payload["a"],
        )
        assert reject_hidden_reasoning(reused) is not None
