"""Guards: callables that look at an event before it is accepted and may refuse it.

A guard takes the event and returns ``None`` to let it pass, or a string: the
reason to reject it. Admission has already made every container of the event
frozen JSON (see :mod:`purpose_bus._admission`), so a guard meets nothing it
cannot search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._codec import field_converters
from ._deprecated import former_names
from ._events import Event
from ._frozen import FrozenDict
from ._hidden import DEFAULT_HIDDEN_KEYS, normal_key

__all__ = [
    "DEFAULT_HIDDEN_KEYS",
    "Guard",
    "create_hidden_reasoning_guard",
    "reject_hidden_reasoning",
]

#: A guard: returns ``None`` to accept the event, or the reason to reject it.
Guard = Callable[[Event], "str | None"]


def _hidden_in_tuple(value: tuple[Any, ...], keys: frozenset[str]) -> bool:
    """Whether a mapping inside *value*, a frozen field value, holds one of
    *keys*: a FrozenDict carries the normal forms of every key inside it, so
    only tuples are walked."""
    stack = list(value)
    while stack:
        item = stack.pop()
        if type(item) is FrozenDict:
            if not keys.isdisjoint(item.normal_keys()):
                return True
        elif type(item) is tuple:
            stack.extend(item)
    return False


def _first_hidden(value: Any, keys: frozenset[str]) -> str | None:
    """The first key of *value* (at any depth) whose normal form is in *keys*,
    as it is spelled there (for the message); the slow path of a rejection."""
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            for key in item:
                if isinstance(key, str) and normal_key(key) in keys:
                    return str(key)
            stack.extend(item.values())
        elif isinstance(item, Iterable) and not isinstance(item, str | bytes):
            stack.extend(item)
    return None


def create_hidden_reasoning_guard(keys: Iterable[str] = DEFAULT_HIDDEN_KEYS) -> Guard:
    """Return a guard that rejects events carrying any of *keys*: as a mapping
    key at any depth of the payload or of any other field (tool arguments,
    tool results), or as the name of a field of the event's class. Keys are
    compared in normal form: NFKC-normalised, case-folded, with everything that
    is not a letter or a digit removed (see :data:`DEFAULT_HIDDEN_KEYS`).

    The check costs about a set lookup per field that holds a mapping: events
    keep the normal forms of the keys inside them from when they were made.
    Reasoning should reach consumers only as a
    :class:`~purpose_bus.ReasoningSummary` event.

    :raises ValueError: if *keys* is empty (or holds only keys without a
        letter or digit)
    """
    if isinstance(keys, str):
        raise TypeError("keys must be a collection of strings, not one string")
    normal = frozenset(normal_key(key) for key in keys) - {""}
    if not normal:
        raise ValueError("create_hidden_reasoning_guard needs at least one key")
    checks: dict[type[Event], Guard] = {}

    def guard(event: Event) -> str | None:
        check = checks.get(type(event))
        if check is None:
            check = checks[type(event)] = _field_checker(type(event), normal)
        return check(event)

    return guard


def _field_checker(cls: type[Event], keys: frozenset[str]) -> Guard:
    """Generate the guard's check for *cls*: a field whose name is one of
    *keys* rejects every event; otherwise each field is read once, a
    FrozenDict's key set tested against *keys*, a tuple walked, anything else
    (a scalar) skipped; fields that admission keeps scalar are not read. (The
    code is built from attrs field names, which are identifiers.)"""
    for field in attrs.fields(cls):
        if normal_key(field.name) in keys:
            reason = (
                f"{cls.__qualname__} has a field named {field.name!r}, a hidden-"
                "reasoning key; publish a ReasoningSummary instead"
            )
            return lambda event: reason
    namespace: dict[str, Any] = {
        "FrozenDict": FrozenDict,
        "keys": keys,
        "walk": _hidden_in_tuple,
        "find": _first_hidden,
        "scalars": frozenset({str, int, float, bool}),
        "reason": _reason,
    }
    lines = ["def check(event):"]
    for field in field_converters(cls):
        if field.check is not None or field.converter.exact is not None:
            continue  # a scalar, by admission
        lines += [
            f"    v = event.{field.name}",
            "    t = type(v)",
            "    if t is FrozenDict:",
            "        k = v._keys",
            "        if not keys.isdisjoint(v.normal_keys() if k is None else k):",
            f"            return reason(event, {field.name!r}, v, keys)",
            "    elif t is tuple and v and walk(v, keys):",
            f"        return reason(event, {field.name!r}, v, keys)",
            # Not frozen: only object.__setattr__ gets such a value past
            # admission; it is searched the slow way all the same.
            "    elif v and t not in scalars and find(v, keys) is not None:",
            f"        return reason(event, {field.name!r}, v, keys)",
        ]
    lines.append("    return None")
    exec("\n".join(lines), namespace)
    return namespace["check"]  # type: ignore[no-any-return]


def _reason(event: Event, field: str, value: Any, keys: frozenset[str]) -> str:
    key = _first_hidden(value, keys)
    return (
        f"{event.kind} event carries hidden reasoning ({field} key {key!r}); "
        "publish a ReasoningSummary instead"
    )


#: The default guard: :func:`create_hidden_reasoning_guard` with
#: :data:`DEFAULT_HIDDEN_KEYS`.
reject_hidden_reasoning: Guard = create_hidden_reasoning_guard()

# Former names (see _deprecated), hidden from type checkers: they would take a
# module __getattr__ to mean that any name exists.
if not TYPE_CHECKING:
    __getattr__ = former_names(__name__, "hidden_reasoning_guard")
