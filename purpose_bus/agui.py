"""Serve the bus's runs to AG-UI front ends (the Agent-User Interaction protocol,
1.0): a run survives its HTTP connection, a dropped stream resumes, any number of
viewers watch one run, and a viewer may join mid-run.

Needs the ``agui`` extra (``pip install 'purpose_bus[agui]'``: ``ag-ui-protocol``
and the ``web`` extra). Two pieces:

:class:`Translator`
    Turns the PUBLIC events of one run, in offset order, into ``ag_ui.core``
    events, deterministically: ids are derived from what every replica of the
    run agrees on (run id, lane id, seq, span id), never from an offset, so the
    same bus events always give the same AG-UI events. :meth:`Translator.reopen`
    gives the *join prelude*: ``RUN_STARTED`` and a ``*_START`` for every
    subagent, step and text message open at that point.

:func:`create_app`
    An ASGI application (Starlette) with two routes, relative to *path*
    (``/agui`` by default):

    ``POST {path}``
        Body: a ``RunAgentInput`` (what ``HttpAgent.runAgent()`` sends). Calls
        the application's run starter in the server's task group, detached from
        the request, and streams the run as Server-Sent Events: each frame is
        encoded by ``ag_ui.encoder.EventEncoder``, and the last frame made from
        a bus event carries ``id:`` = that event's offset. The client going
        away never cancels the run.

    ``GET {path}/runs/{run_id}``
        Join or resume: after the offset in ``Last-Event-ID`` (or ``?after=``),
        else from the run's start. The join prelude comes first, then the run's
        events after the cursor, live until its terminal event. A finished run
        replays whole.

See :func:`create_app` for status codes, limits and the ``Host`` check, and the
README ("Serve runs to AG-UI front ends") for the mapping table.
"""

from __future__ import annotations

import json
import logging
import math
from bisect import bisect_right
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from typing import Any, Final
from urllib.parse import quote

import anyio
import attrs
from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SubagentFinishedEvent,
    SubagentStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.encoder import EventEncoder
from anyio.abc import TaskGroup
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._bus import EventBus, bus_seam
from ._events import (
    Event,
    EventsDropped,
    LaneFinished,
    LaneStarted,
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
from ._exceptions import BusClosed
from ._hosts import HostCheck, allowed_set
from ._overflow import Overflow
from ._sse import SubscriptionStream, offset_problem, parse_offset, short
from ._subscription import Subscription
from ._validate import count, seconds, text

__all__ = [
    "MAIN_LANE",
    "THREAD_ID_KEY",
    "RunStarter",
    "Translator",
    "create_app",
    "run_started",
]

logger = logging.getLogger("purpose_bus.agui")

#: ``await start_run(input)``: emits the run ``input.run_id`` into the bus and
#: returns when it has ended (after its terminal event). It runs in the task
#: group given to :func:`create_app`, not in the request.
RunStarter = Callable[[RunAgentInput], Awaitable[None]]

#: The lane whose events carry no ``subagentRunId``.
MAIN_LANE: Final = "main"
#: The ``payload`` key of :class:`~purpose_bus.RunStarted` read as ``threadId``.
THREAD_ID_KEY: Final = "thread_id"
_TERMINAL_KINDS = (RunFinished.kind, RunError.kind, RunCancelled.kind)
_ENVELOPE = frozenset(a.name for a in attrs.fields(Event))
_MAX_NAME = 512


def run_started(input: RunAgentInput) -> RunStarted:
    """The :class:`~purpose_bus.RunStarted` a run starter emits first for
    *input*: its ``payload`` carries the thread id, which ``RUN_STARTED``
    reports as ``threadId`` (without it, ``threadId`` is the run id)."""
    return RunStarted(run_id=input.run_id, payload={THREAD_ID_KEY: input.thread_id})


# -- the translator ------------------------------------------------------------


def _key(*parts: object) -> str:
    """An id from parts that may hold the separator: each part is escaped."""
    return ":".join(quote(str(part), safe="") for part in parts)


def _plain(value: Any) -> Any:
    """A read-only mapping/sequence tree as plain dicts and lists (for JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _millis(event: Event) -> int | None:
    ts = event.ts
    return int(ts * 1000) if math.isfinite(ts) and abs(ts) < 9e12 else None


@attrs.define
class _Step:
    name: str  # the bus's step name
    shown: str  # the AG-UI stepName: unique among the lane's open steps


@attrs.define
class _Lane:
    """What one lane has open; a lane's state depends on its own events only."""

    lane_id: str
    subagent: str | None = None  # the open SUBAGENT's id (never for main)
    incarnation: int = 0  # how many times a subagent was opened for it
    message: str | None = None  # the open TEXT_MESSAGE's id
    steps: list[_Step] = attrs.Factory(list)
    calls: dict[str, list[str]] = attrs.Factory(dict)  # tool name -> unanswered ids


class Translator:
    """Translates the PUBLIC events of one run, fed in offset order, into AG-UI
    1.0 events (``ag_ui.core`` models). Deterministic: the same events give the
    same AG-UI events, ids included. Synchronous and cheap; it holds what is
    open (lanes, steps, messages, unanswered tool calls) and the ids of the
    run's tool calls (so a result can name its call).

    The output always obeys the AG-UI ordering rules (what the official
    client's ``verifyEvents`` checks): ``RUN_STARTED`` first (made up, with the
    run id as ``threadId``, if the run's first event is not
    :class:`~purpose_bus.RunStarted`), every message, step and subagent closed
    before ``RUN_FINISHED``, nothing after the terminal event. What cannot be
    mapped without breaking a rule (a ``StepFinished`` of a step that is not
    open, a ``ToolResult`` that names no known call, a second ``RunStarted``)
    becomes a ``CUSTOM`` event named by its kind.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.thread_id = run_id
        self.started = False
        self.finished = False
        self._lanes: dict[str, _Lane] = {}  # in order of first appearance
        self._call_ids: dict[str, str] = {}  # a ToolCall's span_id -> its id
        self._used_call_ids: set[str] = set()
        self._out: list[BaseEvent] = []
        self._emit = True

    # -- public -----------------------------------------------------------------

    def translate(self, event: Event) -> list[BaseEvent]:
        """The AG-UI events for the next bus *event* of the run (possibly none).

        :raises ValueError: if *event* belongs to another run
        """
        self._emit = True
        out: list[BaseEvent] = []
        self._out = out
        self._feed(event)
        return out

    def advance(self, events: Iterable[Event]) -> None:
        """Take *events* into account without making AG-UI events (to rebuild
        the state at a cursor quickly, for :meth:`reopen`); the state is then
        what :meth:`translate` on each of them would have left.

        :raises ValueError: if an event belongs to another run
        """
        self._emit = False
        lanes, run_id = self._lanes, self.run_id
        try:
            for event in events:
                # The common case, inlined: a delta of an open lane of this run
                # changes at most which message is open (the rest is _delta's).
                if type(event) is MessageDelta and event.run_id == run_id:
                    lane = lanes.get(event.lane_id)
                    if (
                        lane is not None
                        and self.started
                        and not self.finished
                        and (lane.subagent is not None or lane.lane_id == MAIN_LANE)
                    ):
                        if event.text and lane.message is None:
                            lane.message = _key(run_id, lane.lane_id, event.seq)
                        continue
                self._feed(event)
        finally:
            self._emit = True

    def reopen(self) -> list[BaseEvent]:
        """The join prelude at this point: ``RUN_STARTED`` (if the run has
        started), then per lane, in order of first appearance, its
        ``SUBAGENT_STARTED``, its open steps' ``STEP_STARTED`` (outermost
        first) and its open message's ``TEXT_MESSAGE_START``. Nothing once the
        run has finished. The state is not changed."""
        if not self.started or self.finished:
            return []
        out: list[BaseEvent] = [self._run_started()]
        for lane in self._lanes.values():
            if lane.subagent is not None:
                out.append(self._subagent_started(lane))
            for step in lane.steps:
                out.append(
                    StepStartedEvent(
                        step_name=step.shown, subagent_run_id=lane.subagent
                    )
                )
            if lane.message is not None:
                out.append(self._message_start(lane, lane.message))
        return out

    # -- dispatch ---------------------------------------------------------------

    def _feed(self, event: Event) -> None:
        if event.run_id != self.run_id and not isinstance(event, EventsDropped):
            raise ValueError(
                f"event of run {event.run_id!r} given to the translator of "
                f"run {self.run_id!r}"
            )
        if self.finished:
            return
        if isinstance(event, EventsDropped):
            self._gap(event)
            return
        if not self.started:
            self._start(event)
            if isinstance(event, RunStarted):
                return
        if isinstance(event, MessageDelta):
            self._delta(event)
            return
        if event.terminal:
            self._terminal(event)
            return
        lane = self._lane(event)
        self._close_message(lane)
        handler = _HANDLERS.get(type(event), Translator._custom)
        handler(self, lane, event)

    def _put(self, event: BaseEvent) -> None:
        self._out.append(event)

    def _lane(self, event: Event) -> _Lane:
        """The lane of *event*, its subagent opened if it is not the main lane
        (and the event does not finish it)."""
        lane = self._lanes.get(event.lane_id)
        if lane is None:
            lane = self._lanes[event.lane_id] = _Lane(event.lane_id)
        if (
            lane.subagent is None
            and lane.lane_id != MAIN_LANE
            and not isinstance(event, LaneFinished)
        ):
            lane.incarnation += 1
            suffix = "" if lane.incarnation == 1 else f"#{lane.incarnation}"
            lane.subagent = _key(self.run_id, lane.lane_id) + suffix
            if self._emit:
                self._put(self._subagent_started(lane))
        return lane

    # -- run --------------------------------------------------------------------

    def _start(self, event: Event) -> None:
        self.started = True
        if isinstance(event, RunStarted):
            thread = event.payload.get(THREAD_ID_KEY)
            if isinstance(thread, str) and thread:
                self.thread_id = thread
        if self._emit:
            self._put(self._run_started(event))

    def _run_started(self, event: Event | None = None) -> RunStartedEvent:
        return RunStartedEvent(
            thread_id=self.thread_id,
            run_id=self.run_id,
            timestamp=None if event is None else _millis(event),
        )

    def _terminal(self, event: Event) -> None:
        if isinstance(event, RunError):
            for lane in self._lanes.values():
                self._close_message(lane)
            if self._emit:
                self._put(RunErrorEvent(message=event.error, timestamp=_millis(event)))
        else:
            self._close_all()
            if self._emit:
                self._put(self._run_finished(event))
        self.finished = True

    def _run_finished(self, event: Event) -> RunFinishedEvent:
        if isinstance(event, RunCancelled):
            return RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                outcome=RunFinishedCancelledOutcome(),
                metadata={"reason": event.reason} if event.reason else None,
                timestamp=_millis(event),
            )
        return RunFinishedEvent(
            thread_id=self.thread_id, run_id=self.run_id, timestamp=_millis(event)
        )

    def _close_all(self) -> None:
        for lane in self._lanes.values():
            self._finish_lane(lane)

    def _gap(self, event: EventsDropped) -> None:
        """Events were lost: whatever they said, every open message is closed
        (text after the gap starts a new message), and a notice is sent."""
        if not self.started:
            self.started = True
            if self._emit:
                self._put(self._run_started())
        for lane in self._lanes.values():
            self._close_message(lane)
        if self._emit:
            value = {
                "count": event.count,
                "first_offset": event.first_offset,
                "last_offset": event.last_offset,
                "exact": event.exact,
            }
            self._put(CustomEvent(name=event.kind, value=value))

    # -- lanes, steps, messages ----------------------------------------------------

    def _lane_started(self, lane: _Lane, event: Event) -> None:
        pass  # _lane() opened the subagent

    def _lane_finished(self, lane: _Lane, event: Event) -> None:
        self._finish_lane(lane)

    def _finish_lane(self, lane: _Lane) -> None:
        self._close_message(lane)
        while lane.steps:
            step = lane.steps.pop()
            if self._emit:
                self._put(self._step_finished(lane, step))
        lane.calls.clear()
        if lane.subagent is not None:
            if self._emit:
                self._put(SubagentFinishedEvent(subagent_run_id=lane.subagent))
            lane.subagent = None

    def _subagent_started(self, lane: _Lane) -> SubagentStartedEvent:
        assert lane.subagent is not None
        return SubagentStartedEvent(subagent_run_id=lane.subagent, name=lane.lane_id)

    def _step_started(self, lane: _Lane, event: Event) -> None:
        assert isinstance(event, StepStarted)
        open_names = {step.shown for step in lane.steps}
        shown, number = event.name, 1
        while shown in open_names:
            number += 1
            shown = f"{event.name} #{number}"
        lane.steps.append(_Step(event.name, shown))
        if self._emit:
            self._put(
                StepStartedEvent(
                    step_name=shown,
                    subagent_run_id=lane.subagent,
                    timestamp=_millis(event),
                )
            )

    def _step_finished(self, lane: _Lane, step: _Step) -> StepFinishedEvent:
        return StepFinishedEvent(step_name=step.shown, subagent_run_id=lane.subagent)

    def _step_finish(self, lane: _Lane, event: Event) -> None:
        assert isinstance(event, StepFinished)
        for index in range(len(lane.steps) - 1, -1, -1):
            if lane.steps[index].name == event.name:
                step = lane.steps.pop(index)
                if self._emit:
                    self._put(self._step_finished(lane, step))
                return
        self._custom(lane, event)  # no such step is open

    def _delta(self, event: MessageDelta) -> None:
        lane = self._lanes.get(event.lane_id)
        if lane is None or (lane.subagent is None and lane.lane_id != MAIN_LANE):
            lane = self._lane(event)
        if not event.text:
            return  # an empty delta neither opens nor closes a message
        if lane.message is None:
            lane.message = _key(self.run_id, lane.lane_id, event.seq)
            if self._emit:
                self._put(self._message_start(lane, lane.message))
        if self._emit:
            self._put(
                TextMessageContentEvent(
                    message_id=lane.message,
                    delta=event.text,
                    subagent_run_id=lane.subagent,
                )
            )

    def _message_start(self, lane: _Lane, message_id: str) -> TextMessageStartEvent:
        return TextMessageStartEvent(
            message_id=message_id, role="assistant", subagent_run_id=lane.subagent
        )

    def _close_message(self, lane: _Lane) -> None:
        if lane.message is None:
            return
        if self._emit:
            self._put(
                TextMessageEndEvent(
                    message_id=lane.message, subagent_run_id=lane.subagent
                )
            )
        lane.message = None

    # -- tools, reasoning, the rest ------------------------------------------------

    def _tool_call(self, lane: _Lane, event: Event) -> None:
        assert isinstance(event, ToolCall)
        call_id = event.span_id
        if call_id in self._used_call_ids:  # a re-emitted call: same span id
            call_id = _key(event.span_id, lane.lane_id, event.seq)
        self._used_call_ids.add(call_id)
        self._call_ids[event.span_id] = call_id
        lane.calls.setdefault(event.name, []).append(call_id)
        if not self._emit:
            return
        subagent = lane.subagent
        self._put(
            ToolCallStartEvent(
                tool_call_id=call_id,
                tool_call_name=event.name,
                subagent_run_id=subagent,
                timestamp=_millis(event),
            )
        )
        arguments = json.dumps(_plain(event.arguments), ensure_ascii=False)
        self._put(
            ToolCallArgsEvent(
                tool_call_id=call_id, delta=arguments, subagent_run_id=subagent
            )
        )
        self._put(ToolCallEndEvent(tool_call_id=call_id, subagent_run_id=subagent))

    def _tool_result(self, lane: _Lane, event: Event) -> None:
        assert isinstance(event, ToolResult)
        call_id = self._answered_call(lane, event)
        if call_id is None:
            self._custom(lane, event)
            return
        if not self._emit:
            return
        result = event.result
        content = (
            result
            if isinstance(result, str)
            else json.dumps(_plain(result), ensure_ascii=False)
        )
        self._put(
            ToolCallResultEvent(
                message_id=_key(self.run_id, lane.lane_id, event.seq),
                tool_call_id=call_id,
                content=content,
                role="tool",
                subagent_run_id=lane.subagent,
                timestamp=_millis(event),
            )
        )

    def _answered_call(self, lane: _Lane, event: ToolResult) -> str | None:
        """The call a result answers: the ``ToolCall`` whose ``span_id`` is the
        result's ``parent_span_id``; without one, the lane's oldest unanswered
        call of the same tool name."""
        if event.parent_span_id is not None:
            call_id = self._call_ids.get(event.parent_span_id)
            if call_id is not None:
                for calls in lane.calls.values():
                    if call_id in calls:
                        calls.remove(call_id)
            return call_id
        pending = lane.calls.get(event.name)
        return pending.pop(0) if pending else None

    def _reasoning(self, lane: _Lane, event: Event) -> None:
        assert isinstance(event, ReasoningSummary)
        if not self._emit:
            return
        message_id = _key(self.run_id, lane.lane_id, event.seq)
        subagent = lane.subagent
        self._put(ReasoningStartEvent(message_id=message_id, subagent_run_id=subagent))
        self._put(
            ReasoningMessageStartEvent(
                message_id=message_id, role="reasoning", subagent_run_id=subagent
            )
        )
        if event.summary:
            self._put(
                ReasoningMessageContentEvent(
                    message_id=message_id, delta=event.summary, subagent_run_id=subagent
                )
            )
        self._put(
            ReasoningMessageEndEvent(message_id=message_id, subagent_run_id=subagent)
        )
        self._put(ReasoningEndEvent(message_id=message_id, subagent_run_id=subagent))

    def _custom(self, lane: _Lane, event: Event) -> None:
        if not self._emit:
            return
        self._put(
            CustomEvent(
                name=event.kind,
                value=_custom_value(event),
                subagent_run_id=lane.subagent,
                timestamp=_millis(event),
            )
        )


def _custom_value(event: Event) -> dict[str, Any]:
    """The ``value`` of the ``CUSTOM`` event made from *event*: its own fields
    (not the envelope's), and its ``payload`` if it has one, as plain JSON."""
    value = {
        field.name: _plain(getattr(event, field.name))
        for field in attrs.fields(type(event))
        if field.name not in _ENVELOPE
    }
    if event.payload:
        value["payload"] = _plain(event.payload)
    return value


_Handler = Callable[[Translator, _Lane, Event], None]
_HANDLERS: dict[type[Event], _Handler] = {
    LaneStarted: Translator._lane_started,
    LaneFinished: Translator._lane_finished,
    StepStarted: Translator._step_started,
    StepFinished: Translator._step_finish,
    ToolCall: Translator._tool_call,
    ToolResult: Translator._tool_result,
    ReasoningSummary: Translator._reasoning,
}


# -- framing -------------------------------------------------------------------


class _Framer:
    """AG-UI events as SSE frames, by ``ag_ui.encoder.EventEncoder``."""

    def __init__(self) -> None:
        self._encoder = EventEncoder()

    def _encode(self, event: BaseEvent) -> str:
        try:
            return self._encoder.encode(event)
        except ValueError:  # pydantic refuses a lone surrogate, which JSON carries
            data = json.dumps(
                event.model_dump(by_alias=True),
                ensure_ascii=True,
                separators=(",", ":"),
            )
            return f"data: {data}\n\n"

    def frames(self, events: list[BaseEvent], offset: int | None) -> bytes:
        """The frames of *events*; the last carries ``id: offset`` (if given),
        so a client's cursor only passes an offset once all of it arrived."""
        if not events:
            return b""
        encode = self._encode
        text = "".join(encode(event) for event in events[:-1])
        last = encode(events[-1])
        if offset is not None:
            last = f"id: {offset}\n{last}"
        return (text + last).encode()


# -- the application ---------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return PlainTextResponse(f"{self.message}\n", status_code=self.status)


def create_app(
    bus: EventBus,
    *,
    start_run: RunStarter | None = None,
    task_group: TaskGroup | None = None,
    path: str = "/agui",
    allowed_hosts: Iterable[str] | None = None,
    heartbeat: float = 15.0,
    buffer_size: int | None = None,
    max_body: int = 1 << 20,
) -> Starlette:
    """Return an ASGI application (Starlette) serving the runs of *bus* to AG-UI
    clients at *path* (see :mod:`the module docstring <purpose_bus.agui>`).
    Serve it on the event loop the bus runs on, e.g. with
    :func:`purpose_bus.web.serve` (which binds to 127.0.0.1 by default).

    ``POST {path}`` (only with *start_run*) validates the body as a
    ``RunAgentInput`` and subscribes to ``input.runId`` before it starts
    ``start_run(input)`` in *task_group*: the stream misses nothing, and the run
    belongs to the server, not to the request; a client that goes away ends
    only its stream. If the starter returns or raises before the run has a
    terminal event, the application emits a :class:`~purpose_bus.RunError`
    (``"the run starter failed"`` / ``"... returned before the run ended"``) so
    no viewer waits forever; the exception itself is logged, never streamed.
    A starter cancelled with *task_group* (the server shutting down) leaves a
    :class:`~purpose_bus.RunCancelled` instead.

    ``GET {path}/runs/{run_id}`` resumes after ``Last-Event-ID`` (wins) or
    ``?after=``. A cursor is an offset of *this* bus: one of the run's events
    (or 0, or older than what history still holds of the run). Behind several
    replicas, resume on the replica that issued the cursor; any replica serves
    a join without one (see the README).

    Every stream is one subscription at ``PUBLIC`` visibility dropping its
    oldest events when its buffer (*buffer_size*, default the bus's) is full;
    a loss reaches the client as a ``CUSTOM`` ``events.dropped`` event. It
    sends a ``: heartbeat`` comment after *heartbeat* seconds of silence and
    ends after the run's terminal event, or when the bus closes.

    Answers, never a 500 for bad input: ``400`` for a body that is not a
    ``RunAgentInput``, a run id that is empty, over 512 characters or not
    printable, a bad cursor (not decimal digits, over 2**63-1, or not the
    offset of one of the run's events on this bus, unless older than what
    history holds of the run), an unknown query parameter, or a ``Host`` not on
    *allowed_hosts* (default: the loopback names and the address the server is
    bound to); ``404`` for a run history does not hold (at ``PUBLIC``
    visibility); ``405`` for ``POST`` without *start_run*; ``409`` for a
    ``POST`` of a run id the bus already has or is starting; ``413`` for a body
    over *max_body* bytes; ``503`` when the bus is closed; ``204`` for a resume
    after the end of a finished run (nothing to send). ``HEAD`` gets the
    headers only. No CORS headers.

    :param start_run: see :data:`RunStarter`
    :param task_group: where runs are started (required with *start_run*);
        typically the server's own task group
    :param path: where the routes are, starting with ``/`` (``/agui``)
    :param allowed_hosts: the ``Host`` names the application answers to
        (see :func:`purpose_bus.web.create_app`)
    :param heartbeat: seconds of silence before a heartbeat comment (> 0)
    :param buffer_size: the bound of each stream's subscription (>= 1)
    :param max_body: the largest ``POST`` body accepted, bytes (>= 1)
    :raises TypeError: for a value of the wrong type
    :raises ValueError: for a value out of range, or *start_run* without
        *task_group*
    """
    if start_run is not None and task_group is None:
        raise ValueError("start_run needs a task_group to start runs in")
    path = text("path", path)
    if not (path.startswith("/") and not path.endswith("/")):
        raise ValueError(f"path must start with '/' and not end with one: {path!r}")
    heartbeat = seconds("heartbeat", heartbeat, 0, strict=True)
    if buffer_size is not None:
        buffer_size = count("buffer_size", buffer_size, 1)
    max_body = count("max_body", max_body, 1)
    hosts = allowed_set(allowed_hosts)
    endpoints = _Endpoints(
        bus=bus,
        start_run=start_run,
        task_group=task_group,
        heartbeat=float(heartbeat),
        buffer_size=buffer_size,
        max_body=max_body,
    )
    return Starlette(
        routes=[
            Route(path, endpoints.post, methods=["POST"]),
            Route(path + "/runs/{run_id:path}", endpoints.get, methods=["GET"]),
        ],
        middleware=[Middleware(HostCheck, allowed_hosts=hosts)],
    )


@attrs.frozen
class _Endpoints:
    bus: EventBus
    start_run: RunStarter | None
    task_group: TaskGroup | None
    heartbeat: float
    buffer_size: int | None
    max_body: int
    starting: set[str] = attrs.field(factory=set)

    async def post(self, request: Request) -> Response:
        if self.start_run is None:
            return PlainTextResponse(
                "this server does not start runs: GET /runs/{run_id} to watch one\n",
                status_code=405,
                headers={"Allow": "GET"},
            )
        try:
            run_input = _run_input(await self._body(request))
            self._check_new(run_input.run_id)
        except _BadRequest as exc:
            return exc.response()
        except ClientDisconnect:
            return Response(status_code=400)
        self.starting.add(run_input.run_id)  # a second POST of it gets 409
        subscription = self._subscribe(run_input.run_id, after=None)
        return _AguiStream(
            subscription,
            Translator(run_input.run_id),
            self.heartbeat,
            on_subscribed=lambda: self._start(run_input),
        )

    async def get(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            after = _cursor(request)
            _check_run_id(run_id)
            translator, prelude, after = self._state_at(run_id, after)
        except _BadRequest as exc:
            return exc.response()
        subscription = self._subscribe(run_id, after=after)
        return _AguiStream(
            subscription, translator, self.heartbeat, prelude=prelude, after=after
        )

    async def _body(self, request: Request) -> bytes:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise _BadRequest(413, f"the body is larger than {self.max_body} bytes")
        body = bytearray()
        async with aclosing(request.stream()) as chunks:  # closed if we stop early
            async for chunk in chunks:
                body += chunk
                if len(body) > self.max_body:
                    raise _BadRequest(
                        413, f"the body is larger than {self.max_body} bytes"
                    )
        return bytes(body)

    def _check_new(self, run_id: str) -> None:
        if (
            run_id in self.starting
            or bus_seam(self.bus).has_ended(run_id)
            or self.bus.replay(run_id=run_id, visibility=Visibility.PRIVATE)
        ):
            raise _BadRequest(
                409,
                f"run {short(run_id)} already exists; "
                f"GET .../runs/{{run_id}} to watch it",
            )

    def _subscribe(self, run_id: str, after: int | None) -> Subscription[Event]:
        return self.bus.subscribe(
            run_id=run_id,
            visibility=Visibility.PUBLIC,
            after=after,
            buffer_size=self.buffer_size,
            overflow=Overflow.DROP_OLDEST,
            gap_events=True,
            name=f"agui {run_id}",
        )

    def _state_at(
        self, run_id: str, after: int
    ) -> tuple[Translator, list[BaseEvent], int]:
        """The translator's state after the cursor, the join prelude, and the
        offset to subscribe after: without a cursor (0), just before the
        run's first event history holds (``after=0`` would announce as lost
        every offset history no longer holds, of any run)."""
        history = self.bus.replay(run_id=run_id, visibility=Visibility.PUBLIC)
        if not history:
            raise _BadRequest(404, f"unknown run {short(run_id)} (or not in history)")
        if after == 0:
            return Translator(run_id), [], history[0].offset - 1
        translator = Translator(run_id)
        cut = bisect_right(history, after, key=_offset_of)
        translator.advance(history[:cut])
        # A cursor this server issued is the offset of one of the run's events
        # (unless history has evicted it): anything else is refused, not guessed.
        known = after == 0 or after < history[0].offset
        if not (known or history[cut - 1].offset == after):
            raise _BadRequest(
                400,
                f"cursor {after} is not an event of run {short(run_id)} on this "
                f"server (a cursor from another replica?); join without one",
            )
        return translator, translator.reopen(), after

    def _start(self, run_input: RunAgentInput) -> None:
        assert self.task_group is not None and self.start_run is not None
        self.task_group.start_soon(
            _run_detached, self.bus, self.start_run, run_input, self.starting
        )


async def _run_detached(
    bus: EventBus, start_run: RunStarter, run_input: RunAgentInput, starting: set[str]
) -> None:
    """Runs the starter; if it ends before the run did, ends the run: with
    ``RunError`` if it returned or raised, ``RunCancelled`` if it was cancelled
    (the task group shutting down), so no viewer waits for an end that never
    comes."""
    run_id = run_input.run_id
    try:
        await start_run(run_input)
    except anyio.get_cancelled_exc_class():
        _end(bus, RunCancelled(run_id=run_id, reason="the server stopped the run"))
        raise
    except Exception:
        logger.exception("the run starter failed for run %r", run_id)
        _end(bus, RunError(run_id=run_id, error="the run starter failed"))
    else:
        error = "the run starter returned before the run ended"
        _end(bus, RunError(run_id=run_id, error=error))
    finally:
        starting.discard(run_id)


def _end(bus: EventBus, terminal: Event) -> None:
    """Emit *terminal* unless its run has ended already (or the bus has)."""
    if bus.closed or bus.replay(
        run_id=terminal.run_id, kinds=_TERMINAL_KINDS, visibility=Visibility.PRIVATE
    ):
        return
    try:
        bus.emit(terminal)
    except BusClosed:
        pass


def _offset_of(event: Event) -> int:
    return event.offset


def _run_input(body: bytes) -> RunAgentInput:
    try:
        run_input = RunAgentInput.model_validate_json(body)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise _BadRequest(400, f"the body is not a RunAgentInput: {errors}") from None
    _check_run_id(run_input.run_id)
    return run_input


def _check_run_id(run_id: str) -> None:
    # Printable: a line break could not be matched in GET .../runs/{run_id}.
    if not (0 < len(run_id) <= _MAX_NAME and run_id.isprintable()):
        raise _BadRequest(400, f"a run id has 1 to {_MAX_NAME} printable characters")


def _cursor(request: Request) -> int:
    """The offset to resume after: ``Last-Event-ID`` wins over ``?after=``; 0
    (the run's start) without either."""
    for name in request.query_params:
        if name != "after":
            raise _BadRequest(400, f"unknown query parameter {short(name)}; use after")
    header = request.headers.get("last-event-id", "")
    if header:
        return _offset(header, "Last-Event-ID")
    values = request.query_params.getlist("after")
    if len(values) > 1:
        raise _BadRequest(400, "after must be given at most once")
    return _offset(values[0], "after") if values else 0


def _offset(text: str, name: str) -> int:
    value = parse_offset(text)
    if value is None:
        raise _BadRequest(400, offset_problem(text, name))
    return value


# -- the stream ------------------------------------------------------------------


class _AguiStream(SubscriptionStream):
    """The response of both routes: a subscription, translated and streamed
    (see :class:`~purpose_bus._sse.SubscriptionStream`).

    Its subscription is entered before anything else happens (for ``POST``,
    before the run is started), so the stream misses no event of the run.
    """

    def __init__(
        self,
        subscription: Subscription[Event],
        translator: Translator,
        heartbeat: float,
        *,
        prelude: list[BaseEvent] | None = None,
        after: int | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(subscription, heartbeat)
        self._translator = translator
        self._prelude = prelude or []
        self._after = after
        self._on_subscribed = on_subscribed
        self._framer = _Framer()

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._on_subscribed is not None:
            self._on_subscribed()
        if self._translator.finished:  # resumed after the end: nothing to send
            await Response(status_code=204)(scope, receive, send)
            return
        prelude = self._framer.frames(self._prelude, None)
        if await self._start(scope, send, b": purpose_bus agui\n\n" + prelude):
            await self._stream(receive, send)

    def _done(self) -> bool:
        return self._translator.finished

    def _frame(self, event: Event) -> bytes:
        offset = None if isinstance(event, EventsDropped) else event.offset
        return self._framer.frames(self._translator.translate(event), offset)
