"""Unit tests of :class:`purpose_bus._history.History`, the bus's ring of events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purpose_bus import Event, Log, RunFinished, ToolCall, Visibility
from purpose_bus._events import stamped
from purpose_bus._filters import make_filter
from purpose_bus._history import History

ALL = make_filter(visibility=Visibility.PRIVATE)


def make(
    offset: int,
    run_id: str = "r",
    lane_id: str = "main",
    seq: int | None = None,
    visibility: Visibility = Visibility.PUBLIC,
    cls: type[Event] = Log,
) -> Event:
    """A stamped event at *offset* (seq defaults to the offset)."""
    extra: dict[str, Any] = {Log: {"message": "m"}, ToolCall: {"name": "t"}}.get(
        cls, {}
    )
    event = cls(run_id=run_id, lane_id=lane_id, visibility=visibility, **extra)
    return stamped(event, offset if seq is None else seq, offset)


def filled(size: int, events: Iterable[Event]) -> History:
    history = History(size)
    for event in events:
        history.append(event)
    return history


def offsets(events: Iterable[Event]) -> list[int]:
    return [e.offset for e in events]


class TestRing:
    def test_empty(self) -> None:
        history = History(5)
        assert len(history) == 0
        assert history.size == 5
        assert history.newest == 0
        assert history.oldest == 1  # newest + 1: nothing held
        assert history.get(0) is None
        assert history.get(1) is None
        assert offsets(history.iter_after(0, None)) == []

    def test_fills_up_without_evicting(self) -> None:
        history = History(3)
        for offset in (1, 2, 3):
            assert history.append(make(offset)) is None
            assert len(history) == offset
            assert history.oldest == 1
            assert history.newest == offset

    def test_evicts_one_at_a_time_oldest_first(self) -> None:
        # The old bus halved its history when full (keeping the newest half);
        # this ring drops exactly one event per append, the oldest.
        history = History(4)
        events = [make(offset) for offset in range(1, 21)]
        for event in events[:4]:
            history.append(event)
        for n, event in enumerate(events[4:], start=4):
            evicted = history.append(event)
            assert evicted is events[n - 4]
            assert len(history) == 4
            assert history.oldest == event.offset - 3
            assert history.newest == event.offset
            assert offsets(history.iter_after(0, None)) == list(
                range(event.offset - 3, event.offset + 1)
            )

    def test_get(self) -> None:
        events = [make(offset) for offset in range(1, 11)]
        history = filled(4, events)
        for offset in range(7, 11):
            assert history.get(offset) is events[offset - 1]
        for offset in (-1, 0, 1, 6, 11, 12):
            assert history.get(offset) is None

    def test_iter_after(self) -> None:
        history = filled(5, (make(offset) for offset in range(1, 9)))
        assert offsets(history.iter_after(0, None)) == [4, 5, 6, 7, 8]
        assert offsets(history.iter_after(5, None)) == [6, 7, 8]
        assert offsets(history.iter_after(8, None)) == []
        assert offsets(history.iter_after(100, None)) == []

    def test_size_zero_holds_nothing(self) -> None:
        history = History(0)
        for offset in range(1, 4):
            event = make(offset)
            # Every event is evicted as it is recorded.
            assert history.append(event) is event
            assert len(history) == 0
            assert history.newest == offset
            assert history.oldest == offset + 1
            assert history.get(offset) is None
        assert history.select(ALL) == []
        assert offsets(history.iter_after(0, frozenset({"r"}))) == []

    def test_size_one(self) -> None:
        first, second = make(1), make(2)
        history = filled(1, [first])
        assert history.append(second) is first
        assert offsets(history.select(ALL)) == [2]
        assert history.get(1) is None
        assert history.get(2) is second


class TestRunIndex:
    def test_select_by_run_after_eviction(self) -> None:
        runs = ["a", "b", "a", "c", "a", "b", "a", "b"]
        events = [make(n, run_id=run) for n, run in enumerate(runs, start=1)]
        history = filled(5, events)  # holds offsets 4..8
        assert offsets(history.iter_after(0, frozenset({"a"}))) == [5, 7]
        assert offsets(history.iter_after(0, frozenset({"b"}))) == [6, 8]
        assert offsets(history.iter_after(0, frozenset({"c"}))) == [4]
        assert offsets(history.iter_after(6, frozenset({"a"}))) == [7]
        assert offsets(history.iter_after(0, frozenset({"a", "b"}))) == [5, 6, 7, 8]
        assert offsets(history.iter_after(0, frozenset({"zzz"}))) == []

    def test_runs_entirely_evicted_leave_no_index(self) -> None:
        history = History(3)
        for offset in range(1, 101):
            history.append(make(offset, run_id=f"run-{offset}"))
        # Only the runs still held are indexed: no per-run state leaks.
        assert history.run_ids == {"run-98", "run-99", "run-100"}

    def test_index_of_a_long_run_stays_bounded(self) -> None:
        history = History(10)
        for offset in range(1, 10_001):
            history.append(make(offset))
        # Evicted entries are compacted away as they accumulate.
        assert 10 <= history.index_slots("r") <= 2 * 10 + 33
        assert offsets(history.iter_after(0, frozenset({"r"}))) == list(
            range(9991, 10_001)
        )

    @given(
        size=st.integers(0, 12),
        runs=st.lists(st.sampled_from("abc"), max_size=60),
        after=st.integers(0, 70),
        wanted=st.sets(st.sampled_from("abcd"), min_size=1),
    )
    def test_index_agrees_with_ring(
        self, size: int, runs: list[str], after: int, wanted: set[str]
    ) -> None:
        history = filled(
            size, (make(n, run_id=run) for n, run in enumerate(runs, start=1))
        )
        held = list(history.iter_after(0, None))
        assert offsets(held) == list(range(max(1, len(runs) - size + 1), len(runs) + 1))
        expected = [e for e in held if e.offset > after and e.run_id in wanted]
        assert list(history.iter_after(after, frozenset(wanted))) == expected
        assert history.run_ids == {e.run_id for e in held}


class TestSelect:
    def events(self) -> list[Event]:
        return [
            make(1, run_id="a", lane_id="main", seq=1),
            make(2, run_id="a", lane_id="l1", seq=1, visibility=Visibility.INTERNAL),
            make(3, run_id="b", lane_id="main", seq=1, cls=ToolCall),
            make(4, run_id="a", lane_id="main", seq=2, visibility=Visibility.PRIVATE),
            make(5, run_id="a", lane_id="l1", seq=2, cls=ToolCall),
            make(6, run_id="b", lane_id="main", seq=2),
            make(7, run_id="a", lane_id="main", seq=3, cls=RunFinished),
        ]

    def select(self, history: History, **filters: object) -> list[int]:
        after = filters.pop("after", 0)
        since_seq = filters.pop("since_seq", 0)
        assert isinstance(after, int)
        assert isinstance(since_seq, int)
        flt = make_filter(**filters)  # type: ignore[arg-type]
        return offsets(history.select(flt, after=after, since_seq=since_seq))

    def test_filters(self) -> None:
        history = filled(10, self.events())
        assert self.select(history) == [1, 3, 5, 6, 7]  # PUBLIC by default
        assert self.select(history, visibility=Visibility.INTERNAL) == [
            1,
            2,
            3,
            5,
            6,
            7,
        ]
        assert self.select(history, visibility=Visibility.PRIVATE) == list(range(1, 8))
        assert self.select(history, run_id="a") == [1, 5, 7]
        assert self.select(history, run_id=["a", "b"]) == [1, 3, 5, 6, 7]
        assert self.select(history, lane_id="l1") == [5]
        assert self.select(history, kinds="tool.call") == [3, 5]
        assert self.select(history, kinds=[ToolCall, RunFinished]) == [3, 5, 7]
        assert self.select(history, run_id="b", kinds=Log) == [6]

    def test_since_seq(self) -> None:
        history = filled(10, self.events())
        vis = Visibility.PRIVATE
        assert self.select(history, since_seq=1, visibility=vis) == [4, 5, 6, 7]
        assert self.select(history, since_seq=2, visibility=vis) == [7]
        assert self.select(history, since_seq=3, visibility=vis) == []
        assert self.select(history, run_id="a", lane_id="l1", since_seq=1) == [5]

    def test_after(self) -> None:
        history = filled(10, self.events())
        assert self.select(history, after=3) == [5, 6, 7]
        assert self.select(history, after=3, run_id="a") == [5, 7]
        assert self.select(history, after=7) == []
        assert self.select(history, after=3, since_seq=2) == [7]

    def test_after_eviction(self) -> None:
        history = filled(3, self.events())  # holds 5, 6, 7
        assert self.select(history) == [5, 6, 7]
        assert self.select(history, run_id="a") == [5, 7]
        assert self.select(history, after=1, run_id="b") == [6]

    def test_returns_the_recorded_objects(self) -> None:
        events = self.events()
        history = filled(10, events)
        assert all(got is events[got.offset - 1] for got in history.select(ALL))


@pytest.mark.parametrize("size", [1, 2, 7])
def test_ring_matches_a_sliding_window(size: int) -> None:
    history = History(size)
    window: list[Event] = []
    for offset in range(1, 30):
        event = make(offset, run_id="ab"[offset % 2])
        evicted = history.append(event)
        window.append(event)
        expected_evicted = window.pop(0) if len(window) > size else None
        assert evicted is expected_evicted
        assert list(history.iter_after(0, None)) == window
        assert len(history) == len(window)
        assert history.oldest == window[0].offset
