"""Argument checks, in one place with one behaviour: a value of the wrong type
raises :exc:`TypeError`, a value of the right type out of range raises
:exc:`ValueError`. Every public entry point (``EventBus``, ``subscribe``,
``replay``, ``receive_batch``, both ``create_app``, ``RedisBridge``,
``parallel_merge``) checks its arguments here, once; everything inside trusts
what passed. A message names the argument and what it must be: ``"buffer_size
must be an int, not str"``, ``"heartbeat must be finite and > 0, not inf"``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._overflow import Overflow

__all__ = ["callables", "count", "flag", "overflow_policy", "seconds", "text"]

_F = TypeVar("_F", bound=Callable[..., Any])


def count(name: str, value: int, minimum: int) -> int:
    """*value*, an int (not a bool) >= *minimum*, as a plain int (an int
    subclass's own comparisons and arithmetic are not trusted).

    :raises TypeError: if it is not an int
    :raises ValueError: if it is below *minimum*
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = int.__int__(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def seconds(name: str, value: float, minimum: float, *, strict: bool = False) -> float:
    """*value*, a finite number (not a bool) >= *minimum* (> it if *strict*),
    as a float; an int too large for a float is out of range.

    :raises TypeError: if it is not an int or a float
    :raises ValueError: if it is out of range, infinite or NaN
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    shown: float = (
        float.__float__(value) if isinstance(value, float) else int.__int__(value)
    )
    try:
        number = float(shown)
    except OverflowError:  # an int beyond any float: as out of range as inf
        number = shown = math.inf if shown > 0 else -math.inf
    low_enough = number <= minimum if strict else number < minimum
    if low_enough or math.isnan(number) or math.isinf(number):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be finite and {bound}, not {shown}")
    return number


def flag(name: str, value: bool) -> bool:
    """*value*, a bool: a switch is never truth-tested (``gap_events="no"``
    would otherwise mean yes).

    :raises TypeError: if it is not a bool
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def text(name: str, value: str) -> str:
    """*value*, a str, as a plain str (a str subclass's own methods, such as
    ``__contains__`` or ``__eq__``, are not trusted).

    :raises TypeError: if it is not a str
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return str.__str__(value)


def callables(name: str, value: Iterable[_F]) -> tuple[_F, ...]:
    """*value*, a collection of callables, as a tuple.

    :raises TypeError: if it is not a collection (a str is not one here), or
        holds something that is not callable
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a collection of callables, not {type(value).__name__}"
        )
    items = tuple(value)
    for item in items:
        if not callable(item):
            raise TypeError(f"{name} must hold callables, not {item!r}")
    return items


def overflow_policy(value: Any) -> Overflow:
    """*value* as an :class:`Overflow` (a member, or a member's value).

    :raises ValueError: if it names no policy
    """
    try:
        return Overflow(value)
    except ValueError:
        raise ValueError(
            f"unknown overflow policy {value!r}; use one of "
            + ", ".join(f"Overflow.{o.name}" for o in Overflow)
        ) from None
