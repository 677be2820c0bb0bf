"""Argument checks have one behaviour at every public entry point (see
``purpose_bus._validate``): the same bad value for an argument of the same
name raises the same exception with the same message, whether it goes to
``EventBus``, ``subscribe``, ``replay``, ``web.create_app``,
``agui.create_app``, ``parallel_merge`` or ``RedisBridge``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from purpose_bus import EventBus, parallel_merge
from purpose_bus import agui as agui
from purpose_bus import web as web
from purpose_bus.redis import RedisBridge

Entry = Callable[..., object]


def _subscribe(**kwargs: Any) -> object:
    return EventBus().subscribe(**kwargs)


def _replay(**kwargs: Any) -> object:
    return EventBus().replay(**kwargs)


def _web(**kwargs: Any) -> object:
    return web.create_app(EventBus(), **kwargs)


def _agui(**kwargs: Any) -> object:
    return agui.create_app(EventBus(), **kwargs)


def _merge(**kwargs: Any) -> object:
    return parallel_merge({}, **kwargs)


def _bridge(**kwargs: Any) -> object:
    return RedisBridge(EventBus(), **kwargs)


#: (entry point, argument, minimum) for every count: an int, not a bool.
COUNTS: list[tuple[Entry, str, int]] = [
    (EventBus, "buffer_size", 1),
    (EventBus, "history_size", 0),
    (EventBus, "thread_buffer_size", 1),
    (EventBus, "max_runs", 1),
    (_subscribe, "buffer_size", 1),
    (_subscribe, "after", 0),
    (_replay, "after", 0),
    (_replay, "since_seq", 0),
    (_web, "buffer_size", 1),
    (_agui, "buffer_size", 1),
    (_agui, "max_body", 1),
    (_bridge, "maxlen", 1),
    (_bridge, "partitions", 1),
    (_bridge, "max_pending", 1),
]

#: Where a count may be None, meaning the default.
DEFAULTS_FOR_NONE: list[tuple[Entry, str]] = [
    (_subscribe, "buffer_size"),
    (_subscribe, "after"),
    (_web, "buffer_size"),
    (_agui, "buffer_size"),
]

#: (entry point, argument, minimum, strictly above it) for every duration.
SECONDS: list[tuple[Entry, str, float, bool]] = [
    (_web, "heartbeat", 0, True),
    (_agui, "heartbeat", 0, True),
    (_web, "retry", 0, False),
    (_bridge, "linger", 0, False),
    (_bridge, "close_timeout", 0, False),
]

#: (entry point, argument) for every switch: a bool, never truth-tested.
FLAGS: list[tuple[Entry, str]] = [
    (EventBus, "strict"),
    (_subscribe, "replay"),
    (_subscribe, "gap_events"),
    (_merge, "strict"),
]

#: (entry point, argument) for every string.
TEXTS: list[tuple[Entry, str]] = [
    (_subscribe, "name"),
    (_agui, "path"),
    (_bridge, "url"),
    (_bridge, "prefix"),
    (_bridge, "client_name"),
]

BAD_TYPES: list[object] = ["8", 1.5, True, None, b"8"]


def _raised(entry: Entry, **kwargs: Any) -> tuple[type[BaseException], str]:
    with pytest.raises((TypeError, ValueError)) as info:
        entry(**kwargs)
    return type(info.value), str(info.value)


def _ids(value: object) -> str:
    return getattr(value, "__name__", None) or repr(value)


class TestCounts:
    @pytest.mark.parametrize(("entry", "name", "minimum"), COUNTS, ids=_ids)
    @pytest.mark.parametrize("value", BAD_TYPES, ids=repr)
    def test_not_an_int_is_a_type_error(
        self, entry: Entry, name: str, minimum: int, value: object
    ) -> None:
        if value is None and (entry, name) in DEFAULTS_FOR_NONE:
            entry(**{name: None})
            return
        assert _raised(entry, **{name: value}) == (
            TypeError,
            f"{name} must be an int, not {type(value).__name__}",
        )

    @pytest.mark.parametrize(("entry", "name", "minimum"), COUNTS, ids=_ids)
    def test_below_the_minimum_is_a_value_error(
        self, entry: Entry, name: str, minimum: int
    ) -> None:
        assert _raised(entry, **{name: minimum - 1}) == (
            ValueError,
            f"{name} must be >= {minimum}, not {minimum - 1}",
        )


class TestSeconds:
    @pytest.mark.parametrize(("entry", "name", "minimum", "strict"), SECONDS, ids=_ids)
    @pytest.mark.parametrize("value", ["1", True, None, b"1"], ids=repr)
    def test_not_a_number_is_a_type_error(
        self, entry: Entry, name: str, minimum: float, strict: bool, value: object
    ) -> None:
        assert _raised(entry, **{name: value}) == (
            TypeError,
            f"{name} must be a number, not {type(value).__name__}",
        )

    @pytest.mark.parametrize(("entry", "name", "minimum", "strict"), SECONDS, ids=_ids)
    @pytest.mark.parametrize("value", [-1, math.inf, math.nan], ids=repr)
    def test_out_of_range_is_a_value_error(
        self, entry: Entry, name: str, minimum: float, strict: bool, value: float
    ) -> None:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        assert _raised(entry, **{name: value}) == (
            ValueError,
            f"{name} must be finite and {bound}, not {value}",
        )

    @pytest.mark.parametrize(("entry", "name", "minimum", "strict"), SECONDS, ids=_ids)
    def test_the_minimum_itself_only_where_not_strict(
        self, entry: Entry, name: str, minimum: float, strict: bool
    ) -> None:
        if strict:
            assert _raised(entry, **{name: minimum})[0] is ValueError
        else:
            entry(**{name: minimum})


class TestFlags:
    @pytest.mark.parametrize(("entry", "name"), FLAGS, ids=_ids)
    @pytest.mark.parametrize("value", ["no", 0, 1, None], ids=repr)
    def test_not_a_bool_is_a_type_error(
        self, entry: Entry, name: str, value: object
    ) -> None:
        assert _raised(entry, **{name: value}) == (
            TypeError,
            f"{name} must be a bool, not {type(value).__name__}",
        )


class TestTexts:
    @pytest.mark.parametrize(("entry", "name"), TEXTS, ids=_ids)
    @pytest.mark.parametrize("value", [3, b"x", ["x"]], ids=repr)
    def test_not_a_str_is_a_type_error(
        self, entry: Entry, name: str, value: object
    ) -> None:
        assert _raised(entry, **{name: value}) == (
            TypeError,
            f"{name} must be a str, not {type(value).__name__}",
        )

    @pytest.mark.parametrize("value", [3, None, b"r"], ids=repr)
    async def test_a_run_id_that_is_not_a_str(self, value: object) -> None:
        """Checked before the bridge is open (its other arguments go to
        ``subscribe``, checked there)."""
        bridge = RedisBridge(EventBus())
        expected = (TypeError, f"run_id must be a str, not {type(value).__name__}")
        assert _raised(bridge.subscribe_replay, run_id=value) == expected
        with pytest.raises(TypeError) as info:
            await bridge.replay(run_id=value)  # type: ignore[arg-type]
        assert (type(info.value), str(info.value)) == expected


class TestGuards:
    @pytest.mark.parametrize(
        ("guards", "message"),
        [
            (None, "guards must be a collection of callables, not NoneType"),
            (3, "guards must be a collection of callables, not int"),
            ("abc", "guards must be a collection of callables, not str"),
            ([3], "guards must hold callables, not 3"),
        ],
        ids=repr,
    )
    def test_not_a_collection_of_callables_is_a_type_error(
        self, guards: object, message: str
    ) -> None:
        assert _raised(EventBus, guards=guards) == (TypeError, message)


class TestTheSameEverywhere:
    """One table per argument name: every entry point that takes it answers a
    bad value alike (the tables above check each against the message)."""

    @pytest.mark.parametrize("value", ["8", 1.5, True, 0, -3], ids=repr)
    def test_buffer_size(self, value: object) -> None:
        entries: list[Entry] = [EventBus, _subscribe, _web, _agui]
        assert len({_raised(e, buffer_size=value) for e in entries}) == 1

    @pytest.mark.parametrize("value", ["1", True, math.inf, 0, -1], ids=repr)
    def test_heartbeat(self, value: object) -> None:
        assert _raised(_web, heartbeat=value) == _raised(_agui, heartbeat=value)

    @pytest.mark.parametrize("value", ["no", 0, None], ids=repr)
    def test_strict(self, value: object) -> None:
        assert _raised(EventBus, strict=value) == _raised(_merge, strict=value)


class _Lying(int):
    """An int that says it is never below anything."""

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return False


class _NoBraces(str):
    """A str that says it contains nothing."""

    def __contains__(self, other: object) -> bool:
        return False


class TestHostileValues:
    @pytest.mark.parametrize(("entry", "name", "minimum"), COUNTS, ids=_ids)
    def test_an_int_subclass_is_checked_as_the_int_it_is(
        self, entry: Entry, name: str, minimum: int
    ) -> None:
        """A subclass's own comparison cannot let a value below the minimum in."""
        value = _Lying(minimum - 1)
        assert _raised(entry, **{name: value}) == (
            ValueError,
            f"{name} must be >= {minimum}, not {minimum - 1}",
        )

    @pytest.mark.parametrize(("entry", "name", "minimum", "strict"), SECONDS, ids=_ids)
    @pytest.mark.parametrize("sign", [1, -1])
    def test_an_int_too_large_for_a_float_is_out_of_range(
        self, entry: Entry, name: str, minimum: float, strict: bool, sign: int
    ) -> None:
        """Not an OverflowError from math.isnan: a ValueError as for inf."""
        bound = f"> {minimum}" if strict else f">= {minimum}"
        assert _raised(entry, **{name: sign * 10**400}) == (
            ValueError,
            f"{name} must be finite and {bound}, not {sign * math.inf}",
        )

    @pytest.mark.parametrize(("entry", "name", "minimum", "strict"), SECONDS, ids=_ids)
    def test_an_int_subclass_is_checked_as_a_number(
        self, entry: Entry, name: str, minimum: float, strict: bool
    ) -> None:
        assert _raised(entry, **{name: _Lying(-1)})[0] is ValueError

    def test_a_str_subclass_cannot_hide_braces_in_a_prefix(self) -> None:
        assert _raised(_bridge, prefix=_NoBraces("a{b}"))[0] is ValueError

    def test_a_checked_value_is_kept_as_the_plain_type(self) -> None:
        bus = EventBus(buffer_size=_Lying(5))
        sub = bus.subscribe(name=_NoBraces("n"), buffer_size=_Lying(3))
        assert type(sub.name) is str
        assert type(sub.statistics().buffer_size) is int
        bridge = RedisBridge(bus, prefix=_NoBraces("p"))
        assert type(bridge.prefix) is str
