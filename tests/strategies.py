"""Hypothesis strategies for events and JSON data, shared by the test modules.

Everything generated here is JSON-compatible and round-trips through the codec
exactly; in particular arrays are generated as lists, never tuples (the codec
returns tuples as lists). Run and lane ids are drawn from small alphabets by
default so that tests of the bus see many events for the same run and lane.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
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
    """Valid JSON-compatible values for a field annotated *annotation* (str, int,
    float, bool, None, unions, mappings, lists, :class:`Visibility`; anything
    else gets any JSON value)."""
    if annotation is type(None) or annotation is None:
        return st.none()
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in typing.get_args(annotation)])
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(),
        int: st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        Visibility: VISIBILITIES,
    }
    if annotation in simple:
        return simple[annotation]
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return payloads()
    if origin is list:
        return st.lists(json_values(), max_size=4)
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
        },
        optional={
            "payload": payloads(),
            "parent_span_id": st.none() | st.text(max_size=16),
            "ts": st.floats(0, 4e9, allow_nan=False),
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
    return st.builds(lambda env, own: cls(**env, **own), envelope, _own_fields(cls))
