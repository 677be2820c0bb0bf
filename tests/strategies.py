"""Hypothesis strategies for events and JSON data, shared by the test modules.

Everything generated here is JSON-compatible and round-trips through the codec
exactly; in particular arrays are generated as lists, never tuples (the codec
returns tuples as lists). Run and lane ids are drawn from small alphabets by
default so that tests of the bus see many events for the same run and lane.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar, overload

import attrs
from hypothesis import strategies as st

from purpose_bus import (
    Event,
    EventsDropped,
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
)

E = TypeVar("E", bound=Event)

#: Every built-in event class, in a stable order.
BUILTIN_EVENT_CLASSES: tuple[type[Event], ...] = (
    RunStarted,
    RunFinished,
    RunError,
    RunCancelled,
    LaneStarted,
    LaneFinished,
    StepStarted,
    StepFinished,
    MessageDelta,
    ToolCall,
    ToolResult,
    ReasoningSummary,
    Log,
    EventsDropped,
)

#: The default run ids: few, so that runs collide.
RUN_IDS = st.sampled_from(["run-a", "run-b", "run-c"])
#: The default lane ids: few, "main" among them.
LANE_IDS = st.sampled_from(["main", "lane-1", "lane-2"])
VISIBILITIES = st.sampled_from(Visibility)

#: The largest integer every JSON reader represents exactly.
MAX_SAFE_INT = 2**53


def json_scalars() -> st.SearchStrategy[Any]:
    """``None``, booleans, integers within +-2**53, finite floats and text."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    )


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, and lists and text-keyed dicts of JSON values."""
    return st.recursive(
        json_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def payloads() -> st.SearchStrategy[Mapping[str, Any]]:
    """A free-form payload: a dict of JSON values, sometimes read-only."""
    dicts = st.dictionaries(st.text(max_size=12), json_values(), max_size=5)
    return st.one_of(dicts, dicts.map(MappingProxyType))


def _names() -> st.SearchStrategy[str]:
    return st.sampled_from(["search", "fetch", "plan", "answer", ""]) | st.text()


def _events_dropped() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda first, count: {
            "count": count,
            "first_offset": first,
            "last_offset": first + count - 1,
        },
        st.integers(1, MAX_SAFE_INT // 2),
        st.integers(1, 10_000),
    )


#: The fields of each built-in class beyond the envelope, as keyword arguments.
_EXTRA_FIELDS: dict[type[Event], st.SearchStrategy[dict[str, Any]]] = {
    RunError: st.fixed_dictionaries({"error": st.text()}),
    RunCancelled: st.fixed_dictionaries({}, optional={"reason": st.text()}),
    StepStarted: st.fixed_dictionaries({}, optional={"name": _names()}),
    StepFinished: st.fixed_dictionaries({}, optional={"name": _names()}),
    MessageDelta: st.fixed_dictionaries({"text": st.text()}),
    ToolCall: st.fixed_dictionaries(
        {"name": _names()}, optional={"arguments": payloads()}
    ),
    ToolResult: st.fixed_dictionaries(
        {"name": _names()}, optional={"result": json_values()}
    ),
    ReasoningSummary: st.fixed_dictionaries({"summary": st.text()}),
    Log: st.fixed_dictionaries(
        {"message": st.text()},
        optional={"level": st.sampled_from(["debug", "info", "warning", "error"])},
    ),
    EventsDropped: _events_dropped(),
}


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Valid values for a field annotated *annotation*: str, int, float, bool,
    None, :class:`Visibility`, unions, text-keyed mappings, ``list[X]`` and
    ``tuple[X, ...]``; anything else gets any JSON value."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in typing.get_args(annotation)])
    if typing.get_origin(annotation) is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        None: st.none(),
        type(None): st.none(),
        str: st.text(),
        int: st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        Visibility: VISIBILITIES,
    }
    if annotation in simple:
        return simple[annotation]
    origin = typing.get_origin(annotation) or annotation
    args = typing.get_args(annotation)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        values = strategy_for(args[1]) if len(args) == 2 else json_values()
        return st.dictionaries(st.text(max_size=12), values, max_size=5)
    if origin in (list, tuple, Sequence):
        lists = st.lists(strategy_for(args[0]) if args else json_values(), max_size=4)
        return lists.map(tuple) if origin is tuple else lists
    return json_values()


def _own_fields(cls: type[Event]) -> st.SearchStrategy[dict[str, Any]]:
    """Values for the fields *cls* adds to the envelope, from their annotations:
    required fields always, fields with a default sometimes."""
    if cls in _EXTRA_FIELDS:
        return _EXTRA_FIELDS[cls]
    hints = typing.get_type_hints(cls)
    envelope = {field.name for field in attrs.fields(Event)}
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in attrs.fields(cls):
        if field.init and field.name not in envelope:
            into = required if field.default is attrs.NOTHING else optional
            into[field.alias or field.name] = strategy_for(hints[field.name])
    return st.fixed_dictionaries(required, optional=optional)


def _envelope(
    run_ids: st.SearchStrategy[str],
    lane_ids: st.SearchStrategy[str],
    visibilities: st.SearchStrategy[Visibility],
    stamped: bool,
) -> st.SearchStrategy[dict[str, Any]]:
    counters = st.integers(1, MAX_SAFE_INT) if stamped else st.just(0)
    return st.fixed_dictionaries(
        {
            "run_id": run_ids,
            "lane_id": lane_ids,
            "visibility": visibilities,
            "seq": counters,
            "offset": counters,
            "ts": st.floats(0, 4e9),
        },
        optional={
            "payload": payloads(),
            "parent_span_id": st.none() | st.text(max_size=16),
        },
    )


@overload
def events(
    cls: None = None,
    *,
    run_ids: st.SearchStrategy[str] = ...,
    lane_ids: st.SearchStrategy[str] = ...,
    visibilities: st.SearchStrategy[Visibility] = ...,
    stamped: bool = ...,
) -> st.SearchStrategy[Event]: ...


@overload
def events(
    cls: type[E],
    *,
    run_ids: st.SearchStrategy[str] = ...,
    lane_ids: st.SearchStrategy[str] = ...,
    visibilities: st.SearchStrategy[Visibility] = ...,
    stamped: bool = ...,
) -> st.SearchStrategy[E]: ...


def events(
    cls: type[Event] | None = None,
    *,
    run_ids: st.SearchStrategy[str] = RUN_IDS,
    lane_ids: st.SearchStrategy[str] = LANE_IDS,
    visibilities: st.SearchStrategy[Visibility] = VISIBILITIES,
    stamped: bool = False,
) -> st.SearchStrategy[Event]:
    """Events of class *cls* (default: any built-in class) with valid fields.

    Unstamped (``seq`` and ``offset`` 0) unless *stamped*, when both are drawn
    independently from 1 ... 2**53. A class not built in gets its own fields
    from their annotations (see :func:`strategy_for`).
    """
    if cls is None:
        return st.sampled_from(BUILTIN_EVENT_CLASSES).flatmap(
            lambda c: events(
                c,
                run_ids=run_ids,
                lane_ids=lane_ids,
                visibilities=visibilities,
                stamped=stamped,
            )
        )
    envelope = _envelope(run_ids, lane_ids, visibilities, stamped)
    return st.builds(_build, st.just(cls), envelope, _own_fields(cls))


def _build(cls: type[E], envelope: dict[str, Any], own: dict[str, Any]) -> E:
    return cls(**envelope, **own)


# -- the bus: events to emit, subscriptions, interleavings ---------------------
# (appended for tests/test_sender.py, tests/test_filters.py and friends)

#: Run ids for bus tests: few, so that subscriptions and runs collide.
BUS_RUN_IDS = st.sampled_from(["r1", "r2", "r3"])
#: Lane ids for bus tests.
BUS_LANE_IDS = st.sampled_from(["main", "lane-1"])
#: The classes bus tests emit; terminal ones come up about a third of the time.
BUS_EVENT_CLASSES: tuple[type[Event], ...] = (
    MessageDelta,
    MessageDelta,
    Log,
    ToolCall,
    RunStarted,
    StepStarted,
    RunFinished,
    RunError,
    RunCancelled,
)
_BUS_EXTRA: dict[type[Event], dict[str, Any]] = {
    MessageDelta: {"text": "t"},
    Log: {"message": "m"},
    ToolCall: {"name": "tool"},
    RunError: {"error": "e"},
}


def _bus_event(
    cls: type[Event], run_id: str, lane_id: str, visibility: Visibility
) -> Event:
    return cls(
        run_id=run_id, lane_id=lane_id, visibility=visibility, **_BUS_EXTRA.get(cls, {})
    )


def bus_events(
    *,
    classes: Sequence[type[Event]] = BUS_EVENT_CLASSES,
    run_ids: st.SearchStrategy[str] = BUS_RUN_IDS,
    lane_ids: st.SearchStrategy[str] = BUS_LANE_IDS,
    visibilities: st.SearchStrategy[Visibility] = VISIBILITIES,
) -> st.SearchStrategy[Event]:
    """Small unstamped events that every guard lets through (empty payloads)."""
    return st.builds(
        _bus_event, st.sampled_from(classes), run_ids, lane_ids, visibilities
    )


def _one_or_many(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values | st.lists(values, min_size=1, max_size=2, unique=True)


def subscribe_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for ``EventBus.subscribe``: small buffers, every overflow
    policy, sometimes gap notices, and filters on run, lane, kind (as a string or
    a class) and visibility. No replay."""
    from purpose_bus import Overflow  # (appended: keep the imports above intact)

    kinds = st.sampled_from(
        [cls.kind for cls in BUS_EVENT_CLASSES] + list(BUS_EVENT_CLASSES)
    )
    return st.fixed_dictionaries(
        {
            "buffer_size": st.integers(1, 4),
            "overflow": st.sampled_from(list(Overflow)),
            "gap_events": st.booleans(),
            "visibility": VISIBILITIES,
        },
        optional={
            "run_id": _one_or_many(BUS_RUN_IDS),
            "lane_id": _one_or_many(BUS_LANE_IDS),
            "kinds": _one_or_many(kinds),
        },
    )


@attrs.frozen
class Emit:
    """Emit *event* (or ``await publish()`` it, if *publish*)."""

    event: Event
    publish: bool


@attrs.frozen
class Receive:
    """Receive from subscription number *index* (``await receive()`` if *wait*
    and something is ready, else ``receive_nowait()``)."""

    index: int
    wait: bool


def bus_operations(
    subscriptions: int, *, max_size: int = 40
) -> st.SearchStrategy[list[Emit | Receive]]:
    """Interleavings of emits and receives over *subscriptions* subscriptions."""
    emits = st.builds(Emit, bus_events(), st.booleans())
    receives = st.builds(Receive, st.integers(0, subscriptions - 1), st.booleans())
    return st.lists(st.one_of(emits, emits, receives), max_size=max_size)


def _as_set(value: Any) -> set[Any]:
    return {value} if isinstance(value, str | type) else set(value)


def matches_kwargs(kwargs: Mapping[str, Any], event: Event) -> bool:
    """Whether *event* matches ``subscribe(**kwargs)``, worked out from DESIGN.md
    without the library's own filter: each given filter is one value or a
    collection, ``kinds`` holds kind strings or classes (a class stands for its
    own kind), and a subscriber at visibility L sees events at L or below."""
    if event.visibility > kwargs.get("visibility", Visibility.PUBLIC):
        return False
    if "run_id" in kwargs and event.run_id not in _as_set(kwargs["run_id"]):
        return False
    if "lane_id" in kwargs and event.lane_id not in _as_set(kwargs["lane_id"]):
        return False
    if "kinds" in kwargs:
        kinds = {k if isinstance(k, str) else k.kind for k in _as_set(kwargs["kinds"])}
        if event.kind not in kinds:
            return False
    return True


def single_run(kwargs: Mapping[str, Any]) -> str | None:
    """The run ``subscribe(**kwargs)`` is scoped to, if exactly one."""
    runs = _as_set(kwargs.get("run_id", ()))
    return runs.pop() if len(runs) == 1 else None


# -- reliability and security suites: hidden reasoning, state machine inputs ---
# (appended for tests/test_state_machine.py, tests/test_security.py and friends)

#: The value stored under a hidden-reasoning key: it must never be seen again.
SECRET = "SECRET-chain-of-thought-7f3a"


def any_casing(key: str) -> st.SearchStrategy[str]:
    """*key* with each character upper- or lower-cased at random."""
    return st.lists(st.booleans(), min_size=len(key), max_size=len(key)).map(
        lambda flags: "".join(
            c.upper() if up else c.lower() for c, up in zip(key, flags, strict=True)
        )
    )


def _wrap(value: Any, how: str, key: str) -> Any:
    if how == "dict":
        return {key: value, "note": "visible"}
    if how == "proxy":
        return MappingProxyType({key: value})
    if how == "list":
        return ["visible", value]
    return (value, 1)  # a tuple


def hidden_values(keys: Sequence[str], *, max_depth: int = 8) -> st.SearchStrategy[Any]:
    """A JSON-like value holding ``{<one of keys, any casing>: SECRET}`` at a
    random depth (0 ... *max_depth*) of dicts, read-only mappings, lists and
    tuples, beside harmless siblings."""

    def build(key: str, path: list[tuple[str, str]]) -> Any:
        value: Any = {key: SECRET, "answer": "visible"}
        for how, name in path:
            value = _wrap(value, how, name)
        return value

    wrappers = st.tuples(
        st.sampled_from(["dict", "proxy", "list", "tuple"]),
        st.sampled_from(["data", "steps", "x", "meta"]),
    )
    return st.builds(
        build,
        st.sampled_from(sorted(keys)).flatmap(any_casing),
        st.lists(wrappers, max_size=max_depth),
    )


def hidden_reasoning_events(
    keys: Sequence[str] | None = None,
    *,
    run_ids: st.SearchStrategy[str] = BUS_RUN_IDS,
    lane_ids: st.SearchStrategy[str] = BUS_LANE_IDS,
    visibilities: st.SearchStrategy[Visibility] = VISIBILITIES,
) -> st.SearchStrategy[Event]:
    """Events that carry hidden reasoning (one of *keys*, default the library's
    default set, in any casing, at any depth) in their payload, their tool
    arguments or their tool result. Every one must be rejected."""
    from purpose_bus import DEFAULT_HIDDEN_KEYS  # (appended: imports above intact)

    values = hidden_values(sorted(keys if keys is not None else DEFAULT_HIDDEN_KEYS))

    def payload(value: Any) -> Mapping[str, Any]:
        return value if isinstance(value, Mapping) else {"data": value}

    envelope = st.fixed_dictionaries(
        {"run_id": run_ids, "lane_id": lane_ids, "visibility": visibilities}
    )
    return st.one_of(
        st.builds(
            lambda env, v: MessageDelta(text="t", payload=payload(v), **env),
            envelope,
            values,
        ),
        st.builds(
            lambda env, v: RunFinished(payload=payload(v), **env), envelope, values
        ),
        st.builds(
            lambda env, v: ToolCall(name="search", arguments=payload(v), **env),
            envelope,
            values,
        ),
        st.builds(
            lambda env, v: ToolResult(name="search", result=v, **env), envelope, values
        ),
    )


#: Run ids for the state machine: more than the bus tests', so that not every
#: run has ended a few steps in.
MACHINE_RUNS = ("r1", "r2", "r3", "r4", "r5", "r6")
MACHINE_RUN_IDS = st.sampled_from(MACHINE_RUNS)
#: The classes the state machine emits: terminal ones about one time in eight.
MACHINE_EVENT_CLASSES: tuple[type[Event], ...] = (
    *(MessageDelta,) * 6,
    Log,
    Log,
    ToolCall,
    RunStarted,
    StepStarted,
    RunFinished,
    RunError,
)


def machine_events(
    run_ids: st.SearchStrategy[str] = MACHINE_RUN_IDS,
) -> st.SearchStrategy[Event]:
    """What the state machine emits: the bus test events (terminal ones among
    them), every visibility, reasoning summaries, and now and then an event
    carrying hidden reasoning."""
    plain = bus_events(classes=MACHINE_EVENT_CLASSES, run_ids=run_ids)
    summaries = st.builds(
        lambda run, lane, vis: ReasoningSummary(
            run_id=run, lane_id=lane, visibility=vis, summary="a summary"
        ),
        run_ids,
        BUS_LANE_IDS,
        VISIBILITIES,
    )
    hidden = hidden_reasoning_events(run_ids=run_ids)
    return st.one_of(plain, plain, plain, plain, summaries, hidden)


def machine_subscribe_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """:func:`subscribe_kwargs` on the machine's runs, sometimes with replay
    (``after`` is drawn by the machine, which knows the newest offset)."""
    from purpose_bus import Overflow  # (appended: keep the imports above intact)

    kinds = st.sampled_from(
        [cls.kind for cls in BUS_EVENT_CLASSES]
        + list(BUS_EVENT_CLASSES)
        + [ReasoningSummary]
    )
    return st.fixed_dictionaries(
        {
            "buffer_size": st.integers(1, 4),
            "overflow": st.sampled_from(list(Overflow)),
            "gap_events": st.booleans(),
            "visibility": VISIBILITIES,
            "replay": st.sampled_from([False, False, True]),
        },
        optional={
            "run_id": _one_or_many(MACHINE_RUN_IDS),
            "lane_id": _one_or_many(BUS_LANE_IDS),
            "kinds": _one_or_many(kinds),
        },
    )


# (appended for tests/test_admission.py)

#: Characters that normal form removes from a key: separators, spaces, a
#: zero-width space, a zero-width joiner, a soft hyphen.
_KEY_NOISE = st.sampled_from(["_", "-", ".", " ", "\u200b", "\u200d", "\u00ad", ""])


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def spellings(key: str) -> st.SearchStrategy[str]:
    """*key* spelled as the guard must still recognise it: any casing, its
    separators replaced or dropped, noise (zero-width characters, spaces,
    dots) between any letters, sometimes in full-width letters."""
    letters = [c for c in key if c.isalnum()]

    def build(flags: list[bool], noise: list[str], wide: bool) -> str:
        text = "".join(
            (c.upper() if up else c.lower()) + gap
            for c, up, gap in zip(letters, flags, noise, strict=True)
        )
        return _full_width(text) if wide else text

    n = len(letters)
    return st.builds(
        build,
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(_KEY_NOISE, min_size=n, max_size=n),
        st.booleans(),
    )


class Opaque:
    """An object JSON cannot carry."""


class HugeInt(int):
    """An int too large for JSON (10**5000) that hypothesis can still print."""

    def __repr__(self) -> str:
        return "HugeInt(10**5000)"


def non_json_values() -> st.SearchStrategy[Any]:
    """Values JSON cannot carry (or that are refused as such): datetimes, sets,
    bytes, objects, NaN and infinities, non-string keys, dataclass and attrs
    instances, complex numbers, and JSON containers holding one of them."""
    import dataclasses
    import datetime
    import math

    @dataclasses.dataclass
    class Point:
        x: int = 1

    @attrs.define
    class Box:
        y: int = 2

    leaves = st.sampled_from(
        [
            datetime.datetime(2026, 12, 4, 12, 0),
            datetime.date(2026, 12, 4),
            {1, 2},
            frozenset({"a"}),
            b"raw",
            bytearray(b"raw"),
            Opaque(),
            math.nan,
            math.inf,
            -math.inf,
            1j,
            Point(),
            Box(),
            {1: "int key"},
            {("t",): "tuple key"},
            HugeInt(10**5000),
        ]
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3),
            st.dictionaries(st.text(max_size=4), children, min_size=1, max_size=3),
        ),
        max_leaves=6,
    )
