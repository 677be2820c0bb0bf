"""Guards: callables that look at an event before it is accepted and may refuse it.

A guard takes the event and returns ``None`` to let it pass, or a string: the
reason to reject it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs

from ._events import Event

__all__ = [
    "DEFAULT_HIDDEN_KEYS",
    "Guard",
    "hidden_reasoning_guard",
    "reject_hidden_reasoning",
]

#: A guard: returns ``None`` to accept the event, or the reason to reject it.
Guard = Callable[[Event], "str | None"]

#: Keys that carry a model's raw, hidden reasoning. Matched case-insensitively.
DEFAULT_HIDDEN_KEYS: frozenset[str] = frozenset(
    {
        "chain_of_thought",
        "chain-of-thought",
        "chainofthought",
        "hidden_reasoning",
        "raw_reasoning",
        "reasoning_trace",
        "internal_reasoning",
        "thinking",
        "cot",
    }
)

_SCALARS = (str, bytes, bytearray, memoryview, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)


def _find_key(value: Any, keys: frozenset[str]) -> str | None:
    """The first of *keys* found in *value* at any depth (an explicit stack: no
    recursion limit to hide behind; containers seen twice are skipped)."""
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, _SCALARS) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            for key in item:
                if isinstance(key, str) and key.casefold() in keys:
                    return key
            stack.extend(item.values())
        elif isinstance(item, Collection):
            stack.extend(item)  # any sequence or set: list, deque, UserList ...
    return None


def hidden_reasoning_guard(keys: Iterable[str] = DEFAULT_HIDDEN_KEYS) -> Guard:
    """Return a guard that rejects events carrying any of *keys*, at any depth, in
    the payload or in any other field that holds mappings or sequences (tool
    arguments, tool results). Keys are matched case-insensitively.

    Reasoning should reach consumers only as a
    :class:`~purpose_bus.ReasoningSummary` event.
    """
    folded = frozenset(key.casefold() for key in keys)
    if not folded:
        raise ValueError("hidden_reasoning_guard needs at least one key")
    checks: dict[type[Event], Guard] = {}

    def guard(event: Event) -> str | None:
        check = checks.get(type(event))
        if check is None:
            check = checks[type(event)] = _field_checker(type(event), folded)
        return check(event)

    return guard


def _field_checker(cls: type[Event], keys: frozenset[str]) -> Guard:
    """Generate the guard's check for *cls*: each field read once, scalars and
    empty containers skipped inline, the rest searched for *keys*. (The code is
    built from attrs field names, which are identifiers.)"""
    namespace: dict[str, Any] = {
        "scalars": _SCALAR_TYPES,
        "find": _find_key,
        "keys": keys,
        "reason": _reason,
    }
    lines = ["def check(event):"]
    for field in attrs.fields(cls):
        lines += [
            f"    value = event.{field.name}",
            "    if type(value) is not str and type(value) not in scalars and value:",
            "        key = find(value, keys)",
            "        if key is not None:",
            f"            return reason(event, {field.name!r}, key)",
        ]
    lines.append("    return None")
    exec("\n".join(lines), namespace)
    return namespace["check"]  # type: ignore[no-any-return]


def _reason(event: Event, field: str, key: str) -> str:
    return (
        f"{event.kind} event carries hidden reasoning ({field} key {key!r}); "
        "publish a ReasoningSummary instead"
    )


#: The default guard: :func:`hidden_reasoning_guard` with :data:`DEFAULT_HIDDEN_KEYS`.
reject_hidden_reasoning: Guard = hidden_reasoning_guard()
