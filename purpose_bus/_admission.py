"""Admission: what makes an event one the bus can accept.

One rule, checked once, when the event is made (``__init__``, which
:func:`attrs.evolve` and :func:`purpose_bus.decode` run too): every field holds
a value of the type its annotation says, by the rules :func:`purpose_bus.encode`
applies (the codec's converters are the one source of those rules), and every
container is frozen: mappings become :class:`~purpose_bus.FrozenDict`, lists and
tuples become tuples, all the way down, copied from what the producer passed.
So an event that exists can be encoded, cannot change afterwards, and shares
nothing with its producer; the normal forms of every mapping key inside it are
known, for the hidden-reasoning guard.

What is left for the bus to check when an event is emitted (see
:func:`check_emittable`) is its class: one with a registered kind of its own.
Event classes whose field names are hidden-reasoning keys are refused when they
are defined (see :func:`purpose_bus._hidden.check_field_names`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from . import _codec
from ._events import (
    Event,
    _admitters,
    admits_when_made,
    registered_class,
    slot_setter,
)
from ._frozen import FrozenDict
from ._hidden import check_field_names

__all__ = ["admitter", "check_emittable", "freeze_mapping"]


def _refusal(cls: type[Event], name: str, exc: _codec._Invalid) -> Exception:
    kind = cls.__dict__.get("kind", getattr(cls, "kind", "?"))
    message = exc.describe(name, _codec._describe_python)
    return exc.error(f"cannot make a {kind!r} event ({cls.__qualname__}): {message}")


def _fixer(cls: type[Event], field: Any) -> Callable[[Any], Any]:
    """The slow path of one field: check and freeze *value* or raise the
    field's error (TypeError or ValueError) naming the kind and the field."""
    freeze = field.converter.freeze
    name = field.name

    def fix(value: Any) -> Any:
        try:
            return freeze(value, 0, set())
        except _codec._Invalid as exc:
            raise _refusal(cls, name, exc) from None
        except RecursionError:
            raise ValueError(
                f"cannot make a {cls.kind!r} event ({cls.__qualname__}): field "
                f"{name} is nested too deeply or holds itself"
            ) from None

    return fix


def _pass_check(field: Any, index: int, namespace: dict[str, Any]) -> str:
    """An expression true when ``v``, the field's value, is admitted as it is
    (the common case, inline); anything else goes through the field's fixer."""
    if field.check is not None:
        check: str = field.check
        if check == "type(v) is int":
            return "type(v) is int and -limit < v < limit"
        return check
    if field.converter is _codec._ANY:
        return "type(v) in as_is_any"
    if FrozenDict in field.converter.written_as_is:
        return "type(v) is FrozenDict"
    if field.converter.exact is not None:
        namespace[f"exact{index}"] = field.converter.exact
        return f"type(v) is exact{index}"
    return "False"


def _make_admitter(cls: type[Event]) -> Callable[[Event], None]:
    """Generate *cls*'s admission: each field read once, checked inline in the
    common case, and checked, frozen and set through its fixer otherwise. (The
    code is built from attrs field names, which are identifiers.)"""
    namespace: dict[str, Any] = {
        "FrozenDict": FrozenDict,
        "as_is_any": frozenset({str, bool, type(None), FrozenDict}),
        "isfinite": math.isfinite,
        "limit": _codec._INT_LIMIT,
    }
    fields = _codec.field_converters(cls)
    check_field_names(cls, [field.name for field in fields])
    # The common case, every field as it should be, is one expression; any
    # other goes field by field, each checked again and fixed if need be.
    checks = [
        "("
        + _pass_check(field, index, namespace).replace(
            "v", f"(v := event.{field.name})", 1
        )
        + ")"
        for index, field in enumerate(fields)
    ]
    lines = ["def admit(event):"]
    if checks:
        lines += ["    if " + " and ".join(checks) + ":", "        return"]
    for index, field in enumerate(fields):
        namespace[f"fix{index}"] = _fixer(cls, field)
        namespace[f"set{index}"] = slot_setter(cls, field.name)
        lines += [
            f"    v = event.{field.name}",
            f"    if not ({_pass_check(field, index, namespace)}):",
            f"        set{index}(event, fix{index}(v))",
        ]
    if len(lines) == 1:
        lines.append("    pass")
    exec("\n".join(lines), namespace)
    admit: Callable[[Event], None] = namespace["admit"]
    admit._purpose_bus_admits = True  # type: ignore[attr-defined]
    admit.__doc__ = f"Admission of a {cls.__qualname__}: see purpose_bus._admission."
    return admit


def admitter(cls: type[Event]) -> Callable[[Event], None]:
    """*cls*'s admission function (made on first use, then cached): it checks
    and freezes an instance's fields in place, during ``__init__``.

    :raises TypeError: for a field of the wrong type (or a non-string key)
    :raises ValueError: for a value of the right type JSON cannot carry (NaN,
        infinity, an int too large, nesting deeper than ``MAX_NESTING``)
    """
    admit = _admitters.get(cls)
    if admit is None:
        admit = _admitters[cls] = _make_admitter(cls)
    return admit


def freeze_mapping(mapping: Mapping[Any, Any]) -> FrozenDict:
    """*mapping* checked and frozen as a ``Mapping[str, Any]`` field would be.

    :raises TypeError: for a non-string key or a value JSON cannot carry
    :raises ValueError: for NaN, infinity, an int too large, or nesting too deep
    """
    try:
        frozen = _codec._freeze_json(mapping, 0, set())
    except _codec._Invalid as exc:
        raise exc.error(exc.describe("mapping", _codec._describe_python)) from None
    if type(frozen) is not FrozenDict:
        raise TypeError(f"expected a mapping, got {type(mapping).__name__}")
    return frozen


#: The classes found emittable, with the ``__attrs_post_init__`` they had then
#: (a class changed afterwards is looked at again).
_emittable: dict[type[Event], object] = {}


def check_emittable(cls: type[Event]) -> None:
    """Refuse an event class that has no registered kind of its own (an
    abstract base, or a subclass that did not set ``kind``), or whose
    construction does not run admission (its own ``__init__``, or an
    ``__attrs_post_init__`` set after the class was made).

    :raises TypeError: naming the class
    """
    kind = cls.__dict__.get("kind")
    post_init = getattr(cls, "__attrs_post_init__", None)
    registered = registered_class(kind) if isinstance(kind, str) else None
    if registered is cls and _emittable.get(cls) is post_init:
        return
    if registered is not cls:
        raise TypeError(
            f"{cls.__qualname__} cannot be emitted: it has no registered kind of "
            "its own (give the class a unique 'kind')"
        )
    if not admits_when_made(cls):
        raise TypeError(
            f"{cls.__qualname__} cannot be emitted: making one does not run "
            "admission (an __init__ of its own, or an __attrs_post_init__ "
            "replaced after the class was defined)"
        )
    _emittable[cls] = post_init
