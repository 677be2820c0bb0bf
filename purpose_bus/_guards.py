"""Guards: callables that look at an event before it is accepted and may refuse it.

A guard takes the event and returns ``None`` to let it pass, or a string: the
reason to reject it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from operator import attrgetter
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
    fields_of: dict[type[Event], tuple[tuple[str, ...], Callable[[Event], Any]]] = {}

    def guard(event: Event) -> str | None:
        cls = type(event)
        found = fields_of.get(cls)
        if found is None:
            names = tuple(a.name for a in attrs.fields(cls))
            found = fields_of[cls] = (names, attrgetter(*names))
        names, values = found
        for index, value in enumerate(values(event)):
            if type(value) in _SCALAR_TYPES or not value:
                continue  # the common case: a scalar, or an empty payload
            key = _find_key(value, folded)
            if key is not None:
                return (
                    f"{event.kind} event carries hidden reasoning ({names[index]} "
                    f"key {key!r}); publish a ReasoningSummary instead"
                )
        return None

    return guard


#: The default guard: :func:`hidden_reasoning_guard` with :data:`DEFAULT_HIDDEN_KEYS`.
reject_hidden_reasoning: Guard = hidden_reasoning_guard()
