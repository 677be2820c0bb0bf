"""Argument checks, in one place with one behaviour: a value of the wrong type
raises :exc:`TypeError`, a value of the right type out of range raises
:exc:`ValueError`. Every public entry point (``EventBus``, ``subscribe``,
``replay``, ``receive_batch``, ``create_app``, ``RedisBridge``) checks its
arguments here, once; everything inside trusts what passed."""

from __future__ import annotations

import math
from typing import Any

from ._overflow import Overflow

__all__ = ["count", "overflow_policy", "seconds"]


def count(name: str, value: int, minimum: int) -> int:
    """*value*, an int (not a bool) >= *minimum*.

    :raises TypeError: if it is not an int
    :raises ValueError: if it is below *minimum*
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def seconds(name: str, value: float, minimum: float, *, strict: bool = False) -> float:
    """*value*, a finite number (not a bool) >= *minimum* (> it if *strict*).

    :raises TypeError: if it is not an int or a float
    :raises ValueError: if it is out of range, infinite or NaN
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    low_enough = value <= minimum if strict else value < minimum
    if low_enough or math.isnan(value) or math.isinf(value):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be finite and {bound}, not {value}")
    return float(value)


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
