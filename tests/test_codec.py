"""Tests of the JSON codec: purpose_bus.encode and purpose_bus.decode."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs
import pytest
from helpers import unchecked
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import BUILTIN_EVENT_CLASSES, events, json_values, payloads

from purpose_bus import (
    MAX_DECODE_BYTES,
    DecodeError,
    Event,
    EventsDropped,
    FrozenDict,
    Log,
    PurposeBusError,
    RunError,
    RunStarted,
    ToolCall,
    ToolResult,
    Visibility,
    _codec,
    decode,
    encode,
    registered_kinds,
    thaw,
)


@attrs.frozen(kw_only=True)
class Deployed(Event):
    """A user-defined event with fields of every kind the codec understands."""

    kind = "test.codec.deployed"

    service: str
    replicas: int = 1
    config: Mapping[str, Any] = attrs.field(factory=dict)
    region: str | None = None
    ratio: float = 0.5
    canary: bool = False
    tags: tuple[str, ...] = ()
    ports: list[int] = attrs.field(factory=list)
    audience: Visibility = Visibility.INTERNAL
    limits: Mapping[str, int] = attrs.field(factory=dict)
    stage: Literal["dev", "prod"] = "dev"
    note: Any = None


@attrs.frozen(kw_only=True)
class Validated(Event):
    """A user-defined event whose own validator refuses some values."""

    kind = "test.codec.validated"

    size: int = attrs.field(validator=attrs.validators.ge(1))


@attrs.frozen(kw_only=True)
class _Abstract(Event):
    """An intermediate class without a kind of its own: not registered."""


@attrs.frozen(kw_only=True)
class RunErrorVariant(RunError):
    """Inherits RunError's kind without registering it: not encodable."""


def _log(**fields: Any) -> bytes:
    """An encoded log event with *fields* replaced (a value of ``...`` removes
    the field)."""
    data = json.loads(encode(Log(run_id="r", message="hello")))
    data.update(fields)
    kept = {k: v for k, v in data.items() if v is not ...}
    return json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()


def _decode_error(data: bytes | bytearray | memoryview | str, **kwargs: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(data, **kwargs)
    return str(info.value)


class TestRoundTrip:
    @given(events(stamped=True))
    def test_builtin_events(self, event: Event) -> None:
        decoded = decode(encode(event))
        assert decoded == event
        assert type(decoded) is type(event)

    @pytest.mark.parametrize("cls", BUILTIN_EVENT_CLASSES, ids=lambda c: c.kind)
    @given(data=st.data())
    def test_every_builtin_class(self, cls: type[Event], data: st.DataObject) -> None:
        event = data.draw(events(cls))
        assert decode(encode(event)) == event

    @given(events(Deployed, stamped=True))
    def test_user_defined_event(self, event: Deployed) -> None:
        decoded = decode(encode(event))
        assert decoded == event
        assert type(decoded) is Deployed

    @given(payloads())
    def test_arbitrary_payload(self, payload: Mapping[str, Any]) -> None:
        event = Log(run_id="r", message="m", payload=payload)
        decoded = decode(encode(event))
        assert decoded == event
        assert thaw(decoded.payload) == thaw(payload)

    @given(json_values())
    def test_tool_result_holds_any_json_value(self, result: Any) -> None:
        event = ToolResult(run_id="r", name="t", result=result)
        assert decode(encode(event)) == event

    @given(
        st.one_of(events(stamped=True), events(Deployed, stamped=True)),
        st.sampled_from(["as is", "ts as int", "extra key", "missing key"]),
    )
    def test_fast_paths_agree_with_the_general_ones(
        self, event: Event, change: str
    ) -> None:
        """Each class's generated fast paths give what the general paths give,
        or step aside (raise) so that the general path decides."""
        plan = _codec._encoding_plan(event)
        general = {"kind": plan.kind} | {
            f.name: _codec._encode_field(plan.kind, f, getattr(event, f.name))
            for f in plan.fields
        }
        fast = plan.encode_fast(event)
        assert json.loads(json.dumps(fast)) == json.loads(json.dumps(general))
        data = json.loads(json.dumps(general))
        if change == "ts as int":
            data["ts"] = int(data["ts"])
        elif change == "extra key":
            data["extra"] = 1
        elif change == "missing key":
            del data["payload"]  # a default that is the same each time
        try:
            expected: Event | str = _codec._construct(type(event), plan, data)
        except DecodeError as exc:
            expected = str(exc)
        try:
            got: Event | str = plan.decode_fast(data)
        except Exception:
            got = "stepped aside"
        if got != "stepped aside":
            assert got == expected
        try:
            decoded: Event | str = decode(json.dumps(data))
        except DecodeError as exc:
            decoded = str(exc)
        assert decoded == expected

    def test_defaults_round_trip(self) -> None:
        event = RunStarted(run_id="r")
        assert decode(encode(event)) == event

    def test_mappings_come_back_frozen(self) -> None:
        inner = MappingProxyType({"b": MappingProxyType({"c": 1})})
        event = Log(run_id="r", message="m", payload=MappingProxyType({"a": inner}))
        payload = decode(encode(event)).payload
        assert type(payload) is FrozenDict
        assert type(payload["a"]) is FrozenDict
        assert type(payload["a"]["b"]) is FrozenDict
        assert payload == {"a": {"b": {"c": 1}}}
        thawed = thaw(payload)
        assert type(thawed) is dict
        assert type(thawed["a"]["b"]) is dict

    def test_lists_come_back_as_tuples(self) -> None:
        event = Log(run_id="r", message="m", payload={"t": (1, (2, 3)), "l": [4]})
        assert decode(encode(event)).payload == {"t": (1, (2, 3)), "l": (4,)}
        assert thaw(decode(encode(event)).payload) == {"t": [1, [2, 3]], "l": [4]}

    def test_tuple_field_comes_back_as_tuple(self) -> None:
        event = Deployed(run_id="r", service="s", tags=("a", "b"))
        decoded = decode(encode(event))
        assert isinstance(decoded, Deployed)
        assert decoded.tags == ("a", "b")

    def test_visibility_encoded_as_its_int_value(self) -> None:
        event = Log(run_id="r", message="m", visibility=Visibility.PRIVATE)
        assert json.loads(encode(event))["visibility"] == 2
        decoded = decode(encode(event))
        assert decoded.visibility is Visibility.PRIVATE

    def test_int_accepted_for_float_field(self) -> None:
        decoded = decode(_log(ts=1700000000))
        assert decoded.ts == 1700000000.0
        assert type(decoded.ts) is float

    def test_int_ts_encoded_as_float(self) -> None:
        event = Log(run_id="r", message="m", ts=5)
        assert json.loads(encode(event))["ts"] == 5.0
        assert decode(encode(event)) == event

    def test_bytes_like_and_text_input(self) -> None:
        event = Log(run_id="r", message="héllo ✓")
        data = encode(event)
        for form in (data, bytearray(data), memoryview(data), data.decode()):
            assert decode(form) == event

    def test_compact_utf8_output(self) -> None:
        data = encode(Log(run_id="r", message="héllo ✓"))
        assert data.startswith(b'{"kind":"log",')
        assert b" " not in data.replace("héllo ✓".encode(), b"")
        assert "héllo ✓".encode() in data

    def test_every_field_is_written(self) -> None:
        event = RunError(run_id="r", error="boom")
        written = json.loads(encode(event))
        names = {field.name for field in attrs.fields(RunError)}
        assert written.keys() == names | {"kind"}

    def test_lone_surrogate_round_trips(self) -> None:
        event = Log(run_id="r", message="a\ud800b")
        data = encode(event)
        assert data.isascii()
        assert decode(data) == event

    def test_user_subclass_without_attrs_decorator(self) -> None:
        class Plain(RunError):
            kind = "test.codec.plain"

        event = Plain(run_id="r", error="e")
        assert decode(encode(event)) == event

    def test_unresolvable_annotation_accepts_any_json_value(self) -> None:
        class Local:
            pass

        @attrs.frozen(kw_only=True)
        class WithLocal(Event):
            kind = "test.codec.with-local"
            thing: Local | None = None
            count: int = 0

        event = WithLocal(run_id="r", count=3)
        assert decode(encode(event)) == event
        data = json.loads(encode(event))
        assert decode(json.dumps({**data, "thing": [1]})).thing == (1,)  # type: ignore[attr-defined]
        # the other fields are still checked
        assert "run_id" in _decode_error(json.dumps({**data, "run_id": 1}))

    def test_init_false_field_is_neither_written_nor_accepted(self) -> None:
        @attrs.frozen(kw_only=True)
        class Derived(Event):
            kind = "test.codec.derived"
            text: str
            length: int = attrs.field(init=False)

            @length.default
            def _length(self) -> int:
                return len(self.text)

        event = Derived(run_id="r", text="four")
        assert "length" not in json.loads(encode(event))
        assert decode(encode(event)) == event
        data = json.loads(encode(event))
        assert "unknown field 'length'" in _decode_error(
            json.dumps({**data, "length": 4})
        )


class TestDecodeErrors:
    def test_is_a_value_error(self) -> None:
        assert issubclass(DecodeError, ValueError)
        assert issubclass(DecodeError, PurposeBusError)

    @pytest.mark.parametrize("data", [b"", "", bytearray(), memoryview(b"")])
    def test_empty_input(self, data: bytes | str) -> None:
        assert "empty input" in _decode_error(data)

    def test_default_size_limit(self) -> None:
        assert MAX_DECODE_BYTES == 1 << 20
        data = _log()
        at_limit = data + b" " * (MAX_DECODE_BYTES - len(data))
        assert decode(at_limit) == decode(data)
        assert "size limit of 1048576 bytes" in _decode_error(at_limit + b" ")

    def test_configurable_size_limit(self) -> None:
        data = _log()
        assert decode(data, max_size=len(data)) == decode(data)
        assert "size limit" in _decode_error(data, max_size=len(data) - 1)

    def test_size_is_checked_before_parsing(self) -> None:
        assert "size limit" in _decode_error(b"\xff" + b"[" * 100, max_size=100)

    def test_size_of_text_is_its_utf8_length(self) -> None:
        text = _log(message="é" * 10).decode()
        size = len(text.encode())
        assert len(text) < size
        assert decode(text, max_size=size).message == "é" * 10  # type: ignore[attr-defined]
        assert "size limit" in _decode_error(text, max_size=size - 1)

    @pytest.mark.parametrize("max_size", [0, -1])
    def test_invalid_max_size(self, max_size: int) -> None:
        with pytest.raises(ValueError, match="max_size"):
            decode(_log(), max_size=max_size)

    @pytest.mark.parametrize("data", [None, 1, ["{}"], {"kind": "log"}])
    def test_not_bytes_or_text(self, data: Any) -> None:
        with pytest.raises(TypeError, match="expects bytes or str"):
            decode(data)

    @pytest.mark.parametrize(
        "data", [b"\xff", b'{"kind":"log\xc3"}', '{"kind":"log"}'.encode("utf-16")]
    )
    def test_not_utf8(self, data: bytes) -> None:
        assert "not valid UTF-8" in _decode_error(data)

    def test_released_memoryview(self) -> None:
        view = memoryview(_log())
        view.release()
        assert "cannot be read" in _decode_error(view)

    @pytest.mark.parametrize(
        "data",
        [b"{", b"hello", b'{"kind":"log"} extra', b"{'kind': 'log'}", b" ", "\ud800"],
    )
    def test_not_json(self, data: bytes | str) -> None:
        assert "not valid JSON" in _decode_error(data)

    @pytest.mark.parametrize(
        ("data", "got"),
        [
            (b"[]", "an array"),
            (b'"log"', "the string 'log'"),
            (b"1", "the number 1"),
            (b"null", "null"),
            (b"true", "true"),
        ],
    )
    def test_not_an_object(self, data: bytes, got: str) -> None:
        assert _decode_error(data) == f"expected a JSON object, got {got}"

    def test_missing_kind(self) -> None:
        assert "no 'kind'" in _decode_error(_log(kind=...))

    @pytest.mark.parametrize("kind", [1, None, ["log"], {"log": 1}, True])
    def test_kind_not_a_string(self, kind: Any) -> None:
        assert "'kind' must be a string" in _decode_error(_log(kind=kind))

    def test_unknown_kind(self) -> None:
        assert "unknown kind 'no.such.kind'" in _decode_error(_log(kind="no.such.kind"))

    def test_unknown_kind_message_is_short(self) -> None:
        message = _decode_error(_log(kind="x" * 10_000))
        assert "unknown kind" in message
        assert len(message) < 100

    def test_abstract_class_kind_is_unknown(self) -> None:
        assert "unknown kind" in _decode_error(_log(kind="Event"))

    def test_missing_required_field(self) -> None:
        data = json.loads(encode(RunError(run_id="r", error="e")))
        del data["error"]
        message = _decode_error(json.dumps(data))
        assert "'run.error' event: missing required field 'error'" in message

    def test_missing_run_id(self) -> None:
        assert "missing required field 'run_id'" in _decode_error(_log(run_id=...))

    def test_unknown_field(self) -> None:
        assert "'log' event: unknown field 'colour'" in _decode_error(_log(colour=1))

    def test_many_unknown_fields(self) -> None:
        extra = {f"x{i}": i for i in range(20)}
        message = _decode_error(_log(**extra))
        assert "unknown fields" in message
        assert "(and 15 more)" in message

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("run_id", 5, "field run_id: expected str, got the number 5"),
            ("run_id", None, "field run_id: expected str, got null"),
            ("lane_id", ["main"], "field lane_id: expected str, got an array"),
            ("message", {}, "field message: expected str, got an object"),
            ("visibility", 3, "field visibility: expected Visibility"),
            ("visibility", -1, "field visibility: expected Visibility"),
            ("visibility", "PUBLIC", "field visibility: expected Visibility"),
            ("visibility", True, "field visibility: expected Visibility"),
            ("visibility", 1.0, "field visibility: expected Visibility"),
            ("payload", [], "field payload: expected Mapping[str, Any], got an array"),
            ("payload", "x", "field payload: expected Mapping[str, Any]"),
            ("payload", None, "field payload: expected Mapping[str, Any], got null"),
            ("span_id", 7, "field span_id: expected str"),
            ("parent_span_id", 1, "field parent_span_id: expected str"),
            ("ts", "now", "field ts: expected float, got the string 'now'"),
            ("ts", True, "field ts: expected float, got true"),
            ("ts", 10**400, "field ts: expected float (out of range)"),
            ("seq", 1.5, "field seq: expected int, got the number 1.5"),
            ("seq", "1", "field seq: expected int"),
            ("offset", False, "field offset: expected int, got false"),
            ("level", None, "field level: expected str, got null"),
        ],
    )
    def test_wrongly_typed_field(self, field: str, value: Any, message: str) -> None:
        assert message in _decode_error(_log(**{field: value}))

    @pytest.mark.parametrize("field", ["seq", "offset"])
    def test_negative_counter(self, field: str) -> None:
        message = _decode_error(_log(**{field: -1}))
        assert f"field {field}: must not be negative, got the number -1" in message

    def test_wrongly_typed_builtin_fields(self) -> None:
        base = json.loads(_log())
        del base["message"], base["level"]
        dropped = {**base, "kind": "events.dropped", "first_offset": 1}
        bad = json.dumps({**dropped, "count": "3", "last_offset": 3})
        assert "field count: expected int" in _decode_error(bad)
        call = {**base, "kind": "tool.call", "name": "t", "arguments": [1]}
        assert "field arguments: expected Mapping" in _decode_error(json.dumps(call))

    def test_wrongly_typed_user_fields(self) -> None:
        good = json.loads(encode(Deployed(run_id="r", service="s")))
        cases = {
            "replicas": ("2", "expected int"),
            "region": (1, "expected str | None"),
            "canary": (1, "expected bool"),
            "tags": ("a", "expected tuple[str, ...]"),
            "ports": ([1, "x"], "field ports[1]: expected int"),
            "audience": (9, "expected Visibility"),
            "limits": ({"a": {"b": 1}}, "field limits['a']: expected int"),
            "stage": ("test", "expected 'dev' | 'prod'"),
        }
        for field, (value, message) in cases.items():
            assert message in _decode_error(json.dumps({**good, field: value}))

    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
    def test_payload_not_json_compatible(self, literal: str) -> None:
        data = _log(payload={"x": 0}).replace(b'"x":0', b'"x":' + literal.encode())
        assert f"{literal} is not a JSON value" in _decode_error(data)

    @pytest.mark.parametrize("number", ["1e400", "-1e400"])
    def test_float_out_of_range(self, number: str) -> None:
        data = _log(payload={"x": 0}).replace(b'"x":0', b'"x":' + number.encode())
        assert "is too large" in _decode_error(data)

    def test_huge_integer(self) -> None:
        data = _log(payload={"x": 0}).replace(b'"x":0', b'"x":' + b"9" * 5000)
        assert "not valid JSON" in _decode_error(data)

    @pytest.mark.parametrize("opening", [b"[", b'{"a":'])
    def test_deeply_nested(self, opening: bytes) -> None:
        deep = opening * 100_000
        data = _log(payload={"x": 0}).replace(b'"x":0', b'"x":' + deep)
        assert "nested too deeply" in _decode_error(data)

    def test_user_validator_refusal(self) -> None:
        data = json.loads(encode(Validated(run_id="r", size=1)))
        message = _decode_error(json.dumps({**data, "size": 0}))
        assert "'test.codec.validated' event: Validated refused the fields" in message


_KINDS = [cls.kind for cls in BUILTIN_EVENT_CLASSES] + [Deployed.kind]
_SOME_FIELDS = (
    *("run_id", "lane_id", "visibility", "payload", "ts", "seq", "offset"),
    *("error", "count", "name", "arguments", "result", "text", "message"),
)


class TestDecodeFuzz:
    @given(st.binary())
    @example(b"\x00")
    @example(b"\xef\xbb\xbf{}")  # a UTF-8 byte order mark
    def test_arbitrary_bytes(self, data: bytes) -> None:
        self._decode_or_decode_error(data)

    @given(st.text())
    def test_arbitrary_text(self, data: str) -> None:
        self._decode_or_decode_error(data)

    @given(json_values())
    def test_arbitrary_json(self, value: Any) -> None:
        self._decode_or_decode_error(json.dumps(value))

    @given(
        st.fixed_dictionaries(
            {"kind": st.sampled_from(_KINDS)},
            optional={name: json_values(max_leaves=3) for name in _SOME_FIELDS},
        )
    )
    def test_arbitrary_fields_of_known_kinds(self, value: dict[str, Any]) -> None:
        self._decode_or_decode_error(json.dumps(value))

    @given(events(), st.data())
    def test_corrupted_encoding(self, event: Event, data: st.DataObject) -> None:
        encoded = bytearray(encode(event))
        # span_id comes from a counter: draw positions independent of the length
        index = data.draw(st.integers(0, 1 << 16)) % len(encoded)
        encoded[index] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, 1 << 16)) % (len(encoded) + 1)
        self._decode_or_decode_error(bytes(encoded[:cut]))

    @staticmethod
    def _decode_or_decode_error(data: bytes | str) -> None:
        try:
            event = decode(data)
        except DecodeError as exc:
            message = str(exc)
        else:
            assert isinstance(event, Event)
            assert decode(encode(event)) == event
            return
        assert message


class TestEncodeErrors:
    """Admission and encode apply the same rules (the codec's converters): an
    event with a bad field cannot be made, and encode refuses one that got past
    admission (only ``object.__setattr__`` can do that) with the same words."""

    @pytest.mark.parametrize(
        ("payload", "error", "message"),
        [
            (
                {"x": {1, 2}},
                TypeError,
                "field payload['x']: set is not JSON-compatible",
            ),
            ({"x": object()}, TypeError, "payload['x']: object is not JSON-compatible"),
            ({"x": b"raw"}, TypeError, "payload['x']: bytes is not JSON-compatible"),
            ({"x": [1, {"y": 1j}]}, TypeError, "payload['x'][1]['y']: complex is"),
            ({"x": math.nan}, ValueError, "payload['x']: nan is not JSON-compatible"),
            ({"x": [math.inf]}, ValueError, "payload['x'][0]: inf is not JSON"),
            ({1: "a"}, TypeError, "field payload: key 1 (int) is not a string"),
            ({"x": {None: 1}}, TypeError, "payload['x']: key None (NoneType) is not"),
            ({"x": {(1,): 1}}, TypeError, "key (1,) (tuple) is not a string"),
        ],
    )
    def test_payload_not_json_compatible(
        self, payload: dict[Any, Any], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error) as info:
            Log(run_id="r", message="m", payload=payload)
        assert message in str(info.value)
        assert "cannot make a 'log' event (Log)" in str(info.value)
        with pytest.raises(error) as info:
            encode(unchecked(Log(run_id="r", message="m"), payload=payload))
        assert message in str(info.value)
        assert "cannot encode 'log' event" in str(info.value)

    def test_other_fields_not_json_compatible(self) -> None:
        with pytest.raises(TypeError, match=r"field arguments\['a'\]: set"):
            ToolCall(run_id="r", name="t", arguments={"a": set()})
        with pytest.raises(TypeError, match="field result: frozenset"):
            ToolResult(run_id="r", name="t", result=frozenset())
        event = ToolResult(run_id="r", name="t")
        with pytest.raises(TypeError, match="field result: frozenset"):
            encode(unchecked(event, result=frozenset()))

    def test_huge_integer(self) -> None:
        with pytest.raises(ValueError, match="int too large"):
            Log(run_id="r", message="m", payload={"x": 10**5000})
        event = unchecked(Log(run_id="r", message="m"), payload={"x": 10**5000})
        with pytest.raises(ValueError, match="cannot encode 'log' event"):
            encode(event)

    def test_circular_payload(self) -> None:
        payload: dict[str, Any] = {}
        payload["self"] = payload
        with pytest.raises(ValueError, match=r"payload.* nested too deeply"):
            Log(run_id="r", message="m", payload=payload)
        event = unchecked(Log(run_id="r", message="m"), payload=payload)
        with pytest.raises(ValueError, match="payload is nested too deeply"):
            encode(event)

    @pytest.mark.parametrize(
        ("event", "fields", "error", "message"),
        [
            (
                RunError(run_id="r", error="e"),
                {"error": 5},
                TypeError,
                "field error: expected str",
            ),
            (
                Log(run_id="r", message="m"),
                {"run_id": None},
                TypeError,
                "field run_id: expected str",
            ),
            (Log(run_id="r", message="m"), {"visibility": 7}, TypeError, "visibility"),
            (
                Log(run_id="r", message="m"),
                {"visibility": "PUBLIC"},
                TypeError,
                "visibility",
            ),
            (
                Log(run_id="r", message="m"),
                {"ts": math.nan},
                ValueError,
                "field ts: nan",
            ),
            (Log(run_id="r", message="m"), {"seq": -1}, ValueError, "seq: must not be"),
            (
                Log(run_id="r", message="m"),
                {"seq": 2**63},
                ValueError,
                "seq: must be at most",
            ),
            (
                Log(run_id="r", message="m"),
                {"offset": True},
                TypeError,
                "offset: expected",
            ),
            (
                Log(run_id="r", message="m"),
                {"payload": []},
                TypeError,
                "payload: expected",
            ),
            (Deployed(run_id="r", service="s"), {"tags": [1]}, TypeError, r"tags[0]"),
        ],
    )
    def test_field_of_the_wrong_type(
        self,
        event: Event,
        fields: dict[str, Any],
        error: type[Exception],
        message: str,
    ) -> None:
        with pytest.raises(error) as info:
            attrs.evolve(event, **fields)
        assert message in str(info.value)
        assert f"cannot make a {event.kind!r} event" in str(info.value)
        with pytest.raises(error) as info:
            encode(unchecked(event, **fields))
        assert message in str(info.value)

    def test_raw_visibility_value_is_accepted(self) -> None:
        event = Log(run_id="r", message="m", visibility=1)  # type: ignore[arg-type]
        assert decode(encode(event)).visibility is Visibility.INTERNAL

    def test_not_an_event(self) -> None:
        with pytest.raises(TypeError, match="expects an Event, got dict"):
            encode({"kind": "log"})  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "event",
        [
            Event(run_id="r"),
            _Abstract(run_id="r"),
            RunErrorVariant(run_id="r", error="e"),
        ],
        ids=["Event", "abstract", "inherited-kind"],
    )
    def test_unregistered_class(self, event: Event) -> None:
        assert registered_kinds().get(getattr(type(event), "kind", "")) is not type(
            event
        )
        with pytest.raises(TypeError, match="not a registered event class"):
            encode(event)

    def test_events_dropped_is_encodable(self) -> None:
        event = EventsDropped(run_id="r", count=3, first_offset=4, last_offset=6)
        assert decode(encode(event)) == event


class TestRanges:
    """``seq`` and ``offset`` are in 0 … 2**63-1 (0: not stamped yet), and an
    ``EventsDropped`` notice's numbers are consistent; both directions refuse
    what breaks it, and decode says which rule failed."""

    @pytest.mark.parametrize("field", ["seq", "offset"])
    @pytest.mark.parametrize(
        "value",
        [2**63, 2**70, 10**23, int("9" * 4300)],
        ids=["2**63", "2**70", "10**23", "4300 digits"],
    )
    def test_a_counter_too_large_is_refused(self, field: str, value: int) -> None:
        text = _log(**{field: 0}).decode().replace(f'"{field}":0', f'"{field}":{value}')
        message = _decode_error(text)
        assert f"field {field}: must be at most 2**63-1" in message
        with pytest.raises(ValueError, match=rf"{field}: must be at most 2\*\*63-1"):
            encode(
                Log(run_id="r", message="m", seq=value)
                if field == "seq"
                else Log(run_id="r", message="m", offset=value)
            )

    @pytest.mark.parametrize("value", [0, 1, 2**63 - 1])
    def test_the_bounds_are_accepted(self, value: int) -> None:
        event = Log(run_id="r", message="m", seq=value, offset=value)
        assert decode(encode(event)) == event

    def test_more_digits_than_python_parses_is_undecodable(self) -> None:
        text = _log(seq=0).decode().replace('"seq":0', '"seq":' + "9" * 4301)
        assert "not valid JSON" in _decode_error(text)

    @pytest.mark.parametrize(
        ("numbers", "message"),
        [
            ((-5, 1, 1), "count must be in 1 … 2**63-1, got -5"),
            ((0, 1, 1), "count must be in 1 … 2**63-1, got 0"),
            ((2**63, 1, 1), "count must be in 1 … 2**63-1"),
            ((1, 0, 0), "first_offset must be in 1 … 2**63-1, got 0"),
            ((1, 5, 4), "last_offset must be in first_offset (5) … 2**63-1, got 4"),
            ((1, 5, 2**63), "last_offset must be in first_offset (5) … 2**63-1"),
        ],
    )
    def test_a_notice_breaking_its_rule(
        self, numbers: tuple[int, int, int], message: str
    ) -> None:
        count, first, last = numbers
        notice = EventsDropped(
            run_id="r", count=count, first_offset=first, last_offset=last
        )
        with pytest.raises(ValueError, match=r"encode 'events\.dropped'") as info:
            encode(notice)
        assert message in str(info.value)
        valid = EventsDropped(run_id="r", count=1, first_offset=1, last_offset=1)
        data = json.loads(encode(valid))
        data.update(count=count, first_offset=first, last_offset=last)
        assert f"'events.dropped' event: {message}" in _decode_error(json.dumps(data))

    def test_a_notice_within_its_rule(self) -> None:
        notice = EventsDropped(
            run_id="r", count=3, first_offset=2**63 - 3, last_offset=2**63 - 1
        )
        assert decode(encode(notice)) == notice
