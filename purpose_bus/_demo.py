"""``python -m purpose_bus demo``: a simulated agent run on the bus.

Two runs, three parallel lanes each; one run finishes, the other fails. Beside
them: a fast UI subscriber, a slow subscriber that drops events (and still gets
the terminal event), a ``BLOCK`` auditor that loses nothing, and a late joiner
that replays the finished run from history. It ends with a table per
subscriber.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial

import anyio
import attrs

from ._bus import EventBus
from ._events import (
    Event,
    LaneFinished,
    LaneStarted,
    MessageDelta,
    ReasoningSummary,
    RunError,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    ToolCall,
    ToolResult,
    Visibility,
)
from ._overflow import Overflow
from ._subscription import Subscription

__all__ = ["DemoRow", "main", "run_demo"]

LANES = ("plan", "search", "write")
STEPS = 3
DELTAS = 20


@attrs.frozen
class DemoRow:
    """One subscriber's line of the summary table."""

    name: str
    delivered: int
    dropped: int
    buffered: int
    notices: int
    terminal_seen: str


async def _lane(bus: EventBus, run_id: str, lane: str) -> None:
    await bus.publish(LaneStarted(run_id=run_id, lane_id=lane))
    for step in range(STEPS):
        name = f"{lane}-{step}"
        await bus.publish(StepStarted(run_id=run_id, lane_id=lane, name=name))
        await bus.publish(
            ToolCall(run_id=run_id, lane_id=lane, name="search", arguments={"q": name})
        )
        await bus.publish(
            ToolResult(run_id=run_id, lane_id=lane, name="search", result=[1])
        )
        await bus.publish(
            ReasoningSummary(
                run_id=run_id,
                lane_id=lane,
                summary=f"{lane}: compared two sources",
                visibility=Visibility.INTERNAL,
            )
        )
        for index in range(DELTAS):
            await bus.publish(
                MessageDelta(run_id=run_id, lane_id=lane, text=f"{index} ")
            )
        await bus.publish(StepFinished(run_id=run_id, lane_id=lane, name=name))
    await bus.publish(LaneFinished(run_id=run_id, lane_id=lane))


async def _agent(bus: EventBus, run_id: str, *, fail: bool) -> None:
    await bus.publish(RunStarted(run_id=run_id))
    async with anyio.create_task_group() as task_group:
        for lane in LANES:
            task_group.start_soon(_lane, bus, run_id, lane)
    # A guard refuses hidden reasoning: this event reaches nobody.
    bus.emit(MessageDelta(run_id=run_id, text="", payload={"chain_of_thought": "..."}))
    if fail:
        await bus.publish(RunError(run_id=run_id, error="tool quota exceeded"))
    else:
        await bus.publish(RunFinished(run_id=run_id))


async def _consume(
    sub: Subscription[Event],
    rows: list[DemoRow],
    *,
    delay: float = 0.0,
    stop_after: int = 0,
) -> None:
    notices = 0
    terminals: list[str] = []
    async for event in sub:
        if event.kind == "events.dropped":
            notices += 1
        elif event.terminal:
            terminals.append(event.kind)
            if stop_after and len(terminals) == stop_after:
                break
        if delay:
            await anyio.sleep(delay)
    stats = sub.statistics()
    rows.append(
        DemoRow(
            name=stats.name,
            delivered=stats.delivered,
            dropped=stats.dropped,
            buffered=stats.buffered,
            notices=notices,
            terminal_seen=", ".join(terminals) or "-",
        )
    )


async def run_demo(*, slow_delay: float = 0.001) -> list[DemoRow]:
    """Run the demo on the current event loop and return its table."""
    rows: list[DemoRow] = []
    async with EventBus() as bus:
        ui = bus.subscribe(run_id="run-1", name="ui (fast)")
        slow = bus.subscribe(
            run_id="run-1", buffer_size=16, gap_events=True, name="slow (drops)"
        )
        auditor = bus.subscribe(
            overflow=Overflow.BLOCK,
            buffer_size=32,
            visibility=Visibility.INTERNAL,
            name="auditor (BLOCK)",
        )
        # Leaving the task group waits for the consumers: ui and slow end with
        # run-1's terminal event, the auditor after both runs' terminal events.
        async with ui, slow, auditor, anyio.create_task_group() as consumers:
            consumers.start_soon(partial(_consume, ui, rows))
            consumers.start_soon(partial(_consume, slow, rows, delay=slow_delay))
            consumers.start_soon(partial(_consume, auditor, rows, stop_after=2))
            async with anyio.create_task_group() as agents:
                agents.start_soon(partial(_agent, bus, "run-1", fail=False))
                agents.start_soon(partial(_agent, bus, "run-2", fail=True))
            late = bus.subscribe(
                run_id="run-1", replay=True, name="late joiner (replay)"
            )
            async with late:
                await _consume(late, rows)
        stats = bus.statistics()
    rows.append(
        DemoRow(
            name=f"bus: emitted {stats.emitted}, rejected {stats.rejected}",
            delivered=0,
            dropped=stats.dropped,
            buffered=0,
            notices=0,
            terminal_seen="",
        )
    )
    return rows


def format_table(rows: Sequence[DemoRow]) -> str:
    """The summary table as text."""
    header = (
        "subscriber",
        "delivered",
        "dropped",
        "buffered",
        "gap notices",
        "terminal seen",
    )
    lines = [header] + [
        (
            r.name,
            str(r.delivered),
            str(r.dropped),
            str(r.buffered),
            str(r.notices),
            r.terminal_seen,
        )
        for r in rows[:-1]
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([*text, "", rows[-1].name])


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m purpose_bus demo [--backend asyncio|trio]``."""
    parser = argparse.ArgumentParser(prog="python -m purpose_bus")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a simulated agent run on the bus")
    demo.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    rows = anyio.run(run_demo, backend=args.backend)
    print(f"purpose_bus demo on {args.backend}: two runs, three lanes each\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
