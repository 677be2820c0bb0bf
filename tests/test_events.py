"""Tests of the event model: the Event envelope, the built-in vocabulary, the kind
registry, Visibility, and stamping."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from attrs.exceptions import FrozenInstanceError
from hypothesis import given
from hypothesis import strategies as st
from strategies import BUILTIN_EVENT_CLASSES, events

import purpose_bus
from purpose_bus import (
    Event,
    EventsDropped,
    FrozenDict,
    LaneFinished,
    LaneStarted,
    Log,
    MessageDelta,
    ReasoningSummary,
    RunCancelled,
    RunError,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    ToolCall,
    ToolResult,
    Visibility,
    event_class,
    registered_kinds,
)
from purpose_bus._events import stamped

#: DESIGN.md's vocabulary: class, kind, terminal, required fields of its own.
VOCABULARY: list[tuple[type[Event], str, bool, dict[str, Any]]] = [
    (RunStarted, "run.started", False, {}),
    (RunFinished, "run.finished", True, {}),
    (RunError, "run.error", True, {"error": "boom"}),
    (RunCancelled, "run.cancelled", True, {}),
    (LaneStarted, "lane.started", False, {}),
    (LaneFinished, "lane.finished", False, {}),
    (StepStarted, "step.started", False, {}),
    (StepFinished, "step.finished", False, {}),
    (MessageDelta, "message.delta", False, {"text": "Hel"}),
    (ToolCall, "tool.call", False, {"name": "search"}),
    (ToolResult, "tool.result", False, {"name": "search"}),
    (ReasoningSummary, "reasoning.summary", False, {"summary": "compared two"}),
    (Log, "log", False, {"message": "hello"}),
    (
        EventsDropped,
        "events.dropped",
        False,
        {"count": 3, "first_offset": 4, "last_offset": 6},
    ),
]


class TestEvent:
    def test_frozen(self) -> None:
        event = Event(run_id="r")
        with pytest.raises(FrozenInstanceError):
            event.run_id = "other"  # type: ignore[misc]
        with pytest.raises(FrozenInstanceError):
            event.seq = 1  # type: ignore[misc]
        assert event.run_id == "r"
        assert event.seq == 0

    def test_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            Event("r")  # type: ignore[call-arg]

    def test_run_id_required(self) -> None:
        with pytest.raises(TypeError, match="run_id"):
            Event()  # type: ignore[call-arg]

    def test_defaults(self) -> None:
        event = Event(run_id="r")
        assert event.lane_id == "main"
        assert event.visibility is Visibility.PUBLIC
        assert event.payload == {}
        assert event.parent_span_id is None
        assert event.seq == 0
        assert event.offset == 0

    def test_default_payload_is_read_only(self) -> None:
        payload = Event(run_id="r").payload
        assert isinstance(payload, FrozenDict)
        with pytest.raises(TypeError):
            payload["x"] = 1
        assert Event(run_id="s").payload == {}

    def test_fields_as_given(self) -> None:
        event = Event(
            run_id="r",
            lane_id="lane-1",
            visibility=Visibility.PRIVATE,
            payload={"a": 1},
            span_id="span",
            parent_span_id="parent",
            ts=12.5,
            seq=3,
            offset=9,
        )
        assert attrs.asdict(event, recurse=False) == {
            "run_id": "r",
            "lane_id": "lane-1",
            "visibility": Visibility.PRIVATE,
            "payload": {"a": 1},
            "span_id": "span",
            "parent_span_id": "parent",
            "ts": 12.5,
            "seq": 3,
            "offset": 9,
        }

    def test_span_id_unique(self) -> None:
        made = [cls(run_id="r", **own) for cls, _, _, own in VOCABULARY * 100]
        span_ids = {event.span_id for event in made}
        assert len(span_ids) == len(made)
        assert all(isinstance(span_id, str) and span_id for span_id in span_ids)

    def test_ts_set_at_creation(self) -> None:
        before = time.time()
        event = Event(run_id="r")
        after = time.time()
        assert isinstance(event.ts, float)
        assert before <= event.ts <= after

    def test_value_equality(self) -> None:
        fields: dict[str, Any] = {"run_id": "r", "span_id": "s", "ts": 1.0}
        assert Log(message="m", **fields) == Log(message="m", **fields)
        assert Log(message="m", **fields) != Log(message="n", **fields)
        other: Event = RunError(error="m", **fields)
        assert Log(message="m", **fields) != other

    def test_subclass_without_kind_has_none(self) -> None:
        @attrs.frozen(kw_only=True)
        class Intermediate(Event):
            pass

        assert "kind" not in vars(Intermediate)
        assert Intermediate not in registered_kinds().values()


class TestBuiltinEvents:
    @pytest.mark.parametrize(
        ("cls", "kind", "terminal", "own"), VOCABULARY, ids=[v[1] for v in VOCABULARY]
    )
    def test_kind_and_terminal(
        self, cls: type[Event], kind: str, terminal: bool, own: dict[str, Any]
    ) -> None:
        assert cls.kind == kind
        assert cls.terminal is terminal
        assert event_class(kind) is cls
        event = cls(run_id="r", **own)
        assert event.kind == kind
        assert event.terminal is terminal

    @pytest.mark.parametrize(
        ("cls", "own"),
        [(cls, own) for cls, _, _, own in VOCABULARY if own],
        ids=lambda value: getattr(value, "kind", ""),
    )
    def test_required_fields(self, cls: type[Event], own: dict[str, Any]) -> None:
        for name in own:
            partial = {key: value for key, value in own.items() if key != name}
            with pytest.raises(TypeError, match=name):
                cls(run_id="r", **partial)

    def test_exactly_three_terminal_kinds(self) -> None:
        terminal = {cls for cls in BUILTIN_EVENT_CLASSES if cls.terminal}
        assert terminal == {RunFinished, RunError, RunCancelled}

    def test_vocabulary_is_complete(self) -> None:
        assert {v[0] for v in VOCABULARY} == set(BUILTIN_EVENT_CLASSES)
        for cls in BUILTIN_EVENT_CLASSES:
            assert getattr(purpose_bus, cls.__name__) is cls
            assert issubclass(cls, Event)

    def test_optional_fields(self) -> None:
        assert RunCancelled(run_id="r").reason == ""
        assert StepStarted(run_id="r").name == ""
        assert StepFinished(run_id="r").name == ""
        assert ToolCall(run_id="r", name="t").arguments == {}
        assert ToolResult(run_id="r", name="t").result is None
        assert Log(run_id="r", message="m").level == "info"


class TestRegistry:
    def test_builtin_kinds_registered(self) -> None:
        kinds = registered_kinds()
        for cls, kind, _, _ in VOCABULARY:
            assert kinds[kind] is cls

    def test_registry_view_is_read_only(self) -> None:
        kinds: Any = registered_kinds()
        with pytest.raises(TypeError):
            kinds["x"] = Event

    def test_unknown_kind(self) -> None:
        with pytest.raises(KeyError):
            event_class("no.such.kind")

    def test_duplicate_kind_names_both_classes(self) -> None:
        with pytest.raises(TypeError) as info:

            @attrs.frozen(kw_only=True)
            class Impostor(Event):
                kind = "run.started"

        message = str(info.value)
        assert "'run.started'" in message
        assert "Impostor" in message
        assert "purpose_bus._events.RunStarted" in message
        assert event_class("run.started") is RunStarted

    def test_user_subclass_registers(self) -> None:
        @attrs.frozen(kw_only=True)
        class Deployed(Event):
            kind = "test.events.deployed"
            service: str

        # the class attrs made (not the one it replaced) is the one registered
        assert event_class("test.events.deployed") is Deployed
        assert registered_kinds()["test.events.deployed"] is Deployed
        event = Deployed(run_id="r", service="api")
        assert event.kind == "test.events.deployed"
        assert event.terminal is False

    def test_user_terminal_subclass(self) -> None:
        @attrs.frozen(kw_only=True)
        class Aborted(Event):
            kind = "test.events.aborted"
            terminal = True

        assert Aborted.terminal is True
        assert event_class("test.events.aborted") is Aborted

    def test_subclass_of_intermediate_registers(self) -> None:
        @attrs.frozen(kw_only=True)
        class Base(Event):
            source: str = "test"

        @attrs.frozen(kw_only=True)
        class Concrete(Base):
            kind = "test.events.concrete"

        assert event_class("test.events.concrete") is Concrete
        assert Base not in registered_kinds().values()

    @pytest.mark.parametrize("kind", ["", 1])
    def test_invalid_kind(self, kind: Any) -> None:
        with pytest.raises(TypeError, match="non-empty string"):
            type("Bad", (Event,), {"kind": kind})


class TestVisibility:
    def test_order(self) -> None:
        assert Visibility.PUBLIC < Visibility.INTERNAL < Visibility.PRIVATE
        assert sorted(Visibility, reverse=True) == [
            Visibility.PRIVATE,
            Visibility.INTERNAL,
            Visibility.PUBLIC,
        ]

    def test_is_an_int_enum(self) -> None:
        assert [int(v) for v in Visibility] == [0, 1, 2]
        assert Visibility(1) is Visibility.INTERNAL
        assert Visibility.INTERNAL <= 1

    def test_subscriber_rule(self) -> None:
        # a subscriber at level L receives the events whose visibility is <= L
        seen = {level: [v for v in Visibility if v <= level] for level in Visibility}
        assert seen[Visibility.PUBLIC] == [Visibility.PUBLIC]
        assert seen[Visibility.PRIVATE] == list(Visibility)


class TestStamped:
    @given(events(), st.integers(1, 2**53), st.integers(1, 2**53))
    def test_equals_evolve(self, event: Event, seq: int, offset: int) -> None:
        before = attrs.asdict(event, recurse=False)
        copy = stamped(event, seq, offset)
        assert copy == attrs.evolve(event, seq=seq, offset=offset)
        assert copy is not event
        assert type(copy) is type(event)
        assert (copy.seq, copy.offset) == (seq, offset)
        assert attrs.asdict(event, recurse=False) == before  # untouched

    def test_keeps_other_fields_and_identity_of_payload(self) -> None:
        payload: Mapping[str, Any] = {"a": [1]}
        event = ToolCall(run_id="r", name="t", payload=payload, arguments={"q": 1})
        copy = stamped(event, 2, 7)
        assert copy.payload is event.payload  # frozen when made: shared
        assert copy.payload == {"a": (1,)}
        assert copy.name == "t"
        assert copy.arguments == {"q": 1}
        assert copy.span_id == event.span_id
        assert copy.ts == event.ts

    def test_copy_is_frozen(self) -> None:
        copy = stamped(Event(run_id="r"), 1, 1)
        with pytest.raises(FrozenInstanceError):
            copy.seq = 2  # type: ignore[misc]

    def test_user_subclass(self) -> None:
        @attrs.frozen(kw_only=True)
        class Metric(Event):
            kind = "test.events.metric"
            value: float

        event = Metric(run_id="r", value=1.5)
        copy = stamped(event, 4, 5)
        assert copy == attrs.evolve(event, seq=4, offset=5)
        assert event.seq == 0
        assert event.offset == 0
