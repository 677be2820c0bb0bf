"""Security properties: visibility and hidden reasoning.

- A subscriber never receives an event above its visibility level, live or
  replayed, nor an ``EventsDropped`` notice that names the run, the lane or the
  offsets of an event it could not see.
- Hidden reasoning (a configured key, in any casing, at any depth, in any field
  holding mappings or sequences) never reaches a subscriber, history, the
  statistics' text or a log message, whichever way it is emitted: ``emit`` and
  ``publish`` on the loop, ``emit`` and ``publish_from_thread`` from a thread, on
  a strict bus or not.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import attrs
import pytest
from helpers import drain
from hypothesis import given
from hypothesis import strategies as st
from model import event_carries_hidden_key
from strategies import (
    BUS_LANE_IDS,
    MACHINE_RUN_IDS,
    SECRET,
    VISIBILITIES,
    bus_events,
    hidden_reasoning_events,
    hidden_values,
)

from purpose_bus import (
    DEFAULT_HIDDEN_KEYS,
    Event,
    EventBus,
    EventRejected,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    ReasoningSummary,
    RunFinished,
    StepStarted,
    ToolCall,
    ToolResult,
    Visibility,
    create_hidden_reasoning_guard,
)


@attrs.frozen(kw_only=True)
class Annotation(Event):
    """A user-defined event with a mapping field and a sequence field."""

    kind = "tests.security.annotation"

    meta: Mapping[str, Any] = attrs.field(factory=dict)
    notes: tuple[Any, ...] = ()


class Records(logging.Handler):
    """Every record logged under ``purpose_bus``, from any thread, formatted
    with its traceback (a ``caplog`` that hypothesis examples may use)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))

    @classmethod
    def capture(cls) -> _Capture:
        return _Capture(cls())


@attrs.define
class _Capture:
    handler: Records
    _level: int = 0

    def __enter__(self) -> Records:
        logger = logging.getLogger("purpose_bus")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.handler)
        return self.handler

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("purpose_bus")
        logger.removeHandler(self.handler)
        logger.setLevel(self._level)


# -- visibility ---------------------------------------------------------------------

CLEAN_CLASSES = (MessageDelta, Log, ToolCall, StepStarted, MessageDelta, RunFinished)


def subscriber_specs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "visibility": VISIBILITIES,
            "buffer_size": st.integers(1, 4),
            "overflow": st.sampled_from([Overflow.DROP_OLDEST, Overflow.DROP_NEWEST]),
            "gap_events": st.just(True),
        },
        optional={
            "run_id": MACHINE_RUN_IDS
            | st.lists(MACHINE_RUN_IDS, min_size=1, max_size=2),
            "lane_id": BUS_LANE_IDS,
            "replay": st.booleans(),
        },
    )


def single(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(set(value)) == 1:
        return str(value[0])
    return ""


class TestVisibility:
    @given(
        before=st.lists(
            bus_events(classes=CLEAN_CLASSES, run_ids=MACHINE_RUN_IDS), max_size=40
        ),
        during=st.lists(
            st.tuples(
                bus_events(classes=CLEAN_CLASSES, run_ids=MACHINE_RUN_IDS),
                st.integers(0, 3),
            ),
            max_size=40,
        ),
        specs=st.lists(subscriber_specs(), min_size=1, max_size=4),
        history_size=st.sampled_from([0, 3, 10, 1_000]),
        cursors=st.lists(st.none() | st.integers(0, 42), min_size=4, max_size=4),
    )
    async def test_nothing_above_a_subscribers_level_and_no_revealing_notice(
        self,
        anyio_backend: str,
        before: list[Event],
        during: list[tuple[Event, int]],
        specs: list[dict[str, Any]],
        history_size: int,
        cursors: list[int | None],
    ) -> None:
        accepted: dict[int, Event] = {}
        afters = cursors[: len(specs)]
        received: list[list[Event]] = [[] for _ in specs]
        async with EventBus(history_size=history_size) as bus:
            for event in before:
                stamped = await bus.publish(event)
                if stamped is not None:
                    accepted[stamped.offset] = stamped
            subs = [
                bus.subscribe(**spec, after=after)
                for spec, after in zip(specs, afters, strict=True)
            ]
            for sub in subs:
                await sub.__aenter__()
            try:
                for event, reader in during:
                    stamped = await bus.publish(event)
                    if stamped is not None:
                        accepted[stamped.offset] = stamped
                    if reader < len(subs):
                        received[reader].extend(drain(subs[reader])[:2])
                await bus.aclose()
                for index, sub in enumerate(subs):
                    received[index].extend(drain(sub))
            finally:
                for sub in subs:
                    sub.close()
        for spec, after, got in zip(specs, afters, received, strict=True):
            check_visible(spec, after, got, accepted)

    async def test_bus_replay_defaults_to_public(self) -> None:
        async with EventBus() as bus:
            for level in Visibility:
                bus.emit(Log(run_id="r", message=level.name, visibility=level))
            for level in Visibility:
                got = bus.replay(visibility=level)
                assert [e.visibility for e in got] == [
                    v for v in Visibility if v <= level
                ]
            assert [e.visibility for e in bus.replay()] == [Visibility.PUBLIC]

    async def test_a_resume_notice_names_no_run_it_cannot_see(self) -> None:
        """``after=`` older than history: the notice counts the missing offsets
        (an upper bound, as DESIGN.md says: history cannot tell whether they
        matched), and names only the subscriber's own run and lane, never the
        run or lane of a private event."""
        async with EventBus(history_size=2) as bus:
            for n in range(10):
                bus.emit(
                    Log(
                        run_id="secret-run",
                        lane_id="x",
                        message=str(n),
                        visibility=Visibility.PRIVATE,
                    )
                )
            async with bus.subscribe(after=0, gap_events=True) as public:
                [notice] = drain(public)
            assert isinstance(notice, EventsDropped)
            assert (notice.run_id, notice.lane_id) == ("", "")
            assert (notice.first_offset, notice.last_offset) == (1, 8)
            assert notice.exact is False  # the offsets may not have matched
            assert "secret" not in repr(notice)


def check_visible(
    spec: dict[str, Any],
    after: int | None,
    got: list[Event],
    accepted: dict[int, Event],
) -> None:
    level = spec["visibility"]

    def visible(offset: int) -> Event | None:
        event = accepted.get(offset)
        if event is None or event.visibility > level:
            return None
        runs = spec.get("run_id")
        if runs is not None and event.run_id not in (
            [runs] if isinstance(runs, str) else runs
        ):
            return None
        if "lane_id" in spec and event.lane_id != spec["lane_id"]:
            return None
        return event

    for event in got:
        if not isinstance(event, EventsDropped):
            assert event.visibility <= level, (spec, event)
            assert visible(event.offset) == event
            continue
        assert event.visibility is Visibility.PUBLIC
        own = (single(spec.get("run_id")), single(spec.get("lane_id")))
        if (
            after is not None
            and event.first_offset == after + 1
            and (event.run_id, event.lane_id) == own
        ):
            # A resume cursor too old for history: the notice counts offsets
            # (an upper bound) and names the subscriber's own run and lane.
            continue
        first = visible(event.first_offset)
        assert first is not None, (spec, after, event)
        assert (event.run_id, event.lane_id) == (first.run_id, first.lane_id)
        assert visible(event.last_offset) is not None, event
        inside = [
            o for o in range(event.first_offset, event.last_offset + 1) if visible(o)
        ]
        assert event.count <= len(inside)


# -- hidden reasoning ---------------------------------------------------------------

PATHS = ("emit", "publish", "thread emit", "thread publish")


def annotations_with_hidden_reasoning() -> st.SearchStrategy[Event]:
    values = hidden_values(sorted(DEFAULT_HIDDEN_KEYS))
    return st.one_of(
        st.builds(lambda v: Annotation(run_id="r1", notes=(v,)), values),
        st.builds(lambda v: Annotation(run_id="r2", meta={"m": v}), values),
        st.builds(
            lambda v: ReasoningSummary(run_id="r3", summary="ok", payload={"x": v}),
            values,
        ),
    )


def clean_events() -> st.SearchStrategy[Event]:
    return st.one_of(
        bus_events(
            classes=(MessageDelta, Log, ToolCall, StepStarted), run_ids=MACHINE_RUN_IDS
        ),
        st.builds(
            lambda r: ReasoningSummary(run_id=r, summary="a summary"), MACHINE_RUN_IDS
        ),
    )


async def put(bus: EventBus, event: Event, path: str) -> object:
    """Emit *event* by *path*; return what it returned or raised."""
    try:
        if path == "emit":
            return bus.emit(event)  # type: ignore[func-returns-value]
        if path == "publish":
            return await bus.publish(event)
        if path == "thread emit":
            return await anyio.to_thread.run_sync(bus.emit, event)
        return await anyio.to_thread.run_sync(bus.publish_from_thread, event)
    except EventRejected as exc:
        return exc


def assert_no_secret(text: str) -> None:
    assert SECRET not in text
    assert SECRET.lower() not in text.lower()


class TestHiddenReasoning:
    @given(
        ops=st.lists(
            st.tuples(
                st.one_of(
                    hidden_reasoning_events(run_ids=MACHINE_RUN_IDS),
                    annotations_with_hidden_reasoning(),
                    clean_events(),
                ),
                st.sampled_from(PATHS),
            ),
            min_size=1,
            max_size=25,
        ),
        strict=st.booleans(),
    )
    async def test_never_reaches_subscribers_history_statistics_or_logs(
        self, anyio_backend: str, ops: list[tuple[Event, str]], strict: bool
    ) -> None:
        hidden = [e for e, _ in ops if event_carries_hidden_key(e)]
        with Records.capture() as records:
            async with EventBus(strict=strict) as bus:
                subs = [
                    bus.subscribe(visibility=Visibility.PRIVATE, buffer_size=100),
                    bus.subscribe(run_id="r1", visibility=Visibility.PRIVATE),
                ]
                for sub in subs:
                    await sub.__aenter__()
                try:
                    outcomes = [await put(bus, e, path) for e, path in ops]
                    await bus.aclose()  # delivers what threads handed off
                    received = [e for sub in subs for e in drain(sub)]
                finally:
                    for sub in subs:
                        sub.close()
                stats = bus.statistics()
                held = bus.replay(visibility=Visibility.PRIVATE)
        assert stats.rejected == len(hidden)
        assert stats.emitted == len(ops) - len(hidden)
        for event in [*received, *held]:
            assert not event_carries_hidden_key(event)
            assert_no_secret(repr(event))
        assert_no_secret(repr(stats))
        assert_no_secret(str(stats))
        for outcome in outcomes:
            assert_no_secret(repr(outcome))
            if isinstance(outcome, EventRejected):
                assert strict
                assert_no_secret(outcome.reason)
        assert len(records.texts) >= len(hidden) * (not strict)
        for text in records.texts:
            assert_no_secret(text)

    @given(
        keys=st.lists(
            st.sampled_from(["ScratchPad", "Straße", "thinKing", "ǅungla", "Σκέψη"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        pick=st.integers(0, 2),
        style=st.sampled_from(["upper", "lower", "casefold", "title", "mixed"]),
        flags=st.lists(st.booleans(), min_size=10, max_size=10),
    )
    async def test_configured_keys_in_any_casing(
        self,
        anyio_backend: str,
        keys: list[str],
        pick: int,
        style: str,
        flags: list[bool],
    ) -> None:
        """Keys configured in any casing match keys in any other casing
        (casefold: "STRASSE" is "Straße", "Σκέψη" is "ΣΚΈΨΗ")."""
        key = keys[pick % len(keys)]
        if style == "mixed":
            variant = "".join(
                c.upper() if up else c.lower()
                for c, up in zip(key, flags, strict=False)
            )
        else:
            variant = getattr(key, style)()
        event = ToolResult(run_id="r", name="t", result=[{"x": {variant: SECRET}}])
        async with (
            EventBus(guards=(create_hidden_reasoning_guard(keys),), strict=True) as bus,
            bus.subscribe(visibility=Visibility.PRIVATE) as sub,
        ):
            with pytest.raises(EventRejected) as info:
                bus.emit(event)
            assert_no_secret(str(info.value))
            assert drain(sub) == []
            assert bus.replay(visibility=Visibility.PRIVATE) == []

    @pytest.mark.parametrize(
        "container",
        [
            list,
            tuple,
            collections.deque,
            collections.UserList,
            lambda items: _SequenceView(list(items)),
        ],
        ids=["list", "tuple", "deque", "UserList", "Sequence"],
    )
    async def test_inside_any_sequence(self, container: Any) -> None:
        """DESIGN.md: the guard looks into "any other field holding mappings or
        sequences". A mapping of any type is looked into; a list or a tuple
        becomes a tuple, which is looked into; any other sequence is refused
        when the event is made (JSON cannot carry it), so nothing leaks."""

        def make() -> list[Event]:
            return [
                ToolResult(run_id="r", name="t", result=container([{"cot": SECRET}])),
                MessageDelta(
                    run_id="r",
                    text="",
                    payload={"steps": container([{"Thinking": SECRET}])},
                ),
            ]

        if container not in (list, tuple):
            with pytest.raises(TypeError, match="is not JSON-compatible"):
                make()
            return
        cases = make()
        async with (
            EventBus() as bus,
            bus.subscribe(visibility=Visibility.PRIVATE) as sub,
        ):
            for event in cases:
                bus.emit(event)
            leaked = drain(sub)
            assert bus.statistics().rejected == len(cases)
        assert leaked == []


class _SequenceView(Sequence[Any]):
    """A read-only sequence that is neither a list nor a tuple."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)
