"""The event model: the frozen :class:`Event` envelope, its kind registry and the
built-in vocabulary of an agent run.

Every event class has a class-level ``kind`` (a unique string such as
``"run.finished"``) and ``terminal`` flag. Defining a class registers its kind so
that :func:`purpose_bus.decode` can rebuild it; defining a second class with a
kind already taken raises :class:`TypeError` at once.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import os
import time
import types
import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import attrs

from ._frozen import EMPTY, FrozenDict
from ._hidden import check_field_names

__all__ = [
    "Event",
    "EventsDropped",
    "LaneFinished",
    "LaneStarted",
    "Log",
    "MessageDelta",
    "ReasoningSummary",
    "RunCancelled",
    "RunError",
    "RunFinished",
    "RunStarted",
    "StepFinished",
    "StepStarted",
    "ToolCall",
    "ToolResult",
    "Visibility",
    "event_class",
    "registered_kinds",
]

E = TypeVar("E", bound="Event")

#: The payload every event gets when none is given: shared, empty, read-only.
EMPTY_PAYLOAD: FrozenDict = EMPTY


class Visibility(enum.IntEnum):
    """Who may see an event, ordered from least to most privileged.

    A subscriber at level ``L`` receives the events whose visibility is ``<= L``;
    subscribers default to ``PUBLIC`` (least privilege).
    """

    #: Fit for any consumer, such as an end user's UI.
    PUBLIC = 0
    #: For the operators of the runtime: loggers, dashboards.
    INTERNAL = 1
    #: For the process itself; a bridge never exports it unless told to.
    PRIVATE = 2


_registry: dict[str, type[Event]] = {}
_span_prefix = os.urandom(4).hex()
_span_counter = itertools.count(1)


def new_span_id() -> str:
    """Return a span id unique in this process and very likely across processes
    (a random per-process prefix and a counter)."""
    return f"{_span_prefix}{next(_span_counter):08x}"


def event_class(kind: str) -> type[Event]:
    """Return the event class registered for *kind*.

    :raises KeyError: if no class has that kind
    """
    return _registry[kind]


def registered_kinds() -> Mapping[str, type[Event]]:
    """Return a read-only view of the kind registry (kind -> class)."""
    return MappingProxyType(_registry)


def registered_class(kind: str) -> type[Event] | None:
    """The event class registered for *kind*, or ``None``."""
    return _registry.get(kind)


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):
        return "ClassVar" in annotation
    return annotation is ClassVar or typing.get_origin(annotation) is ClassVar


def _field_names(cls: type) -> list[str]:
    """The names of *cls*'s own fields as far as they are known when the class
    is made: its annotations (``ClassVar`` ones left out) and, once attrs has
    built it, every attrs field (mixins' and ``these=`` too)."""
    names = [
        name
        for name, annotation in inspect.get_annotations(cls).items()
        if not _is_class_var(annotation)
    ]
    names += [a.name for a in cls.__dict__.get("__attrs_attrs__", ())]
    return names


def _register(cls: type[Event]) -> None:
    check_field_names(cls, _field_names(cls))
    _chain_post_init(cls)
    kind = cls.__dict__.get("kind")
    if kind is None:
        return  # an abstract intermediate class: no kind of its own
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__qualname__}.kind must be a non-empty string")
    other = _registry.get(kind)
    # attrs rebuilds a slotted class, so the same class is seen twice: the rebuilt
    # one (same module and qualified name) replaces the first.
    if other is not None and (other.__module__, other.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(
            f"event kind {kind!r} of {cls.__module__}.{cls.__qualname__} is already "
            f"registered by {other.__module__}.{other.__qualname__}"
        )
    _registry[kind] = cls


@attrs.frozen(kw_only=True)
class Event:
    """The envelope every event shares; subclass it (decorated with
    ``@attrs.frozen(kw_only=True)``) and give the subclass a unique ``kind``.

    Events are immutable. The bus never mutates one: it stamps ``seq`` and
    ``offset`` on a new instance and hands that one out.
    """

    #: The event's type name, unique across all event classes ("run.finished").
    kind: ClassVar[str]
    #: Whether this event ends its run; terminal events are never dropped.
    terminal: ClassVar[bool] = False

    #: The run this event belongs to.
    run_id: str
    #: The parallel lane of the run that produced it.
    lane_id: str = "main"
    #: Who may see it (see :class:`Visibility`).
    visibility: Visibility = Visibility.PUBLIC
    #: Free-form JSON data, held read-only (a :class:`~purpose_bus.FrozenDict`).
    payload: Mapping[str, Any] = EMPTY_PAYLOAD
    #: A unique id of this event, generated.
    span_id: str = attrs.field(factory=new_span_id)
    #: The span this one belongs to, if any.
    parent_span_id: str | None = None
    #: Wall-clock time of creation, in seconds since the epoch.
    ts: float = attrs.field(factory=time.time)
    #: Position in its ``(run_id, lane_id)``: 1, 2, 3 ... (0 until the bus stamps it).
    seq: int = 0
    #: Position in the bus that accepted it: 1, 2, 3 ... (0 until stamped).
    offset: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    def __attrs_post_init__(self) -> None:
        """Admission (see :mod:`purpose_bus._admission`): check every field
        against its annotation and freeze every container, in place.

        :raises TypeError: for a field of the wrong type
        :raises ValueError: for a value of the right type JSON cannot carry
        """
        admit = _admitters.get(type(self))
        if admit is None:
            from ._admission import admitter

            admit = admitter(type(self))
        admit(self)


#: Filled by :func:`purpose_bus._admission.admitter` (the same dict).
_admitters: dict[type[Event], Callable[[Event], None]] = {}


def _admits(method: object) -> bool:
    """Whether *method* (a class's ``__attrs_post_init__``) runs admission."""
    return getattr(method, "_purpose_bus_admits", False) is True


def _chain_post_init(cls: type[Event]) -> None:
    """Make sure constructing *cls* runs admission. A class of its own gets
    :func:`_admit_first`, which on the first event made puts the class's
    generated admission in its place (one call less per event than the
    dispatch of ``Event.__attrs_post_init__``). A class that defines its own
    ``__attrs_post_init__`` (or inherits one from a mixin that comes before
    :class:`Event` in its MRO, or sets it to ``None``) gets a wrapper that
    admits the event, runs that method, and admits again (the method may
    have set derived fields). (attrs rebuilds a slotted class, so this runs
    twice: the second time the wrapper is made anew around the user's
    function, whose ``__class__`` cell, which ``super()`` reads, is pointed
    at the rebuilt class, as attrs does for the methods it sees.)"""
    mine = "__attrs_post_init__" in cls.__dict__  # not a mixin's, shared
    found = getattr(cls, "__attrs_post_init__", None)
    own = getattr(found, "__wrapped__", found)
    if own is None or own is _admit_first or own is _event_post_init:
        cls.__attrs_post_init__ = _admit_first  # type: ignore[method-assign]
        return
    if not mine and _admits(found):
        if hasattr(found, "__wrapped__"):
            return  # a parent's wrapper: it admits whatever class it is given
        cls.__attrs_post_init__ = _admit_first  # type: ignore[method-assign]
        return  # (a parent's generated admission is the parent's fields')
    if mine and isinstance(own, types.FunctionType) and own.__closure__:
        for name, cell in zip(own.__code__.co_freevars, own.__closure__, strict=True):
            if name == "__class__":
                cell.cell_contents = cls

    def __attrs_post_init__(self: Event) -> None:
        _event_post_init(self)
        own(self)
        _event_post_init(self)

    __attrs_post_init__._purpose_bus_admits = True  # type: ignore[attr-defined]
    __attrs_post_init__.__wrapped__ = own  # type: ignore[attr-defined]
    __attrs_post_init__.__doc__ = getattr(own, "__doc__", None)
    cls.__attrs_post_init__ = __attrs_post_init__  # type: ignore[method-assign]


_event_post_init = Event.__attrs_post_init__
_event_post_init._purpose_bus_admits = True  # type: ignore[attr-defined]


def _admit_first(self: Event) -> None:
    """The ``__attrs_post_init__`` of an event class until its first event:
    admit it, and make the class's generated admission the method."""
    cls = type(self)
    admit = _admitters.get(cls)
    if admit is None:
        from ._admission import admitter

        admit = admitter(cls)
    if cls.__dict__.get("__attrs_post_init__") is _admit_first:
        cls.__attrs_post_init__ = admit  # type: ignore[method-assign,assignment]
    admit(self)


_admit_first._purpose_bus_admits = True  # type: ignore[attr-defined]


def admits_when_made(cls: type[Event]) -> bool:
    """Whether making an instance of *cls* runs admission: its
    ``__attrs_post_init__`` admits, and its ``__init__`` (attrs') calls it."""
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    return (
        _admits(getattr(cls, "__attrs_post_init__", None))
        and code is not None
        and "__attrs_post_init__" in code.co_names
    )


def slot_setter(cls: type[Event], name: str) -> Callable[[Event, Any], None]:
    for klass in cls.__mro__:
        descriptor = klass.__dict__.get(name)
        if descriptor is not None and hasattr(descriptor, "__set__"):
            return descriptor.__set__  # type: ignore[no-any-return]
    return lambda obj, value: object.__setattr__(obj, name, value)


def _copier(cls: type[Event]) -> Callable[[Event, int, int], Event]:
    """Generate ``stamp(event, seq, offset)`` for *cls*: a new instance whose slots
    are set directly (attrs' frozen ``__setattr__`` and ``__init__`` bypassed)."""
    names = [a.name for a in attrs.fields(cls)]
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = ["def stamp(event, seq, offset):", "    copy = new(cls)"]
    for index, name in enumerate(names):
        namespace[f"set{index}"] = slot_setter(cls, name)
        value = name if name in ("seq", "offset") else f"event.{name}"
        lines.append(f"    set{index}(copy, {value})")
    lines.append("    return copy")
    exec("\n".join(lines), namespace)  # the code is built from attrs field names
    return namespace["stamp"]  # type: ignore[no-any-return]


_stampers: dict[type[Event], Callable[[Event, int, int], Event]] = {}


def stamper(cls: type[Event]) -> Callable[[Event, int, int], Event]:
    """The (cached) function that stamps events of *cls*: see :func:`stamped`."""
    stamp = _stampers.get(cls)
    if stamp is None:
        stamp = _stampers[cls] = _copier(cls)
    return stamp


def stamped(event: E, seq: int, offset: int) -> E:
    """Return a copy of *event* with *seq* and *offset* set; *event* is untouched.

    Equivalent to ``attrs.evolve(event, seq=seq, offset=offset)`` without running
    ``__init__`` again, which makes it several times faster.
    """
    return stamper(type(event))(event, seq, offset)  # type: ignore[return-value]


# -- the built-in vocabulary of an agent run ----------------------------------


@attrs.frozen(kw_only=True)
class RunStarted(Event):
    """A run began."""

    kind = "run.started"


@attrs.frozen(kw_only=True)
class RunFinished(Event):
    """A run ended successfully (terminal)."""

    kind = "run.finished"
    terminal = True


@attrs.frozen(kw_only=True)
class RunError(Event):
    """A run ended with an error (terminal)."""

    kind = "run.error"
    terminal = True

    #: What went wrong, as text fit for the event's audience.
    error: str


@attrs.frozen(kw_only=True)
class RunCancelled(Event):
    """A run was cancelled before it finished (terminal)."""

    kind = "run.cancelled"
    terminal = True

    #: Why, if known.
    reason: str = ""


@attrs.frozen(kw_only=True)
class LaneStarted(Event):
    """A parallel lane of a run began."""

    kind = "lane.started"


@attrs.frozen(kw_only=True)
class LaneFinished(Event):
    """A parallel lane of a run ended."""

    kind = "lane.finished"


@attrs.frozen(kw_only=True)
class StepStarted(Event):
    """A step of a lane began."""

    kind = "step.started"

    #: The step's name.
    name: str = ""


@attrs.frozen(kw_only=True)
class StepFinished(Event):
    """A step of a lane ended."""

    kind = "step.finished"

    #: The step's name.
    name: str = ""


@attrs.frozen(kw_only=True)
class MessageDelta(Event):
    """A chunk of the model's visible answer, streamed."""

    kind = "message.delta"

    #: The text of this chunk.
    text: str


@attrs.frozen(kw_only=True)
class ToolCall(Event):
    """The agent called a tool."""

    kind = "tool.call"

    #: The tool's name.
    name: str
    #: The arguments, JSON-compatible.
    arguments: Mapping[str, Any] = EMPTY_PAYLOAD


@attrs.frozen(kw_only=True)
class ToolResult(Event):
    """A tool returned."""

    kind = "tool.result"

    #: The tool's name.
    name: str
    #: What it returned, JSON-compatible.
    result: Any = None


@attrs.frozen(kw_only=True)
class ReasoningSummary(Event):
    """A summary of the model's reasoning, safe to show: the only way reasoning
    reaches consumers (hidden chain-of-thought is rejected by the default guard)."""

    kind = "reasoning.summary"

    #: The summary text.
    summary: str


@attrs.frozen(kw_only=True)
class Log(Event):
    """A log line from the runtime."""

    kind = "log"

    #: The message.
    message: str
    #: The level name ("debug", "info", "warning", "error").
    level: str = "info"


@attrs.frozen(kw_only=True)
class EventsDropped(Event):
    """A notice, made by the bus for one subscriber with ``gap_events=True``, that
    events it matched were lost before the event that follows this notice.

    ``run_id`` and ``lane_id`` are those of the first event lost; for offsets
    history no longer held (``exact`` is ``False``) they are the subscription's
    own single run and lane if its filter names exactly one, else empty
    strings. A notice never names the run or lane of an event the subscriber
    could not see. Never recorded in history; never counted as delivered.
    """

    kind = "events.dropped"

    #: How many matching events were lost.
    count: int
    #: The offset of the first event lost.
    first_offset: int
    #: The offset of the last event lost.
    last_offset: int
    #: ``False`` when the notice covers offsets that history no longer held
    #: (``subscribe(after=...)`` with a cursor older than history): history
    #: cannot tell whether those events matched, so ``count`` is an upper bound
    #: and ``first_offset`` .. ``last_offset`` is a range of the bus's offsets,
    #: not necessarily of events this subscriber would have received.
    exact: bool = True
