"""Fuzzing :func:`purpose_bus.decode` beyond ``tests/test_codec.py`` (which
covers arbitrary bytes, text and JSON, arbitrary fields of known kinds and
one-byte corruptions): structure-aware mutations of valid encodings, byte-level
splices, unicode edge cases, numbers at and beyond every limit, nesting around
the recursion limit, the size limit at its boundary, and adversarial inputs of
the largest size accepted.

The property throughout: ``decode`` returns an event that round-trips, or raises
:exc:`DecodeError`; never another exception, never a hang (each adversarial
input of 1 MiB is decoded in well under a second; the bound asserted is
generous).
"""

from __future__ import annotations

import json
import string
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from helpers import unchecked
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import events, json_values

from purpose_bus import (
    MAX_DECODE_BYTES,
    MAX_NESTING,
    DecodeError,
    Event,
    Log,
    MessageDelta,
    ToolCall,
    decode,
    encode,
    registered_kinds,
)

#: No single decode may take longer than this (seconds): a generous bound for a
#: loaded CI machine; the inputs here take milliseconds.
SLOW = 5.0

fuzz = settings(deadline=timedelta(seconds=SLOW))

#: Strings that have broken JSON codecs before.
UNICODE_EDGES = [
    "",
    "\x00",
    "\x7f",
    "\u0085",  # NEL
    "\u2028\u2029",  # line and paragraph separators
    "\ufeff",  # BOM
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\U0001f600",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "\udc00\ud800",  # reversed pair
    "e\u0301",  # decomposed
    "\u00e9",  # composed
    "\u202e" + "evil",  # right-to-left override
    "\\",
    '"',
    "\\u0000",
    "a" * 300,
]

#: Number literals, spliced into JSON text as they are.
NUMBER_LITERALS = [
    "0",
    "-0",
    "-0.0",
    "1e2",
    "1E+2",
    "1.5",
    "-1",
    "9007199254740993",
    "1" + "0" * 308,
    "1" + "0" * 309,
    "1" * 4300,
    "1" * 4301,
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "1e309",
    "-1e400",
    "5e-324",
    "1e-400",
    "0." + "0" * 5000 + "1",
    "1" + "0" * 100_000,
    "NaN",
    "-Infinity",
    "01",
    ".5",
    "1.",
    "+1",
    "0x10",
    "1_000",
]


def decode_or_decode_error(
    data: bytes | str, *, round_trip: bool = True
) -> Event | None:
    """Decode *data*: an event that round-trips (unless not *round_trip*), or
    ``None`` after a :exc:`DecodeError` with a message. Any other exception
    fails the test."""
    start = time.perf_counter()
    message = "decoded"
    try:
        event = decode(data)
    except DecodeError as exc:
        message = str(exc)
        event = None
    assert message
    assert time.perf_counter() - start < SLOW
    if event is not None and round_trip:
        assert decode(encode(event)) == event
    return event


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- structure-aware mutations ------------------------------------------------------

_KINDS = sorted(registered_kinds())
_PLACEHOLDER = "@@literal@@"


@st.composite
def mutated_encodings(draw: st.DrawFn) -> str:
    """A valid encoding, parsed, mutated one to four times, written back (with
    raw number literals spliced into the text)."""
    event = draw(events(stamped=draw(st.booleans())))
    data: dict[str, Any] = json.loads(encode(event))
    literals: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        keys = sorted(data)
        op = draw(
            st.sampled_from(
                ["delete", "replace", "add", "kind", "nest", "unicode", "number", "dup"]
            )
        )
        key = draw(st.sampled_from(keys)) if keys else "kind"
        if op == "delete" and keys:
            del data[key]
        elif op == "replace":
            data[key] = draw(json_values(max_leaves=6))
        elif op == "add":
            data[draw(st.text(max_size=10))] = draw(json_values(max_leaves=3))
        elif op == "kind":
            data["kind"] = draw(st.sampled_from(_KINDS) | st.text(max_size=12))
        elif op == "nest":
            value: Any = data.get(key)
            for level in range(draw(st.integers(1, 60))):
                value = [value] if level % 2 else {"n": value}
            data[key] = value
        elif op == "unicode":
            data[key] = draw(st.sampled_from(UNICODE_EDGES))
        elif op == "number":
            data[key] = _PLACEHOLDER
            literals.append(draw(st.sampled_from(NUMBER_LITERALS)))
        else:  # a key written twice: the last one wins
            data = {**data, "kind": data.get("kind")}
    text = dumps(data)
    for literal in literals:
        text = text.replace(f'"{_PLACEHOLDER}"', literal, 1)
    if draw(st.booleans()):  # the same key twice, as text
        text = text.replace("{", '{"kind":"log",', 1)
    return text


class TestStructureAwareMutations:
    @fuzz
    @given(mutated_encodings())
    @example('{"kind":"log","kind":"run.finished","run_id":"r","message":"m"}')
    @example('{"kind":"log","run_id":"r","message":"m","seq":1e400}')
    @example('{"kind":"log","run_id":"r","message":"m","ts":' + "1" * 400 + "}")
    def test_text(self, text: str) -> None:
        decode_or_decode_error(text)

    @fuzz
    @given(mutated_encodings())
    def test_utf8_bytes(self, text: str) -> None:
        decode_or_decode_error(text.encode("utf-8", "surrogatepass"))

    @pytest.mark.parametrize("literal", NUMBER_LITERALS)
    @pytest.mark.parametrize(
        "field", ["seq", "offset", "ts", "visibility", "run_id", "payload", "count"]
    )
    def test_every_number_literal_in_every_kind_of_field(
        self, field: str, literal: str
    ) -> None:
        base = json.loads(
            encode(Log(run_id="r", message="m"))
            if field != "count"
            else b'{"kind":"events.dropped","run_id":"r","count":1,'
            b'"first_offset":1,"last_offset":1}'
        )
        base[field] = _PLACEHOLDER
        text = dumps(base).replace(f'"{_PLACEHOLDER}"', literal)
        event = decode_or_decode_error(text)
        if event is not None:
            assert field in ("seq", "offset", "ts", "visibility", "count")

    @pytest.mark.parametrize("edge", UNICODE_EDGES, ids=range(len(UNICODE_EDGES)))
    @pytest.mark.parametrize("escaped", [False, True], ids=["raw", "escaped"])
    def test_unicode_edges_in_strings_keys_and_kinds(
        self, edge: str, escaped: bool
    ) -> None:
        values = {
            "run_id": edge,
            "lane_id": edge,
            "text": edge,
            "payload": {edge: edge},
        }
        text = json.dumps({"kind": "message.delta", **values}, ensure_ascii=escaped)
        event = decode_or_decode_error(text)
        assert isinstance(event, MessageDelta)
        assert (event.run_id, event.text, dict(event.payload)) == (
            edge,
            edge,
            {edge: edge},
        )
        decode_or_decode_error(json.dumps({"kind": edge}, ensure_ascii=escaped))


# -- byte-level splices -------------------------------------------------------------


class TestByteSplices:
    @fuzz
    @given(events(), events(), st.data())
    def test_insert_delete_duplicate_and_splice(
        self, first: Event, second: Event, data: st.DataObject
    ) -> None:
        a, b = bytearray(encode(first)), encode(second)
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, 1 << 16)) % (len(a) + 1)
            span = data.draw(st.integers(0, 40))
            op = data.draw(st.sampled_from(["insert", "delete", "dup", "splice"]))
            if op == "insert":
                a[at:at] = data.draw(
                    st.binary(max_size=8)
                    | st.sampled_from(
                        [
                            b"\xc0\xaf",
                            b"\xed\xa0\x80",
                            b"\xf8\x88\x80\x80\x80",
                            b"\xef\xbb\xbf",
                            b"\x00",
                            b"\\u",
                            b'"',
                            b"{",
                            b"]",
                        ]
                    )
                )
            elif op == "delete":
                del a[at : at + span]
            elif op == "dup":
                a[at:at] = a[at : at + span]
            else:
                cut = data.draw(st.integers(0, 1 << 16)) % (len(b) + 1)
                a = a[:at] + b[cut:]
        decode_or_decode_error(bytes(a))


# -- nesting -------------------------------------------------------------------------


def _nested_payload(depth: int, opening: str, closing: str) -> str:
    head = '{"kind":"tool.call","run_id":"r","name":"t","arguments":{"a":'
    return head + opening * depth + "1" + closing * depth + "}}"


class TestNesting:
    @pytest.mark.parametrize(
        ("opening", "closing"),
        [("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")],
        ids=["arrays", "objects", "mixed"],
    )
    def test_around_the_recursion_limit(self, opening: str, closing: str) -> None:
        """Every depth from shallow to far beyond the limit: an event or a
        ``DecodeError`` ("nested too deeply"), never a ``RecursionError``.
        (Whether encode takes back what decode took is the next test.)"""
        limit = sys.getrecursionlimit()
        for depth in [*range(limit - 120, limit + 20), 10 * limit, 100 * limit]:
            data = _nested_payload(depth, opening, closing)
            decode_or_decode_error(data, round_trip=False)

    @pytest.mark.parametrize(
        ("opening", "closing"),
        [("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")],
        ids=["arrays", "objects", "mixed"],
    )
    def test_one_depth_limit_both_ways(self, opening: str, closing: str) -> None:
        """The codec's promise: whatever depth decode accepts, encode writes
        back. Both refuse exactly what nests deeper than ``MAX_NESTING`` inside a
        field (was: decode took ~950 levels that encode, one frame deeper,
        refused)."""
        per_level = opening.count("[") + opening.count("{")
        for levels in range(MAX_NESTING // per_level - 3, MAX_NESTING // per_level + 3):
            depth = levels * per_level + 1  # arguments={"a": ...} is a level
            data = _nested_payload(levels, opening, closing)
            if depth <= MAX_NESTING:
                event = decode(data)
                assert decode(encode(event)) == event
            else:
                with pytest.raises(
                    DecodeError, match="field 'arguments' is nested too"
                ):
                    decode(data)
                value: Any = 1
                for _ in range(levels):
                    value = (
                        [{"a": value}]
                        if per_level == 2
                        else ([value] if opening == "[" else {"a": value})
                    )
                with pytest.raises(ValueError, match="field arguments is nested too"):
                    ToolCall(run_id="r", name="t", arguments={"a": value})
                event = unchecked(ToolCall(run_id="r", name="t"), arguments={"a": 1})
                event = unchecked(event, arguments={"a": value})
                with pytest.raises(ValueError, match="field arguments is nested too"):
                    encode(event)

    @fuzz
    @given(st.integers(1, MAX_NESTING + 3), st.integers(0, 400), st.integers(0, 400))
    def test_refused_exactly_when_deeper_than_the_limit(
        self, depth: int, width: int, at: int
    ) -> None:
        """Many brackets, little depth is fine: a chain *depth* levels deep
        with *width* empty arrays beside it at level ``min(at, depth)``."""
        value: Any = []
        for level in range(depth - 1, 0, -1):
            value = [value, *([[]] * width)] if level == min(at, depth - 1) else [value]
        if depth + 1 <= MAX_NESTING:  # arguments itself is a level
            event = ToolCall(run_id="r", name="t", arguments={"a": value})
            assert decode(encode(event)) == event
        else:
            with pytest.raises(ValueError, match="nested too deeply"):
                ToolCall(run_id="r", name="t", arguments={"a": value})
            bad = unchecked(ToolCall(run_id="r", name="t"), arguments={"a": value})
            with pytest.raises(ValueError, match="nested too deeply"):
                encode(bad)
            data = json.dumps(
                {
                    "kind": "tool.call",
                    "run_id": "r",
                    "name": "t",
                    "arguments": {"a": value},
                }
            )
            with pytest.raises(DecodeError, match="nested too deeply"):
                decode(data)


# -- size --------------------------------------------------------------------------


class TestSizeLimit:
    @fuzz
    @given(events(), st.integers(1, 4_000), st.booleans())
    def test_refused_exactly_when_over_the_limit(
        self, event: Event, max_size: int, as_text: bool
    ) -> None:
        data = encode(event)
        size = len(data)  # UTF-8 bytes, also for the text form
        form: bytes | str = data.decode("utf-8") if as_text else data
        if size <= max_size:
            assert decode(form, max_size=max_size) == decode(data)
        else:
            with pytest.raises(DecodeError, match="size limit"):
                decode(form, max_size=max_size)

    @pytest.mark.parametrize(
        "char", ["a", "é", "€", "😀"], ids=["1B", "2B", "3B", "4B"]
    )
    def test_at_the_default_limit(self, char: str) -> None:
        """A valid event of exactly 1 MiB of UTF-8 decodes; one byte more is
        refused (as bytes and as text, whose size is its UTF-8 length)."""
        empty = len(encode(MessageDelta(run_id="r", text="", span_id="s", ts=1.0)))
        room = MAX_DECODE_BYTES - empty
        width = len(char.encode())
        text = char * (room // width) + "a" * (room % width)
        fitting = encode(MessageDelta(run_id="r", text=text, span_id="s", ts=1.0))
        assert len(fitting) == MAX_DECODE_BYTES
        over = encode(MessageDelta(run_id="r", text=text + "a", span_id="s", ts=1.0))
        for data in (fitting, fitting.decode()):
            event = decode(data)
            assert isinstance(event, MessageDelta) and event.text == text
        for data in (over, over.decode()):
            with pytest.raises(DecodeError, match="size limit"):
                decode(data)


def _adversarial(size: int) -> dict[str, bytes]:
    """Inputs of *size* bytes that stress a JSON parser."""
    n = size
    event = b'{"kind":"log","run_id":"r","message":"m","payload":'
    keys = b",".join(b'"k%d":0' % i for i in range(n // 12))
    return {
        "open arrays": b"[" * n,
        "open objects": b'{"a":' * (n // 5),
        "one long string": b'"' + b"a" * (n - 2) + b'"',
        "escapes": b'"' + b"\\u0000" * ((n - 2) // 6) + b'"',
        "surrogate escapes": b'"' + b"\\ud800" * ((n - 2) // 6) + b'"',
        "digits": b"1" * n,
        "fraction digits": b"0." + b"1" * (n - 2),
        "exponent": b"1e" + b"9" * (n - 2),
        "whitespace": b" " * (n - 2) + b"{}",
        "many small numbers": b"[" + b"0," * ((n - 2) // 2) + b"0]",
        "many keys": b"{" + keys + b"}",
        "payload of many keys": event + b"{" + keys[: n - len(event) - 3] + b"}}",
        "unterminated": event + b'{"x":"' + b"a" * (n - len(event) - 8),
        "invalid utf-8": b"\xff" * n,
        "bom and nul": b"\xef\xbb\xbf" + b"\x00" * (n - 3),
    }


class TestLargeInputs:
    @pytest.mark.parametrize("name", sorted(_adversarial(16)))
    def test_the_largest_input_accepted_is_decoded_quickly_or_refused(
        self, name: str
    ) -> None:
        data = _adversarial(MAX_DECODE_BYTES)[name][:MAX_DECODE_BYTES]
        decode_or_decode_error(data)
        decode_or_decode_error(data.decode("utf-8", "replace")[: MAX_DECODE_BYTES // 4])

    def test_over_the_limit_is_refused_before_parsing(self) -> None:
        """A 64 MiB input is refused at once (it is never parsed)."""
        data = b"[" * (64 * MAX_DECODE_BYTES)
        start = time.perf_counter()
        with pytest.raises(DecodeError, match="size limit"):
            decode(data)
        with pytest.raises(DecodeError, match="size limit"):
            decode(data.decode())
        assert time.perf_counter() - start < SLOW

    @fuzz
    @given(
        st.text(alphabet=string.printable, min_size=1, max_size=64),
        st.integers(1_000, 30_000),
    )
    def test_repeated_fragments(self, fragment: str, times: int) -> None:
        decode_or_decode_error(fragment * times)


def test_tool_call_arguments_round_trip_at_depth() -> None:
    """A sanity anchor for the nesting tests: moderate depth round-trips."""
    value: Any = 1
    for _ in range(100):
        value = {"a": [value]}
    event = ToolCall(run_id="r", name="t", arguments={"x": value})
    assert decode(encode(event)) == event
