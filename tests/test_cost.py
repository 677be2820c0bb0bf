"""What an emit's cost may grow with (DESIGN.md, "Cost"): not with the terminal
events a subscriber's buffer holds, nor with the subscribers on other runs,
live or still replaying. Work is counted in function calls, not timed."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from helpers import calls_made, delta, drain

from purpose_bus import (
    EventBus,
    EventsDropped,
    MessageDelta,
    Overflow,
    RunFinished,
)

pytestmark = pytest.mark.anyio

#: Emits per measurement.
EMITS = 50


def emits(bus: EventBus, run_id: str, start: int = 0) -> None:
    for i in range(start, start + EMITS):
        bus.emit(delta(str(i), run_id=run_id))


async def calls_per_emit_with_terminals_held(
    terminals: int, policy: Overflow, gap_events: bool
) -> tuple[int, list[object]]:
    """Calls made by emits into a full buffer that holds *terminals* terminal
    events; and what the subscriber then receives."""
    async with (
        EventBus(buffer_size=100, history_size=0) as bus,
        bus.subscribe(overflow=policy, gap_events=gap_events) as sub,
    ):
        for run in range(terminals):
            bus.emit(delta("before", run_id=f"done-{run}"))
            bus.emit(RunFinished(run_id=f"done-{run}"))
        for i in range(100):
            bus.emit(delta(str(i), run_id="filler"))
        emits(bus, "warm-up")
        calls = calls_made(lambda: emits(bus, "measured"))
        received: list[object] = list(drain(sub))
    return calls, received


class TestTerminalEventsHeld:
    """A buffer holding terminal events costs an emit nothing more (it used to
    drain and refill the whole buffer on every emit)."""

    @pytest.mark.parametrize("gap_events", [False, True])
    @pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
    async def test_calls_do_not_grow_with_terminals_held(
        self, policy: Overflow, gap_events: bool
    ) -> None:
        few, _ = await calls_per_emit_with_terminals_held(0, policy, gap_events)
        many, received = await calls_per_emit_with_terminals_held(
            90, policy, gap_events
        )
        assert many <= few * 1.1, (few, many)
        finished = [e for e in received if isinstance(e, RunFinished)]
        assert [e.run_id for e in finished] == [f"done-{r}" for r in range(90)]

    @pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
    async def test_terminals_arriving_at_a_full_buffer_cost_alike(
        self, policy: Overflow
    ) -> None:
        """Each terminal event arriving at a full buffer evicts one event the
        policy's way, at a cost that grows neither with the buffer's size nor
        with the terminal events it holds already."""

        async def calls_for_terminals(size: int) -> int:
            async with (
                EventBus(buffer_size=size, history_size=0) as bus,
                bus.subscribe(overflow=policy, gap_events=True) as sub,
            ):
                for i in range(size):
                    bus.emit(delta(str(i), run_id="filler"))
                for run in range(10):
                    bus.emit(RunFinished(run_id=f"early-{run}"))

                def finish() -> None:
                    for run in range(20):
                        bus.emit(RunFinished(run_id=f"late-{run}"))

                calls = calls_made(finish)
                got = drain(sub)
            notices = [e for e in got if isinstance(e, EventsDropped)]
            assert sum(n.count for n in notices) == 30
            assert sub.statistics().dropped == 30
            return calls

        assert await calls_for_terminals(2000) <= await calls_for_terminals(40) * 1.1


class TestSubscribersOnOtherRuns:
    """Subscribers on other runs cost an emit nothing, live or still replaying
    (those used to be checked at every eviction from history)."""

    @pytest.mark.parametrize("replaying", [False, True])
    async def test_calls_do_not_grow_with_subscribers_on_other_runs(
        self, replaying: bool
    ) -> None:
        async def calls_with(others: int) -> int:
            async with EventBus(history_size=100) as bus, AsyncExitStack() as stack:
                for run in range(others):
                    bus.emit(delta("history", run_id=f"other-{run}"))
                for i in range(100):
                    bus.emit(delta(str(i), run_id="filler"))
                for run in range(others):
                    await stack.enter_async_context(
                        bus.subscribe(
                            run_id=f"other-{run}", after=0 if replaying else None
                        )
                    )
                live = await stack.enter_async_context(bus.subscribe(run_id="mine"))
                emits(bus, "mine")  # warm-up: every other run leaves history
                calls = calls_made(lambda: emits(bus, "mine", EMITS))
                got = drain(live)
            assert [e.text for e in got if isinstance(e, MessageDelta)] == [
                str(i) for i in range(2 * EMITS)
            ]
            return calls

        assert await calls_with(200) <= await calls_with(1) * 1.05
