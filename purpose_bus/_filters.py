"""Which events a subscriber (or a replay) wants: one filter object for both."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ._events import Event, Visibility, registered_class

__all__ = ["EventFilter", "KindsArg", "StrArg", "make_filter"]

#: One string or a collection of strings.
StrArg = str | Iterable[str] | None
#: One kind (a string or an event class) or a collection of them.
KindsArg = str | type[Event] | Iterable[str | type[Event]] | None


def _strings(name: str, value: StrArg) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset((value,))
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a string or a collection of strings")
    values = frozenset(value)
    if not values:
        raise ValueError(f"{name} is an empty collection: it would match nothing")
    for item in values:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings, not {type(item).__name__}")
    return values


def _kind_of(item: Any) -> str:
    if isinstance(item, str):
        if registered_class(item) is None:
            raise ValueError(
                f"kinds: unknown kind {item!r}: no event class has it (the "
                "registered kinds are the keys of purpose_bus.registered_kinds())"
            )
        return item
    if isinstance(item, type) and issubclass(item, Event):
        if "kind" in item.__dict__:
            return item.kind
        raise TypeError(
            f"kinds: {item.__qualname__} has no kind of its own (no event of it "
            "can be emitted); name a class with a 'kind', or a kind string"
        )
    raise TypeError(f"kinds must hold kind strings or event classes, not {item!r}")


def _kinds(value: KindsArg) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str | type):
        return frozenset((_kind_of(value),))
    if not isinstance(value, Iterable):
        raise TypeError("kinds must be a kind, an event class or a collection of them")
    kinds = frozenset(_kind_of(item) for item in value)
    if not kinds:
        raise ValueError("kinds is an empty collection: it would match nothing")
    return kinds


@attrs.frozen
class EventFilter:
    """A conjunction of optional conditions; ``None`` means "any"."""

    #: The runs wanted, or ``None`` for all.
    run_ids: frozenset[str] | None = None
    #: The lanes wanted, or ``None`` for all.
    lane_ids: frozenset[str] | None = None
    #: The kinds wanted (exact kind strings), or ``None`` for all.
    kinds: frozenset[str] | None = None
    #: The most privileged visibility wanted.
    visibility: Visibility = Visibility.PUBLIC

    @property
    def single_run(self) -> str | None:
        """The run id, if the filter is scoped to exactly one run."""
        if self.run_ids is not None and len(self.run_ids) == 1:
            return next(iter(self.run_ids))
        return None

    def lane_and_kind_matcher(self) -> Callable[[Event], bool] | None:
        """The lane and kind conditions as one function, or ``None`` if there
        are neither (for the bus's run index, which checks the run and the
        visibility itself)."""
        lanes, kinds = self.lane_ids, self.kinds
        if lanes is None:
            return None if kinds is None else lambda e: e.kind in kinds
        if kinds is None:
            return lambda e: e.lane_id in lanes
        return lambda e: e.lane_id in lanes and e.kind in kinds

    def matches(self, event: Event) -> bool:
        """Whether *event* passes every condition."""
        return (
            event.visibility <= self.visibility
            and (self.run_ids is None or event.run_id in self.run_ids)
            and (self.lane_ids is None or event.lane_id in self.lane_ids)
            and (self.kinds is None or event.kind in self.kinds)
        )


def make_filter(
    *,
    run_id: StrArg = None,
    lane_id: StrArg = None,
    kinds: KindsArg = None,
    visibility: Visibility | int = Visibility.PUBLIC,
) -> EventFilter:
    """Build an :class:`EventFilter` from the arguments users pass.

    :raises TypeError: for values of the wrong type
    :raises ValueError: for an empty collection, an unknown kind string or an
        unknown visibility
    """
    if isinstance(visibility, bool) or not isinstance(visibility, int):
        raise TypeError(f"visibility must be a Visibility, not {visibility!r}")
    try:
        level = Visibility(visibility)
    except ValueError:
        raise ValueError(f"unknown visibility {visibility!r}") from None
    return EventFilter(
        run_ids=_strings("run_id", run_id),
        lane_ids=_strings("lane_id", lane_id),
        kinds=_kinds(kinds),
        visibility=level,
    )
