"""Tests of :func:`purpose_bus._merge.parallel_merge`."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purpose_bus import Event, Log, MessageDelta
from purpose_bus._merge import parallel_merge

#: Marks the end of a lane in a pull log.
END = "end"


def ev(lane_id: str, seq: int, ts: float, text: str = "") -> MessageDelta:
    return MessageDelta(run_id="r", lane_id=lane_id, seq=seq, ts=ts, text=text)


def recorded(
    key: str, events: Iterable[Event], log: list[tuple[str, Event | str]]
) -> Iterator[Event]:
    """Yield *events*, logging each pull (and the final, exhausting one)."""
    for event in events:
        log.append((key, event))
        yield event
    log.append((key, END))


def reference_merge(lanes: Mapping[str, list[Event]]) -> list[Event]:
    """The specification, the slow way: repeatedly take the smallest head."""
    heads = {key: 0 for key in lanes}
    merged: list[Event] = []
    while True:
        candidates = [
            (e.ts, e.lane_id, e.seq, key)
            for key, at in heads.items()
            if at < len(lanes[key])
            for e in (lanes[key][at],)
        ]
        if not candidates:
            return merged
        key = min(candidates)[3]
        merged.append(lanes[key][heads[key]])
        heads[key] += 1


class TestOrdering:
    def test_interleaves_by_ts(self) -> None:
        a = [ev("a", 1, 1.0), ev("a", 2, 3.0), ev("a", 3, 5.0)]
        b = [ev("b", 1, 2.0), ev("b", 2, 4.0), ev("b", 3, 6.0)]
        merged = parallel_merge({"a": a, "b": b})
        assert merged == [a[0], b[0], a[1], b[1], a[2], b[2]]

    def test_equal_ts_resolved_by_lane_id(self) -> None:
        a = [ev("a", 1, 1.0)]
        b = [ev("b", 1, 1.0)]
        assert parallel_merge({"b": b, "a": a}) == [a[0], b[0]]

    def test_equal_ts_and_lane_id_resolved_by_seq(self) -> None:
        # Two iterables carrying events of the same lane_id: seq decides.
        first = [ev("x", 2, 1.0)]
        second = [ev("x", 1, 1.0)]
        assert parallel_merge({"k1": first, "k2": second}) == [second[0], first[0]]

    def test_full_ties_resolved_by_lane_key(self) -> None:
        # Equal on (ts, lane_id, seq): the lanes' keys decide, never the events
        # (which are not orderable, and must never be compared).
        one = ev("x", 1, 1.0, "one")
        two = ev("x", 1, 1.0, "two")
        assert parallel_merge({"k2": [two], "k1": [one]}) == [one, two]
        assert parallel_merge({"k1": [one], "k2": [two]}) == [one, two]

    def test_lane_id_not_lane_key_orders(self) -> None:
        # The ordering key is the event's lane_id; the mapping key only breaks
        # full ties.
        z = ev("a", 1, 1.0)
        a = ev("b", 1, 1.0)
        assert parallel_merge({"a": [a], "z": [z]}) == [z, a]

    def test_lane_keeps_its_order_when_ts_go_backwards(self) -> None:
        a = [ev("a", 1, 5.0), ev("a", 2, 1.0), ev("a", 3, 2.0)]
        b = [ev("b", 1, 3.0), ev("b", 2, 4.0)]
        merged = parallel_merge({"a": a, "b": b})
        assert [e for e in merged if e.lane_id == "a"] == a
        # a's head (ts 5) waits behind b's events; a's later events follow it.
        assert merged == [b[0], b[1], a[0], a[1], a[2]]

    def test_keeps_subclass_type(self) -> None:
        logs = [Log(run_id="r", message="m", ts=1.0, seq=1)]
        merged: list[Log] = parallel_merge({"a": logs})
        assert merged == logs

    def test_accepts_any_iterables(self) -> None:
        a = (ev("a", 1, 1.0), ev("a", 2, 3.0))
        b = [ev("b", 1, 2.0)]
        c = ev("c", 1, 4.0)
        merged = parallel_merge({"a": a, "b": iter(b), "c": (e for e in [c])})
        assert merged == [a[0], b[0], a[1], c]


class TestEmpty:
    def test_no_lanes(self) -> None:
        assert parallel_merge({}) == []

    def test_empty_lanes(self) -> None:
        assert parallel_merge({"a": [], "b": iter(())}) == []

    def test_empty_lane_among_others(self) -> None:
        b = [ev("b", 1, 1.0), ev("b", 2, 2.0)]
        assert parallel_merge({"a": [], "b": b, "c": ()}) == b


class TestDeterminism:
    def test_same_output_for_any_lane_order(self) -> None:
        lanes = {
            "a": [ev("a", 1, 1.0), ev("a", 2, 2.0), ev("a", 3, 2.0)],
            "b": [ev("b", 1, 1.0), ev("b", 2, 2.0)],
            "c": [ev("a", 1, 1.0), ev("c", 2, 2.0)],  # collides with lane a
        }
        outputs = {
            tuple(map(id, parallel_merge({k: lanes[k] for k in order})))
            for order in itertools.permutations(lanes)
        }
        assert len(outputs) == 1

    @given(st.data())
    def test_same_output_for_any_lane_order_property(self, data: st.DataObject) -> None:
        lanes = data.draw(lane_maps())
        order = data.draw(st.permutations(list(lanes)))
        shuffled = {key: lanes[key] for key in order}
        assert list(map(id, parallel_merge(shuffled))) == list(
            map(id, parallel_merge(lanes))
        )


class TestSeqGoingBackwards:
    def lanes(self) -> dict[str, list[MessageDelta]]:
        return {
            "a": [ev("a", 1, 1.0), ev("a", 3, 2.0), ev("a", 2, 3.0)],
            "b": [ev("b", 1, 1.5)],
        }

    def test_warns_names_lane_and_seqs(self, caplog: pytest.LogCaptureFixture) -> None:
        lanes = self.lanes()
        with caplog.at_level(logging.WARNING, logger="purpose_bus"):
            merged = parallel_merge(lanes)
        # The merge goes on, lane order kept.
        assert merged == [lanes["a"][0], lanes["b"][0], lanes["a"][1], lanes["a"][2]]
        [record] = caplog.records
        assert record.name == "purpose_bus"
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "'a'" in message
        assert "seq 2" in message
        assert "seq 3" in message

    def test_strict_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match=r"'a'.*seq 2 after seq 3"):
            parallel_merge(self.lanes(), strict=True)

    def test_equal_seq_is_not_backwards(self, caplog: pytest.LogCaptureFixture) -> None:
        a = [ev("a", 1, 1.0), ev("a", 1, 2.0)]
        with caplog.at_level(logging.WARNING, logger="purpose_bus"):
            assert parallel_merge({"a": a}, strict=True) == a
        assert not caplog.records

    def test_monotonic_lanes_do_not_warn(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        a = [ev("a", 1, 3.0), ev("a", 2, 1.0)]  # ts backwards, seq forwards: fine
        with caplog.at_level(logging.WARNING, logger="purpose_bus"):
            parallel_merge({"a": a, "b": [ev("b", 5, 0.0)]}, strict=True)
        assert not caplog.records

    def test_seq_is_checked_per_lane(self) -> None:
        # A high seq in one lane does not make a low seq in another backwards.
        a = [ev("a", 9, 1.0)]
        b = [ev("b", 1, 2.0), ev("b", 2, 3.0)]
        assert parallel_merge({"a": a, "b": b}, strict=True) == [a[0], *b]


class TestLaziness:
    def test_pulls_one_event_per_lane_at_a_time(self) -> None:
        a = [ev("a", 1, 1.0), ev("a", 2, 3.0), ev("a", 3, 5.0)]
        b = [ev("b", 1, 2.0), ev("b", 2, 4.0)]
        log: list[tuple[str, Event | str]] = []
        merged = parallel_merge(
            {"a": recorded("a", a, log), "b": recorded("b", b, log)}
        )
        assert merged == [a[0], b[0], a[1], b[1], a[2]]
        # One head per lane first, then each lane is pulled again only right
        # after its previous event was placed: never read ahead, never copied.
        assert log == [
            ("a", a[0]),
            ("b", b[0]),
            ("a", a[1]),  # after a[0] was placed
            ("b", b[1]),  # after b[0]
            ("a", a[2]),  # after a[1]
            ("b", END),  # after b[1]
            ("a", END),  # after a[2]
        ]

    @given(st.data())
    def test_pull_order_follows_merge_order(self, data: st.DataObject) -> None:
        lanes = data.draw(lane_maps())
        log: list[tuple[str, Event | str]] = []
        merged = parallel_merge(
            {key: recorded(key, events, log) for key, events in lanes.items()}
        )
        lane_of = {id(e): key for key, events in lanes.items() for e in events}
        expected: list[tuple[str, Event | str]] = []
        position = dict.fromkeys(lanes, 0)

        def pull(key: str) -> None:
            at = position[key]
            position[key] += 1
            events = lanes[key]
            expected.append((key, events[at] if at < len(events) else END))

        for key in lanes:
            pull(key)
        for event in merged:
            pull(lane_of[id(event)])
        assert log == expected

    def test_endless_lane_is_not_copied(self) -> None:
        pulled = 0

        def endless() -> Iterator[Event]:
            # Endless for a lazy merge; an eager one fails here, not hangs.
            nonlocal pulled
            for n in itertools.count(1):
                pulled += 1
                if pulled > 1000:
                    pytest.fail("the lane was read far ahead of the merge")
                yield ev("a", n, float(n))

        backwards = [ev("b", 2, 3.5), ev("b", 1, 4.5)]
        with pytest.raises(ValueError, match="'b'"):
            parallel_merge({"a": endless(), "b": backwards}, strict=True)
        # b's second event is pulled once b's first is placed, after a's events
        # with ts 1, 2 and 3: a has been pulled only as far as ts 4.
        assert pulled == 4

    def test_error_in_a_lane_propagates_when_pulled(self) -> None:
        log: list[str] = []

        def failing() -> Iterator[Event]:
            for n in (1, 2):
                log.append(f"a{n}")
                yield ev("a", n, float(n * 2))
            raise RuntimeError("lane a broke")

        def steady() -> Iterator[Event]:
            for n in range(1, 100):
                log.append(f"b{n}")
                yield ev("b", n, float(n * 2 + 1))

        with pytest.raises(RuntimeError, match="lane a broke"):
            parallel_merge({"a": failing(), "b": steady()})
        # Merge order: a1(2) b1(3) a2(4) -> a is pulled again and raises.
        assert log == ["a1", "b1", "a2", "b2"]


def lane_events(key: str) -> st.SearchStrategy[list[Event]]:
    """A lane's events: few distinct timestamps (many ties), lane ids that may
    collide with other lanes', seqs that usually increase."""
    one = st.builds(
        lambda lane_id, seq, ts, text: ev(lane_id, seq, float(ts), text),
        st.sampled_from([key, key, "shared"]),
        st.integers(0, 6),
        st.integers(0, 5),
        st.text(max_size=2),
    )
    return st.lists(one, max_size=8)


@st.composite
def lane_maps(draw: st.DrawFn) -> dict[str, list[Event]]:
    keys = draw(st.lists(st.sampled_from("abcdef"), unique=True, max_size=5))
    return {key: draw(lane_events(key)) for key in keys}


class TestProperties:
    @given(lane_maps())
    def test_permutation_of_inputs_with_lane_order_kept(
        self, lanes: dict[str, list[Event]]
    ) -> None:
        merged = parallel_merge(lanes)
        everything = [e for events in lanes.values() for e in events]
        assert sorted(map(id, merged)) == sorted(map(id, everything))
        position = {id(e): n for n, e in enumerate(merged)}
        for events in lanes.values():
            assert [position[id(e)] for e in events] == sorted(
                position[id(e)] for e in events
            )

    @given(lane_maps())
    def test_matches_the_specification(self, lanes: dict[str, list[Event]]) -> None:
        assert list(map(id, parallel_merge(lanes))) == list(
            map(id, reference_merge(lanes))
        )

    @given(lane_maps())
    def test_strict_raises_exactly_when_a_lane_goes_backwards(
        self, lanes: dict[str, list[Event]]
    ) -> None:
        backwards = any(
            later.seq < earlier.seq
            for events in lanes.values()
            for earlier, later in itertools.pairwise(events)
        )
        if backwards:
            with pytest.raises(ValueError, match="goes backwards"):
                parallel_merge(lanes, strict=True)
        else:
            assert parallel_merge(lanes, strict=True) == parallel_merge(lanes)
