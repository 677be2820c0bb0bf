"""Hypothesis strategies for :mod:`purpose_bus.agui`: whole agent runs, as the
bus events one run emits (lanes interleaved, deltas including empty ones, tool
calls and their results, steps, summaries, logs, events a PUBLIC viewer never
sees, and any terminal or none)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from purpose_bus import (
    Event,
    LaneFinished,
    LaneStarted,
    Log,
    MessageDelta,
    ReasoningSummary,
    RunCancelled,
    RunError,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    ToolCall,
    ToolResult,
    Visibility,
)

LANES = ("main", "a", "b")
STEP_NAMES = ("s", "t")
TOOL_NAMES = ("x", "y")
TERMINALS = ("finished", "error", "cancelled", None)

_OPS = st.one_of(
    st.tuples(st.just("delta"), st.sampled_from(["", "hi ", "é\n", '"q"'])),
    st.tuples(st.just("call"), st.sampled_from(TOOL_NAMES)),
    st.tuples(st.just("result"), st.sampled_from(TOOL_NAMES), st.booleans()),
    st.tuples(st.just("step_start"), st.sampled_from(STEP_NAMES)),
    st.tuples(st.just("step_end"), st.sampled_from(STEP_NAMES)),
    st.tuples(st.just("summary"), st.sampled_from(["", "why"])),
    st.tuples(st.just("log"), st.just("note")),
    st.tuples(st.just("lane_start"), st.just("")),
    st.tuples(st.just("lane_end"), st.just("")),
    st.tuples(st.just("internal"), st.just("")),
    st.tuples(st.just("recall"), st.just("")),
)


def _event(op: tuple[Any, ...], run_id: str, lane: str, calls: list[ToolCall]) -> Event:
    name = op[0]
    common: dict[str, Any] = {"run_id": run_id, "lane_id": lane}
    if name == "delta":
        return MessageDelta(**common, text=op[1])
    if name == "call":
        call = ToolCall(**common, name=op[1], arguments={"q": [1, "two"]})
        calls.append(call)
        return call
    if name == "result":
        linked = [c for c in calls if c.name == op[1]]
        parent = linked[-1].span_id if op[2] and linked else None
        return ToolResult(**common, name=op[1], result=[op[1]], parent_span_id=parent)
    if name == "step_start":
        return StepStarted(**common, name=op[1])
    if name == "step_end":
        return StepFinished(**common, name=op[1])
    if name == "summary":
        return ReasoningSummary(**common, summary=op[1])
    if name == "log":
        return Log(**common, message=op[1])
    if name == "lane_start":
        return LaneStarted(**common)
    if name == "lane_end":
        return LaneFinished(**common)
    if name == "recall" and calls:  # the same call object emitted again
        return calls[-1]
    return Log(**common, message="hidden", visibility=Visibility.INTERNAL)


def _terminal(kind: str | None, run_id: str) -> Event | None:
    if kind == "finished":
        return RunFinished(run_id=run_id)
    if kind == "error":
        return RunError(run_id=run_id, error="boom")
    if kind == "cancelled":
        return RunCancelled(run_id=run_id, reason="stop")
    return None


@st.composite
def agent_runs(draw: st.DrawFn, run_id: str = "run-1") -> list[Event]:
    """The events of one run, in emission order: usually a ``RunStarted``
    first (with a thread id), then lanes' events interleaved, then a terminal
    event or none (a run still going)."""
    events: list[Event] = []
    if draw(st.booleans()) or draw(st.booleans()):
        events.append(RunStarted(run_id=run_id, payload={"thread_id": "thread-1"}))
    calls: list[ToolCall] = []
    steps = draw(
        st.lists(st.tuples(st.sampled_from(LANES), _OPS), min_size=0, max_size=40)
    )
    for lane, op in steps:
        events.append(_event(op, run_id, lane, calls))
    terminal = _terminal(draw(st.sampled_from(TERMINALS)), run_id)
    if terminal is not None:
        events.append(terminal)
    return events
