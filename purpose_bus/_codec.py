"""The JSON codec: :func:`encode` an event to bytes, :func:`decode` it back.

The wire form is one compact UTF-8 JSON object: ``"kind"`` first, then every
field of the event's attrs class under its attribute name, in definition order::

    {"kind":"run.error","run_id":"r1","lane_id":"main","visibility":0,
     "payload":{},"span_id":"…","parent_span_id":null,"ts":1700000000.5,
     "seq":3,"offset":17,"error":"boom"}

``decode(encode(event)) == event`` holds for every registered event class, the
built-in ones and the user's own, with these conversions:

* :class:`~purpose_bus.Visibility` (like any enum with JSON scalar values) is
  written as its value, the integer ``0``, ``1`` or ``2``; names are not accepted.
* Every mapping (the ``payload``, a ``MappingProxyType``, any ``Mapping``) comes
  back as a plain ``dict``, which compares equal; its keys must be strings.
* Tuples are written as JSON arrays and come back as lists, except in a field
  annotated ``tuple[X, ...]``, which comes back as a tuple.
* A field annotated ``float`` (such as ``ts``) accepts an integer, which becomes
  a float (exact up to 2**53); NaN and infinities are not JSON and are refused.
* Fields declared with ``init=False`` are neither written nor accepted.

Field values are checked against the field annotations, both ways: ``str``,
``int`` (a bool is not an int), ``float``, ``bool``, ``None``, enums, unions and
``Optional``, ``Literal``, mappings and ``list``/``tuple``/``Sequence`` (with
their item types), ``Any``. An annotation of another kind accepts any JSON value.
``seq`` and ``offset`` are ints in 0 … :data:`MAX_COUNTER` (2**63-1, a signed
64-bit counter; 0 is an event the bus has not stamped yet, which may be
encoded too: ``emit`` accepts exactly what ``encode`` writes, and what is
emitted is unstamped). An :class:`~purpose_bus.EventsDropped` notice needs
``count >= 1`` and ``1 <= first_offset <= last_offset <= MAX_COUNTER``.
:func:`encode` refuses what
:func:`decode` would refuse, so whatever it writes can be read back (given a
``max_size`` large enough).

Limits: :func:`decode` refuses input over ``max_size`` bytes (default
:data:`MAX_DECODE_BYTES`, 1 MiB), checked before parsing; :func:`encode` has no
size limit. Nesting is limited to :data:`MAX_NESTING` (256) levels of arrays and
objects inside one field, the same limit both ways: deeper input raises
:exc:`~purpose_bus.DecodeError`, a deeper or self-containing value
``ValueError``, so whatever :func:`decode` accepts :func:`encode` writes back.
(Both need that many Python frames of headroom; from deeper in a call stack
than ~700 frames they refuse sooner.) A key repeated in one JSON object keeps
its last value, as in :func:`json.loads`. A lone surrogate in a string is
written as a ``\\udXXX`` escape. There is no pickle anywhere: only JSON values
go in or come out.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from math import isfinite as _isfinite
from typing import TYPE_CHECKING, Any, Literal, Union

import attrs

from ._deprecated import former_names
from ._events import Event, EventsDropped, event_class
from ._exceptions import DecodeError
from ._frozen import EMPTY, FrozenDict
from ._hidden import _normal as _normal_keys
from ._hidden import normal_key

__all__ = [
    "MAX_COUNTER",
    "MAX_DECODE_BYTES",
    "MAX_NESTING",
    "decode",
    "encode",
]

#: The default limit of :func:`decode`: input longer than this many bytes
#: (1 MiB) is refused before it is parsed.
MAX_DECODE_BYTES = 1 << 20

#: The deepest nesting of JSON arrays and objects inside one field that
#: :func:`decode` accepts and :func:`encode` writes (``{}`` is one level).
MAX_NESTING = 256

#: The largest ``seq`` or ``offset`` (and ``EventsDropped`` count or offset)
#: encoded or decoded: 2**63-1, what a signed 64-bit counter holds.
MAX_COUNTER = (1 << 63) - 1

# Former names (see _deprecated), hidden from type checkers: they would take a
# module __getattr__ to mean that any name exists.
if not TYPE_CHECKING:
    __getattr__ = former_names(__name__, "DEFAULT_MAX_SIZE", "MAX_DEPTH")

_Convert = Callable[[Any], Any]
#: ``freeze(value, depth, keys)``: see :attr:`_Converter.freeze`.
_Freeze = Callable[[Any, int, set[str]], Any]
_MISSING: Any = object()
_NONE_TYPE = type(None)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_JSON_SCALARS = (str, int, float, bool, _NONE_TYPE)


# -- errors inside a value -----------------------------------------------------


class _Invalid(Exception):
    """A value that does not fit its field; the path to it is collected as the
    exception unwinds through the containers holding it."""

    def __init__(
        self, problem: str, value: Any = _MISSING, error: type[Exception] = TypeError
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.value = value
        self.error = error
        self.path: list[str] = []  # innermost first

    def describe(self, field: str, describe_value: Callable[[Any], str]) -> str:
        where = field + "".join(reversed(self.path))
        got = "" if self.value is _MISSING else f", got {describe_value(self.value)}"
        return f"field {where}: {self.problem}{got}"


def _short(value: object, limit: int = 40) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_json(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return f"the number {_short(value)}"


def _describe_python(value: object) -> str:
    if isinstance(value, _JSON_SCALARS):
        return f"{type(value).__name__} {_short(value)}"
    return type(value).__name__


# -- converters: one per annotation, both directions ---------------------------


@attrs.frozen
class _Converter:
    #: What the annotation accepts, for messages ("str | None").
    expected: str
    #: Python value -> JSON value; raises _Invalid.
    encode: _Convert
    #: JSON value -> Python value; raises _Invalid.
    decode: _Convert
    #: Python value -> the value an event holds: checked as :attr:`encode`
    #: checks it, every mapping made a :class:`FrozenDict` and every list a
    #: tuple; raises _Invalid. *depth* is the number of arrays and objects
    #: around the value; the normal forms of the mapping keys met are added to
    #: *keys* (for the hidden-reasoning guard).
    freeze: _Freeze
    #: The types of the values that :attr:`freeze` leaves as JSON writes them
    #: (encode passes such values of an event on as they are).
    written_as_is: frozenset[type] = frozenset()
    #: A type whose instances :attr:`freeze` returns as they are (an enum).
    exact: type | None = None


def _finite(value: float) -> float:
    if math.isfinite(value):
        return value
    raise _Invalid(f"{value!r} is not JSON-compatible", error=ValueError)


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise _Invalid(f"key {_short(key)} ({type(key).__name__}) is not a string")


def _convert_items(value: Mapping[Any, Any], convert: _Convert) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        _check_key(key)
        try:
            out[key] = convert(item)
        except _Invalid as exc:
            exc.path.append(f"[{key!r}]")
            raise
    return out


def _convert_sequence(value: Any, convert: _Convert) -> list[Any]:
    out = []
    for index, item in enumerate(value):
        try:
            out.append(convert(item))
        except _Invalid as exc:
            exc.path.append(f"[{index}]")
            raise
    return out


def _to_json(value: Any) -> Any:
    """Return *value* as plain JSON data (dicts and lists), or raise _Invalid.

    The loops of :func:`_convert_items` and :func:`_convert_sequence` are
    inlined so that each level of nesting costs one frame, as in :mod:`json`'s
    parser: whatever depth :func:`decode` accepts, :func:`encode` accepts too
    (from a call stack as shallow).
    """
    if value is None or isinstance(value, (str, int)):  # int includes bool
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            _check_key(key)
            try:
                out[key] = _to_json(item)
            except _Invalid as exc:
                exc.path.append(f"[{key!r}]")
                raise
        return out
    if isinstance(value, (list, tuple)):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_to_json(item))
            except _Invalid as exc:
                exc.path.append(f"[{index}]")
                raise
        return items
    raise _Invalid(f"{type(value).__name__} is not JSON-compatible")


def _identity(value: Any) -> Any:
    return value  # parsed JSON is JSON already


#: The largest magnitude of an int JSON carries here: Python's own limit on
#: converting an int to and from decimal text (4,300 digits).
_INT_LIMIT = 10 ** (sys.int_info.default_max_str_digits or 4300)


class _TooDeep(_Invalid):
    """A value nested deeper than :data:`MAX_NESTING`: said of the whole field
    (a path hundreds of levels long would say nothing)."""

    def __init__(self) -> None:
        super().__init__(
            f"is nested too deeply (more than {MAX_NESTING} levels of arrays and "
            "objects) or holds itself",
            error=ValueError,
        )

    def describe(self, field: str, describe_value: Callable[[Any], str]) -> str:
        return f"field {field} {self.problem}"


def _too_deep_here() -> _Invalid:
    return _TooDeep()


#: Scalar types a JSON value may have as they are (int and float need a look).
_PLAIN = frozenset({str, bool, _NONE_TYPE})


def _freeze_items(
    value: Mapping[Any, Any], depth: int, keys: set[str], freeze: _Freeze
) -> FrozenDict:
    """*value* as a :class:`FrozenDict` of its items frozen by *freeze*, at
    *depth* (its own level). (The hot loop of admission: the normal-key cache
    and the common scalars are looked at inline.)"""
    if depth > MAX_NESTING:
        raise _too_deep_here()
    if not value:
        return EMPTY
    # The outermost mapping of a field keeps the key set of everything inside
    # it; nested ones add to it and keep none (no set per level).
    own: set[str] = set() if depth == 1 else keys
    add = own.add
    normal = _normal_keys.get
    items = {}
    any_json = freeze is _freeze_json
    for key, item in value.items():
        if type(key) is not str:
            _check_key(key)
            key = str.__str__(key)  # a str subclass: a plain str
        add(normal(key) or normal_key(key))
        kind = type(item)
        if any_json and (
            kind in _PLAIN
            or (kind is int and -_INT_LIMIT < item < _INT_LIMIT)
            or (kind is float and _isfinite(item))
        ):
            items[key] = item
            continue
        try:
            items[key] = freeze(item, depth, own)
        except _TooDeep:
            raise
        except _Invalid as exc:
            exc.path.append(f"[{key!r}]")
            raise
    if own is keys:
        return FrozenDict._make(items, None)
    keys |= own
    return FrozenDict._make(items, frozenset(own))


def _freeze_items_of(
    value: Any, depth: int, keys: set[str], freeze: _Freeze
) -> tuple[Any, ...]:
    """*value*, a list or tuple, as a tuple of its items frozen by *freeze*."""
    if depth > MAX_NESTING:
        raise _too_deep_here()
    if freeze is _freeze_json and all(type(item) in _PLAIN for item in value):
        return tuple(value)  # strings, bools and Nones: nothing to look into
    items = []
    for index, item in enumerate(value):
        try:
            items.append(freeze(item, depth, keys))
        except _TooDeep:
            raise
        except _Invalid as exc:
            exc.path.append(f"[{index}]")
            raise
    return tuple(items)


def _freeze_json(value: Any, depth: int, keys: set[str]) -> Any:
    """*value*, any JSON value, frozen (see :attr:`_Converter.freeze`)."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return value
        raise _Invalid("int too large for JSON", value, ValueError)
    if kind is float:
        return _finite(value)
    if kind is FrozenDict and depth == 0:
        keys |= value.normal_keys()  # made by this walk before: frozen, checked
        return value
    if isinstance(value, Mapping):
        return _freeze_items(value, depth + 1, keys, _freeze_json)
    if isinstance(value, (list, tuple)):
        return _freeze_items_of(value, depth + 1, keys, _freeze_json)
    if isinstance(value, str):
        return str.__str__(value)  # subclasses of JSON scalars: plain scalars
    if isinstance(value, int):
        return _freeze_json(int(value), depth, keys)
    if isinstance(value, float):
        return _finite(float(value))
    raise _Invalid(f"{kind.__name__} is not JSON-compatible")


#: The types of the values admission leaves in an ``Any`` field, which ``json``
#: writes as they are (an event's containers are frozen and checked when it is
#: made).
_FROZEN_JSON = frozenset({FrozenDict, tuple, str, int, float, bool, _NONE_TYPE})

_ANY = _Converter("any JSON value", _to_json, _identity, _freeze_json, _FROZEN_JSON)


def _checked(expected: str, accepts: Callable[[Any], bool]) -> _Converter:
    def check(value: Any) -> Any:
        if accepts(value):
            return value
        raise _Invalid(f"expected {expected}", value)

    def freeze(value: Any, depth: int, keys: set[str]) -> Any:
        return check(value)

    return _Converter(expected, check, check, freeze)


def _scalar(convert: _Convert) -> _Freeze:
    """The freeze of a scalar annotation: *convert* alone."""

    def freeze(value: Any, depth: int, keys: set[str]) -> Any:
        return convert(value)

    return freeze


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_float(value: Any) -> float:
    if isinstance(value, float):
        return _finite(float(value))
    if not _is_int(value):
        raise _Invalid("expected float", value)
    try:
        return float(value)
    except OverflowError:
        raise _Invalid("expected float (out of range)", value, ValueError) from None


def _to_counter(value: Any) -> int:
    if not _is_int(value):
        raise _Invalid("expected int", value)
    if value < 0:
        raise _Invalid("must not be negative", value, ValueError)
    if value > MAX_COUNTER:
        raise _Invalid(f"must be at most 2**63-1 ({MAX_COUNTER})", value, ValueError)
    return int(value)


def _to_int(value: Any) -> int:
    if not _is_int(value):
        raise _Invalid("expected int", value)
    if not -_INT_LIMIT < value < _INT_LIMIT:
        raise _Invalid("int too large for JSON", value, ValueError)
    return int(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected str", value)
    return str.__str__(value)  # a subclass: the plain str it holds


_SCALARS: dict[Any, _Converter] = {
    str: _Converter("str", _to_str, _to_str, _scalar(_to_str)),
    int: _Converter("int", _to_int, _to_int, _scalar(_to_int)),
    bool: _checked("bool", lambda value: isinstance(value, bool)),
    _NONE_TYPE: _checked("None", lambda value: value is None),
    None: _checked("None", lambda value: value is None),
    float: _Converter("float", _to_float, _to_float, _scalar(_to_float)),
}
#: ``seq`` and ``offset``: counters in 0 … MAX_COUNTER.
_COUNTER = _Converter(
    "int in 0 … 2**63-1", _to_counter, _to_counter, _scalar(_to_counter)
)


def _carried(value: Any) -> bool:
    """Whether JSON carries *value*, a member's value, exactly."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    return True


def _enum(tp: type[enum.Enum]) -> _Converter:
    # Members JSON cannot carry (NaN, infinities, huge ints) are refused.
    members = {(type(m.value), m.value): m for m in tp if _carried(m.value)}
    if not all(isinstance(value, _JSON_SCALARS) for _, value in members):
        return _ANY  # members are not JSON scalars: _to_json refuses them
    expected = f"{tp.__name__} (one of {', '.join(_short(v) for _, v in members)})"

    def from_json(value: Any) -> enum.Enum:
        try:
            return members[type(value), value]
        except (KeyError, TypeError):  # TypeError: unhashable
            raise _Invalid(f"expected {expected}", value) from None

    def to_json(value: Any) -> Any:
        return (value if isinstance(value, tp) else from_json(value)).value

    def freeze(value: Any, depth: int, keys: set[str]) -> Any:
        return value if type(value) is tp else from_json(to_json(value))

    return _Converter(expected, to_json, from_json, freeze, exact=tp)


def _literal(tp: Any) -> _Converter:
    values = typing.get_args(tp)
    if not all(type(v) in (str, int, bool, _NONE_TYPE) for v in values):
        return _ANY
    allowed = {(type(v), v) for v in values}
    expected = " | ".join(_short(v) for v in values)

    def accepts(value: Any) -> bool:
        return isinstance(value, _JSON_SCALARS) and (type(value), value) in allowed

    return _checked(expected, accepts)


def _optional(convert: Callable[..., Any], expected: str) -> Callable[..., Any]:
    def run(value: Any, *context: Any) -> Any:
        if value is None:
            return None
        try:
            return convert(value, *context)
        except _Invalid as exc:
            if exc.path or exc.value is not value:
                raise  # a problem inside the value: keep its own message
            raise _Invalid(f"expected {expected}", value, exc.error) from None

    return run


def _first_of(converts: list[Callable[..., Any]], expected: str) -> Callable[..., Any]:
    def run(value: Any, *context: Any) -> Any:
        for convert in converts:
            try:
                return convert(value, *context)
            except _Invalid:
                pass
        raise _Invalid(f"expected {expected}", value)

    return run


def _union(tp: Any) -> _Converter:
    args = typing.get_args(tp)
    members = [_converter(arg) for arg in args]
    expected = " | ".join(member.expected for member in members)
    if len(args) == 2 and _NONE_TYPE in args:  # Optional[X]: keep X's messages
        inner = members[1 - args.index(_NONE_TYPE)]
        return _Converter(
            expected,
            _optional(inner.encode, expected),
            _optional(inner.decode, expected),
            _optional(inner.freeze, expected),
        )
    encode = _first_of([member.encode for member in members], expected)
    decode = _first_of([member.decode for member in members], expected)
    freeze = _first_of([member.freeze for member in members], expected)
    return _Converter(expected, encode, decode, freeze)


def _mapping(tp: Any) -> _Converter:
    args = typing.get_args(tp)
    values = _converter(args[1]) if len(args) == 2 else _ANY
    expected = _type_name(tp)

    def to_json(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected {expected}", value)
        return _convert_items(value, values.encode)

    def from_json(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(f"expected {expected}", value)
        return value if values is _ANY else _convert_items(value, values.decode)

    def freeze(value: Any, depth: int, keys: set[str]) -> FrozenDict:
        if type(value) is FrozenDict and values is _ANY and depth == 0:
            keys |= value.normal_keys()
            return value
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected {expected}", value)
        return _freeze_items(value, depth + 1, keys, values.freeze)

    as_is = frozenset({FrozenDict}) if values is _ANY else frozenset()
    return _Converter(expected, to_json, from_json, freeze, as_is)


def _sequence(tp: Any, container: type) -> _Converter:
    args = typing.get_args(tp)
    homogeneous = len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)
    items = _converter(args[0]) if homogeneous else _ANY
    build: Callable[[list[Any]], Any] = tuple if container is tuple else list
    expected = _type_name(tp)

    def to_json(value: Any) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"expected {expected}", value)
        return _convert_sequence(value, items.encode)

    def from_json(value: Any) -> Any:
        if not isinstance(value, list):
            raise _Invalid(f"expected {expected}", value)
        if items is _ANY and build is list:
            return value
        return build(_convert_sequence(value, items.decode))

    def freeze(value: Any, depth: int, keys: set[str]) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"expected {expected}", value)
        return _freeze_items_of(value, depth + 1, keys, items.freeze)

    return _Converter(expected, to_json, from_json, freeze)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("collections.abc.", "")


def _converter(tp: Any) -> _Converter:
    """Return the converter for annotation *tp*; :data:`_ANY` if not understood."""
    if tp is Any or tp is object:
        return _ANY
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _union(tp)
    if origin is Literal:
        return _literal(tp)
    if origin is None and isinstance(tp, collections.abc.Hashable) and tp in _SCALARS:
        return _SCALARS[tp]
    container = tp if origin is None else origin
    if not isinstance(container, type):
        return _ANY
    if issubclass(container, enum.Enum):
        return _enum(container)
    if issubclass(container, Mapping):
        return _mapping(tp)
    if container in _SEQUENCES:
        return _sequence(tp, container)
    return _ANY


# -- per-class plans -------------------------------------------------------------


@attrs.frozen
class _Field:
    name: str  # the attribute, and the JSON key
    alias: str  # the __init__ keyword
    required: bool
    converter: _Converter
    #: An expression true when ``v`` is valid as it is both ways (then the
    #: fast paths skip the converter), or None.
    check: str | None = None
    #: Whether ``__init__`` takes it (the codec writes and reads only those).
    init: bool = True


@attrs.frozen
class _Plan:
    kind: str
    fields: tuple[_Field, ...]
    keys: frozenset[str]  # the JSON keys allowed, "kind" included
    required: frozenset[str]
    #: Event -> JSON data, or raise: then the general path runs (see _fast).
    encode_fast: Callable[[Any], dict[str, Any]] = attrs.field(eq=False)
    #: JSON data -> Event, or raise: then the general path runs.
    decode_fast: Callable[[dict[str, Any]], Any] = attrs.field(eq=False)


_plans: dict[type[Event], _Plan] = {}


def _annotation(annotation: Any, globalns: dict[str, Any], localns: Any) -> Any:
    def holder() -> None: ...

    holder.__annotations__ = {"x": annotation}
    try:
        return typing.get_type_hints(holder, globalns, localns)["x"]
    except Exception:
        return Any


def _field_hints(cls: type) -> dict[str, Any]:
    """Resolve the annotations of *cls*; one that cannot be resolved (a name
    local to a function, say) becomes ``Any`` without spoiling the others."""
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__)
        globalns = dict(vars(module)) if module is not None else {}
        for name, annotation in inspect.get_annotations(klass).items():
            hints[name] = _annotation(annotation, globalns, dict(vars(klass)))
    return hints


_CHECKS: dict[Any, str] = {
    str: "type(v) is str",
    bool: "type(v) is bool",
    int: "type(v) is int",  # a bool is not an int
    float: "type(v) is float and v - v == 0.0",  # not NaN, not infinite
    str | None: "v is None or type(v) is str",
    typing.Optional[str]: "v is None or type(v) is str",  # noqa: UP045
}


def _check_of(name: str, hint: Any) -> str | None:
    if name in ("seq", "offset"):
        return f"type(v) is int and 0 <= v <= {MAX_COUNTER}"
    try:
        return _CHECKS.get(hint)
    except TypeError:  # unhashable
        return None


def field_converters(cls: type[Event]) -> tuple[_Field, ...]:
    """Every attrs field of *cls* with its converter, in definition order
    (those with ``init=False`` too: the codec leaves them out, admission checks
    them); cached."""
    fields = _fields.get(cls)
    if fields is None:
        hints = _field_hints(cls)
        for a in attrs.fields(cls):
            if a.name not in hints:  # no annotation: attrs.field(type=...), or any
                hints[a.name] = Any if a.type is None else a.type
        if cls is not Event:  # the envelope keeps its types, whatever a subclass says
            hints.update(
                (name, hint)
                for name, hint in _field_hints(Event).items()
                if name in hints
            )
        fields = _fields[cls] = tuple(
            _Field(
                name=a.name,
                alias=a.alias or a.name,
                required=a.default is attrs.NOTHING,
                converter=(
                    _COUNTER
                    if a.name in ("seq", "offset")
                    else _converter(hints.get(a.name))
                ),
                check=_check_of(a.name, hints.get(a.name)),
                init=a.init,
            )
            for a in attrs.fields(cls)
        )
    return fields


_fields: dict[type[Event], tuple[_Field, ...]] = {}


def _make_plan(cls: type[Event]) -> _Plan:
    fields = tuple(field for field in field_converters(cls) if field.init)
    encode_fast, decode_fast = _fast(cls, fields)
    return _Plan(
        kind=cls.kind,
        fields=fields,
        keys=frozenset({"kind", *(f.name for f in fields)}),
        required=frozenset(f.name for f in fields if f.required),
        encode_fast=encode_fast,
        decode_fast=decode_fast,
    )


class _Slow(Exception):
    """A value the fast path leaves to the general one."""


def _fast(
    cls: type[Event], fields: tuple[_Field, ...]
) -> tuple[Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], Any]]:
    """Generate *cls*'s fast paths: straight-line code that takes the common
    case (every field present and of its simplest type) and raises on anything
    else, after which the general path runs and gives the exact error. (The
    code is built from attrs field names and aliases, which are identifiers.)"""
    namespace: dict[str, Any] = {
        "Slow": _Slow,
        "isfinite": math.isfinite,
        "cls": cls,
    }
    encode = ["def encode_fast(event):"]
    decode = ["def decode_fast(data):", f"    if len(data) != {len(fields) + 1}:"]
    decode.append("        raise Slow")
    for i, field in enumerate(fields):
        namespace[f"enc{i}"] = field.converter.encode
        namespace[f"dec{i}"] = field.converter.decode
        encode.append(f"    v = event.{field.name}")
        decode.append(f"    v = data[{field.name!r}]")
        if field.check is None:
            if field.converter.written_as_is:
                # What an event holds is frozen JSON already: json writes it.
                namespace[f"as_is{i}"] = field.converter.written_as_is
                encode.append(f"    f{i} = v if type(v) in as_is{i} else enc{i}(v)")
            else:
                encode.append(f"    f{i} = enc{i}(v)")
            decode.append(f"    f{i} = dec{i}(v)")
        else:
            for lines in (encode, decode):
                lines += [f"    if not ({field.check}):", "        raise Slow"]
                lines.append(f"    f{i} = v")
    items = ", ".join(f"{f.name!r}: f{i}" for i, f in enumerate(fields))
    encode.append(f"    return {{'kind': {cls.kind!r}, {items}}}")
    arguments = ", ".join(f"{f.alias}=f{i}" for i, f in enumerate(fields))
    decode.append(f"    return cls({arguments})")
    exec("\n".join(encode), namespace)
    exec("\n".join(decode), namespace)
    return namespace["encode_fast"], namespace["decode_fast"]


def _notice_problem(event: Event) -> str | None:
    """What is wrong with the numbers of an :class:`EventsDropped` notice
    (which rule failed), or ``None``: the range rule of the module docs, one
    check for both directions."""
    if not isinstance(event, EventsDropped):
        return None
    count, first, last = event.count, event.first_offset, event.last_offset
    if not 1 <= count <= MAX_COUNTER:
        return f"count must be in 1 … 2**63-1, got {_short(count)}"
    if not 1 <= first <= MAX_COUNTER:
        return f"first_offset must be in 1 … 2**63-1, got {_short(first)}"
    if not first <= last <= MAX_COUNTER:
        return (
            f"last_offset must be in first_offset ({first}) … 2**63-1,"
            f" got {_short(last)}"
        )
    return None


def _plan(cls: type[Event]) -> _Plan:
    try:
        return _plans[cls]
    except KeyError:
        plan = _plans[cls] = _make_plan(cls)
        return plan


# -- encode ------------------------------------------------------------------------

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
).encode
_dumps_ascii = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, check_circular=False, separators=(",", ":")
).encode


def _encoding_plan(event: Event) -> _Plan:
    # Only registered classes get a plan (decode looks them up in the registry,
    # which never forgets one), so a class with a plan needs no more checking.
    plan = _plans.get(type(event))
    return _checked_plan(event) if plan is None else plan


def _checked_plan(event: Event) -> _Plan:
    if not isinstance(event, Event):
        raise TypeError(f"encode() expects an Event, got {type(event).__name__}")
    cls = type(event)
    kind = getattr(cls, "kind", None)
    try:
        registered = isinstance(kind, str) and event_class(kind) is cls
    except KeyError:
        registered = False
    if not registered:
        raise TypeError(
            f"cannot encode {cls.__qualname__}: it is not a registered event class "
            "(an event class needs a 'kind' of its own)"
        )
    return _plan(cls)


def _encode_field(kind: str, field: _Field, value: Any) -> Any:
    try:
        return field.converter.encode(value)
    except _Invalid as exc:
        message = exc.describe(field.name, _describe_python)
        raise exc.error(f"cannot encode {kind!r} event: {message}") from None
    except RecursionError:
        raise ValueError(
            f"cannot encode {kind!r} event: field {field.name} is nested too deeply "
            "or holds itself"
        ) from None


def _too_deep(text: str, data: dict[str, Any]) -> str | None:
    """The name of the first field of *data* (an event's JSON object) that
    nests arrays and objects more than :data:`MAX_NESTING` levels deep, or None.

    The one depth check of both directions, on the same JSON data. An explicit
    stack, so it never raises RecursionError; *text* (the JSON of *data*) only
    lets shallow events skip the walk: depth needs that many brackets.
    """
    if text.count("[") + text.count("{") <= MAX_NESTING + 1:
        return None
    for name, value in data.items():
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, dict):
                children: Any = item.values()
            elif isinstance(item, list):
                children = item
            else:
                continue
            if depth > MAX_NESTING:
                return name
            stack.extend((child, depth + 1) for child in children)
    return None


def _dump(kind: str, data: dict[str, Any]) -> bytes:
    try:
        text = _dumps(data)
    except (ValueError, RecursionError) as exc:  # e.g. an int too long to print
        raise ValueError(f"cannot encode {kind!r} event: {exc}") from None
    deep = _too_deep(text, data)
    if deep is not None:
        raise ValueError(
            f"cannot encode {kind!r} event: field {deep} is nested too deeply "
            f"(more than {MAX_NESTING} levels of arrays and objects)"
        )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can escape it
        return _dumps_ascii(data).encode("ascii")


def encode(event: Event) -> bytes:
    """Return *event* as one compact UTF-8 JSON object (see the module docs).

    Not limited in size: the limit is the reader's (``decode(max_size=...)``).

    :raises TypeError: if *event* is not an :class:`~purpose_bus.Event`, or its
        class is not registered (it has no ``kind`` of its own), or a field holds
        a value its annotation does not allow or that is not JSON-compatible (a
        set, an object, a non-string mapping key); the message names the field
        and the path inside it, as in ``payload['x']``
    :raises ValueError: if a field holds a float that is NaN or infinite, a
        ``seq``/``offset`` outside 0 … 2**63-1, a structure nested too deeply
        (or holding itself), or an ``EventsDropped`` notice breaks its range
        rule (see the module docs)
    """
    plan = _encoding_plan(event)
    try:
        data = plan.encode_fast(event)
    except Exception:  # the general path gives the exact error, if there is one
        data = {"kind": plan.kind}
        for field in plan.fields:
            value = getattr(event, field.name)
            data[field.name] = _encode_field(plan.kind, field, value)
    problem = _notice_problem(event)
    if problem is not None:
        raise ValueError(f"cannot encode {plan.kind!r} event: {problem}")
    return _dump(plan.kind, data)


# -- decode ------------------------------------------------------------------------


def _check_size(size: int, max_size: int) -> None:
    if size == 0:
        raise DecodeError("empty input")
    if size > max_size:
        raise DecodeError(f"input is larger than the size limit of {max_size} bytes")


def _utf8_size(text: str, max_size: int) -> int:
    if len(text) > max_size or text.isascii():
        return len(text)  # a UTF-8 character takes at least one byte
    return len(text.encode("utf-8", "surrogatepass"))


def _bytes(data: memoryview) -> bytes:
    try:
        return data.tobytes()
    except ValueError as exc:  # a released memoryview
        raise DecodeError(f"input buffer cannot be read: {exc}") from None


def _text(data: bytes | bytearray | memoryview | str, max_size: int) -> str:
    if isinstance(data, str):
        _check_size(_utf8_size(data, max_size), max_size)
        return data
    if isinstance(data, memoryview):
        data = _bytes(data)
    elif not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"decode() expects bytes or str, got {type(data).__name__}")
    _check_size(len(data), max_size)
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"input is not valid UTF-8: {exc}") from None


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise DecodeError(
            f"input is not valid JSON: number {_short(text)} is too large"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"input is not valid JSON: {name} is not a JSON value")


_loads = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_reject_constant
).decode


def _parse(text: str) -> Any:
    try:
        return _loads(text)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("input is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long
        raise DecodeError(f"input is not valid JSON: {exc}") from None


def _event_class(data: dict[str, Any]) -> type[Event]:
    kind = data.get("kind", _MISSING)
    if kind is _MISSING:
        raise DecodeError("the JSON object has no 'kind'")
    if not isinstance(kind, str):
        raise DecodeError(f"'kind' must be a string, got {_describe_json(kind)}")
    try:
        return event_class(kind)
    except KeyError:
        raise DecodeError(f"unknown kind {_short(kind)}") from None


def _names(names: collections.abc.Set[str]) -> str:
    shown = sorted(names)[:5]
    more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
    return ", ".join(_short(name) for name in shown) + more


def _check_keys(plan: _Plan, data: dict[str, Any]) -> None:
    unknown = data.keys() - plan.keys
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        raise DecodeError(f"{plan.kind!r} event: unknown field{s} {_names(unknown)}")
    missing = plan.required - data.keys()
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise DecodeError(
            f"{plan.kind!r} event: missing required field{s} {_names(missing)}"
        )


def _decode_field(kind: str, field: _Field, value: Any) -> Any:
    try:
        return field.converter.decode(value)
    except _Invalid as exc:
        message = exc.describe(field.name, _describe_json)
        raise DecodeError(f"{kind!r} event: {message}") from None
    except RecursionError:
        raise DecodeError(
            f"{kind!r} event: field {field.name} is nested too deeply"
        ) from None


def _construct(cls: type[Event], plan: _Plan, data: dict[str, Any]) -> Event:
    _check_keys(plan, data)
    kwargs = {
        field.alias: _decode_field(plan.kind, field, data[field.name])
        for field in plan.fields
        if field.name in data
    }
    try:
        return cls(**kwargs)
    except Exception as exc:  # the user's validators or __attrs_post_init__
        raise DecodeError(
            f"{plan.kind!r} event: {cls.__qualname__} refused the fields: {exc}"
        ) from exc


def decode(
    data: bytes | bytearray | memoryview | str, *, max_size: int = MAX_DECODE_BYTES
) -> Event:
    """Return the event encoded in *data* by :func:`encode`.

    *data* is UTF-8 JSON, as bytes or already as text. It must be one JSON object
    holding a registered ``"kind"`` and the fields of that kind's class: every
    required one, no unknown one, each of the type its annotation declares (see
    the module docs). Mappings come back as plain dicts, arrays as lists.

    :param max_size: the most bytes of UTF-8 accepted (for text, its UTF-8
        length); larger input is refused before it is parsed
    :raises DecodeError: whatever is wrong with *data*, with a message saying
        what: empty, too large, not UTF-8, not JSON (NaN and infinities
        included), nested too deeply, not an object, a missing or unknown
        ``kind``, a missing, unknown or wrongly typed field, a ``seq`` or
        ``offset`` outside 0 … 2**63-1 (the message says which rule failed), an
        ``EventsDropped`` notice whose ``count`` is below 1 or whose offsets are
        out of order. No other exception escapes for any bytes or text.
    :raises TypeError: if *data* is not bytes, bytearray, memoryview or str
    :raises ValueError: if *max_size* is less than 1
    """
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    text = _text(data, max_size)
    parsed = _parse(text)
    if not isinstance(parsed, dict):
        raise DecodeError(f"expected a JSON object, got {_describe_json(parsed)}")
    deep = _too_deep(text, parsed)
    if deep is not None:
        raise DecodeError(
            f"field {_short(deep)} is nested too deeply "
            f"(more than {MAX_NESTING} levels of arrays and objects)"
        )
    cls = _event_class(parsed)
    try:
        plan = _plan(cls)
    except Exception as exc:  # a broken user class; never seen for built-ins
        raise DecodeError(f"cannot decode {cls.__qualname__}: {exc}") from exc
    try:
        event: Event = plan.decode_fast(parsed)
    except Exception:  # the general path gives the exact error, if there is one
        event = _construct(cls, plan, parsed)
    problem = _notice_problem(event)
    if problem is not None:
        raise DecodeError(f"{plan.kind!r} event: {problem}")
    return event
