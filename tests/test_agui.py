"""Tests of :mod:`purpose_bus.agui`: the translator (the mapping, determinism,
the ordering rules and joins at every cursor, as a hypothesis property), and the
endpoint served by hypercorn on loopback (POST, GET joins and resumes, bad input,
hostile clients, many viewers, ``python -m purpose_bus demo --serve``)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import MappingProxyType
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
from ag_ui.core import RunAgentInput
from agui_helpers import (
    RUN,
    Conversation,
    Frame,
    check_order,
    parse_frames,
    stamped,
    translate,
    validated,
    wire,
)
from agui_strategies import agent_runs
from anyio.abc import TaskGroup
from helpers import http_scope
from hypercorn.config import Config
from hypothesis import given
from starlette.types import Message, Receive, Scope, Send

import purpose_bus
from purpose_bus import (
    Event,
    EventBus,
    EventsDropped,
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
from purpose_bus._demo import serve_demo
from purpose_bus.agui import Translator, create_app, run_started
from purpose_bus.web import serve

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@attrs.frozen(kw_only=True)
class Audit(Event):
    """A kind of the application's own: it becomes a CUSTOM event."""

    kind = "test_agui.audit"

    who: str
    tags: tuple[str, ...] = ()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


# -- the translator ---------------------------------------------------------------


class TestTranslator:
    def test_run_started_carries_the_thread_id(self) -> None:
        out = translate(stamped([RunStarted(run_id=RUN, payload={"thread_id": "t"})]))
        assert out[0]["type"] == "RUN_STARTED"
        assert (out[0]["threadId"], out[0]["runId"]) == ("t", RUN)

    def test_run_started_from_the_input(self) -> None:
        run_input = RunAgentInput(thread_id="t9", run_id="r9", messages=[])
        event = run_started(run_input)
        assert (event.run_id, dict(event.payload)) == ("r9", {"thread_id": "t9"})

    def test_a_run_without_run_started_gets_one(self) -> None:
        out = translate(stamped([MessageDelta(run_id=RUN, text="hi")]))
        assert types(out) == [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
        ]
        assert out[0]["threadId"] == RUN

    def test_a_second_run_started_is_custom(self) -> None:
        events = stamped([RunStarted(run_id=RUN), RunStarted(run_id=RUN)])
        assert types(translate(events)) == ["RUN_STARTED", "CUSTOM"]

    def test_messages_per_stretch_of_a_lane(self) -> None:
        events = stamped(
            [
                RunStarted(run_id=RUN),
                MessageDelta(run_id=RUN, text=""),  # skipped, opens nothing
                MessageDelta(run_id=RUN, text="a"),
                MessageDelta(run_id=RUN, lane_id="w", text="x"),  # parallel
                MessageDelta(run_id=RUN, text=""),  # skipped, closes nothing
                MessageDelta(run_id=RUN, text="b"),
                Log(run_id=RUN, message="m"),  # the lane emits something else
                MessageDelta(run_id=RUN, text="c"),
                RunFinished(run_id=RUN),
            ]
        )
        out = translate(events)
        check_order(out)
        conversation = Conversation().apply(out)
        assert conversation.messages == {
            "run-1:main:3": {"role": "assistant", "content": "ab"},
            "run-1:w:1": {"role": "assistant", "content": "x"},
            "run-1:main:7": {"role": "assistant", "content": "c"},
        }
        subagents = {e.get("subagentRunId") for e in out if "messageId" in e}
        assert subagents == {None, "run-1:w"}

    def test_lanes_are_subagents(self) -> None:
        events = stamped(
            [
                RunStarted(run_id=RUN),
                LaneStarted(run_id=RUN, lane_id="plan"),
                StepStarted(run_id=RUN, lane_id="plan", name="s"),
                LaneFinished(run_id=RUN, lane_id="plan"),
                Log(run_id=RUN, lane_id="plan", message="again"),
                RunFinished(run_id=RUN),
            ]
        )
        out = translate(events)
        check_order(out)
        assert types(out) == [
            "RUN_STARTED",
            "SUBAGENT_STARTED",
            "STEP_STARTED",
            "STEP_FINISHED",
            "SUBAGENT_FINISHED",
            "SUBAGENT_STARTED",
            "CUSTOM",
            "SUBAGENT_FINISHED",
            "RUN_FINISHED",
        ]
        assert out[1]["name"] == "plan"
        assert [out[1]["subagentRunId"], out[5]["subagentRunId"]] == [
            "run-1:plan",
            "run-1:plan#2",
        ]
        assert out[6]["subagentRunId"] == "run-1:plan#2"

    def test_tool_calls_and_results(self) -> None:
        call = ToolCall(run_id=RUN, name="search", arguments={"q": ("ü", 1)})
        other = ToolCall(run_id=RUN, name="search", arguments={})
        events = stamped(
            [
                RunStarted(run_id=RUN),
                call,
                other,
                # Named by parent_span_id: the first call, though it is older.
                ToolResult(
                    run_id=RUN, name="search", result="ok", parent_span_id=call.span_id
                ),
                # Without one: the lane's oldest unanswered call of that name.
                ToolResult(run_id=RUN, name="search", result={"n": [1]}),
                # Nothing left to answer: CUSTOM.
                ToolResult(run_id=RUN, name="search", result=None),
                RunFinished(run_id=RUN),
            ]
        )
        out = translate(events)
        check_order(out)
        assert (
            types(out)[1:7]
            == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"] * 2
        )
        assert out[1]["toolCallId"] == call.span_id
        assert out[1]["toolCallName"] == "search"
        assert json.loads(out[2]["delta"]) == {"q": ["ü", 1]}
        results = [e for e in out if e["type"] == "TOOL_CALL_RESULT"]
        assert [(r["toolCallId"], r["content"]) for r in results] == [
            (call.span_id, "ok"),
            (other.span_id, '{"n": [1]}'),
        ]
        assert out[-2]["type"] == "CUSTOM" and out[-2]["name"] == "tool.result"

    def test_a_re_emitted_call_gets_an_id_of_its_own(self) -> None:
        call = ToolCall(run_id=RUN, name="x")
        out = translate(stamped([RunStarted(run_id=RUN), call, call]))
        ids = [e["toolCallId"] for e in out if e["type"] == "TOOL_CALL_START"]
        assert ids == [call.span_id, f"{call.span_id}:main:3"]

    def test_steps(self) -> None:
        events = stamped(
            [
                RunStarted(run_id=RUN),
                StepStarted(run_id=RUN, name="s"),
                StepStarted(run_id=RUN, name="s"),  # the same name, nested
                StepFinished(run_id=RUN, name="s"),
                StepFinished(run_id=RUN, name="nope"),  # not open: CUSTOM
                RunFinished(run_id=RUN),
            ]
        )
        out = translate(events)
        check_order(out)
        assert [(e["type"], e.get("stepName", e.get("name"))) for e in out[1:]] == [
            ("STEP_STARTED", "s"),
            ("STEP_STARTED", "s #2"),
            ("STEP_FINISHED", "s #2"),
            ("CUSTOM", "step.finished"),
            ("STEP_FINISHED", "s"),
            ("RUN_FINISHED", None),
        ]

    def test_reasoning_summaries(self) -> None:
        events = stamped(
            [RunStarted(run_id=RUN), ReasoningSummary(run_id=RUN, summary="why")]
        )
        out = translate(events)
        assert types(out)[1:] == [
            "REASONING_START",
            "REASONING_MESSAGE_START",
            "REASONING_MESSAGE_CONTENT",
            "REASONING_MESSAGE_END",
            "REASONING_END",
        ]
        assert out[3]["delta"] == "why"

    def test_logs_and_kinds_of_the_application_are_custom(self) -> None:
        events = stamped(
            [
                Log(run_id=RUN, message="m", level="warning"),
                Audit(
                    run_id=RUN,
                    who="me",
                    tags=("a",),
                    payload=MappingProxyType({"k": (1,)}),
                ),
            ]
        )
        out = translate(events)
        assert out[1] == {
            "type": "CUSTOM",
            "timestamp": out[1]["timestamp"],
            "name": "log",
            "value": {"message": "m", "level": "warning"},
        }
        assert (out[2]["name"], out[2]["value"]) == (
            "test_agui.audit",
            {"who": "me", "tags": ["a"], "payload": {"k": [1]}},
        )

    @pytest.mark.parametrize(
        ("terminal", "last"),
        [
            (
                RunFinished(run_id=RUN),
                {"type": "RUN_FINISHED", "threadId": RUN, "runId": RUN},
            ),
            (
                RunError(run_id=RUN, error="quota"),
                {"type": "RUN_ERROR", "message": "quota"},
            ),
            (
                RunCancelled(run_id=RUN, reason="user"),
                {
                    "type": "RUN_FINISHED",
                    "threadId": RUN,
                    "runId": RUN,
                    "outcome": {"type": "cancelled"},
                    "metadata": {"reason": "user"},
                },
            ),
        ],
    )
    def test_terminals(self, terminal: Event, last: dict[str, Any]) -> None:
        events = stamped(
            [
                RunStarted(run_id=RUN),
                MessageDelta(run_id=RUN, lane_id="w", text="x"),
                StepStarted(run_id=RUN, name="s"),
                terminal,
                Log(run_id=RUN, message="after the end: ignored"),
            ]
        )
        out = translate(events)
        check_order(out)
        end = dict(out[-1])
        end.pop("timestamp")
        assert end == last
        # Every text message is closed, whatever the terminal.
        assert "TEXT_MESSAGE_END" in types(out)

    def test_a_gap_closes_messages_and_is_announced(self) -> None:
        events = [
            *stamped([RunStarted(run_id=RUN), MessageDelta(run_id=RUN, text="a")]),
            EventsDropped(run_id=RUN, count=2, first_offset=3, last_offset=4),
            attrs.evolve(MessageDelta(run_id=RUN, text="b"), seq=5, offset=5),
            attrs.evolve(StepFinished(run_id=RUN, name="lost"), seq=6, offset=6),
            attrs.evolve(RunFinished(run_id=RUN), seq=7, offset=7),
        ]
        out = translate(events)
        check_order(out)
        gap = out[4]
        assert types(out)[3:5] == ["TEXT_MESSAGE_END", "CUSTOM"]
        assert (gap["name"], gap["value"]) == (
            "events.dropped",
            {"count": 2, "first_offset": 3, "last_offset": 4, "exact": True},
        )

    def test_a_gap_first(self) -> None:
        gap = EventsDropped(run_id="", count=1, first_offset=1, last_offset=1)
        assert types(translate([gap])) == ["RUN_STARTED", "CUSTOM"]

    def test_another_runs_event_is_refused(self) -> None:
        with pytest.raises(ValueError, match="given to the translator of run"):
            Translator(RUN).translate(MessageDelta(run_id="other", text="x"))

    def test_reopen(self) -> None:
        translator = Translator(RUN)
        assert translator.reopen() == []
        translator.advance(
            stamped(
                [
                    RunStarted(run_id=RUN, payload={"thread_id": "t"}),
                    StepStarted(run_id=RUN, name="outer"),
                    MessageDelta(run_id=RUN, lane_id="w", text="x"),
                    StepStarted(run_id=RUN, lane_id="w", name="inner"),
                    MessageDelta(run_id=RUN, lane_id="w", text="y"),
                ]
            )
        )
        prelude = wire(translator.reopen())
        assert [(e["type"], e.get("subagentRunId")) for e in prelude] == [
            ("RUN_STARTED", None),
            ("STEP_STARTED", None),
            ("SUBAGENT_STARTED", "run-1:w"),
            ("STEP_STARTED", "run-1:w"),
            ("TEXT_MESSAGE_START", "run-1:w"),
        ]
        assert prelude[0]["threadId"] == "t"
        assert prelude[-1]["messageId"] == "run-1:w:3"
        assert wire(translator.reopen()) == prelude  # the state is unchanged
        translator.advance(stamped([RunFinished(run_id=RUN)]))
        assert translator.reopen() == []


@given(run=agent_runs())
async def test_translation_property(anyio_backend: str, run: list[Event]) -> None:
    """The translated stream obeys the ordering rules and is deterministic;
    joining at every cursor gives a valid prelude + suffix that completes the
    conversation exactly; a viewer that lost events still gets a valid stream."""
    complete = bool(run) and run[-1].terminal
    async with EventBus() as bus:
        lossy = bus.subscribe(run_id=RUN, buffer_size=3, gap_events=True)
        async with lossy:
            for index, event in enumerate(run):
                if index % 3 == 0:  # another run in between: offsets skip
                    bus.emit(Log(run_id="other", message="x"))
                bus.emit(event)
            received = []
            while True:
                try:
                    received.append(lossy.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
        history = bus.replay(run_id=RUN)
        if not history:
            return
        full = translate(history)
        check_order(full, complete=complete)
        assert translate(history) == full  # deterministic
        assert all(e.get("delta") != "" for e in full)
        whole = Conversation().apply(full)
        for cursor in [0, *(event.offset for event in bus.replay())]:
            before = [event for event in history if event.offset <= cursor]
            translator = Translator(RUN)
            translator.advance(before)
            joined = wire(translator.reopen()) + wire(
                e
                for event in history[len(before) :]
                for e in translator.translate(event)
            )
            if joined:
                check_order(joined, complete=complete)
            else:
                assert complete and len(before) == len(history)
            resumed = Conversation().apply(translate(before)).apply(joined)
            assert resumed == whole, cursor
        if len(history) > 4:  # more than the buffer holds: events were lost
            assert any(isinstance(event, EventsDropped) for event in received)
        if received:
            check_order(translate(received), complete=complete)


# -- the endpoint, served on loopback ------------------------------------------------


def quiet_config() -> Config:
    config = Config()
    config.errorlog = None
    config.graceful_timeout = 1.0
    return config


@asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """Serve *app* on a free loopback port; yield a client for it."""
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        host, port = await task_group.start(
            partial(
                serve, app, port=0, shutdown_trigger=stop.wait, config=quiet_config()
            )
        )
        try:
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", trust_env=False, timeout=10
            ) as client:
                yield client
        finally:
            stop.set()


async def raw(client: httpx.AsyncClient, request: bytes) -> bytes:
    """Send *request* as is to *client*'s server; the response's head."""
    url = client.base_url
    assert url.host and url.port
    async with await anyio.connect_tcp(url.host, url.port) as connection:
        await connection.send(request)
        received = b""
        with anyio.fail_after(10):
            while b"\r\n\r\n" not in received:
                received += await connection.receive()
    return received


def body(run_id: str = RUN, thread_id: str = "thread-1", **more: Any) -> dict[str, Any]:
    return {"threadId": thread_id, "runId": run_id, "messages": [], **more}


async def read(response: httpx.Response) -> list[Frame]:
    text = ""
    with anyio.fail_after(10):
        async for chunk in response.aiter_text():
            text += chunk
    return parse_frames(text)


def events_of(frames: list[Frame]) -> list[dict[str, Any]]:
    return [validated(frame.data) for frame in frames if frame.data is not None]


@attrs.define
class Script:
    """A run starter whose run waits for the test at ``gate`` (halfway)."""

    bus: EventBus
    gate: anyio.Event = attrs.Factory(anyio.Event)
    halfway: anyio.Event = attrs.Factory(anyio.Event)
    ended: anyio.Event = attrs.Factory(anyio.Event)
    cancelled: bool = False

    async def __call__(self, run_input: RunAgentInput) -> None:
        run_id = run_input.run_id
        try:
            await self.bus.publish(run_started(run_input))
            await self.bus.publish(StepStarted(run_id=run_id, name="think"))
            for word in ("Hello", " there"):
                await self.bus.publish(MessageDelta(run_id=run_id, text=word))
            self.halfway.set()
            await self.gate.wait()
            for word in (",", " world"):
                await self.bus.publish(MessageDelta(run_id=run_id, text=word))
            await self.bus.publish(StepFinished(run_id=run_id, name="think"))
            await self.bus.publish(RunFinished(run_id=run_id))
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.ended.set()


@asynccontextmanager
async def agui_server(
    starter: Callable[[EventBus], Any] = Script, **kwargs: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, EventBus, Any]]:
    async with EventBus() as bus, anyio.create_task_group() as runs:
        script = starter(bus)
        app = create_app(bus, start_run=script, task_group=runs, **kwargs)
        async with running(app) as client:
            yield client, bus, script
        runs.cancel_scope.cancel()


async def task_group_of_own(
    *, task_status: anyio.abc.TaskStatus[TaskGroup] = anyio.TASK_STATUS_IGNORED
) -> None:
    """A task group that can be cancelled apart from its parent's."""
    async with anyio.create_task_group() as task_group:
        task_status.started(task_group)
        await anyio.sleep_forever()


def agui_subscriptions(bus: EventBus) -> list[str]:
    return [s.name for s in bus.statistics().subscriptions if s.name.startswith("agui")]


async def released(bus: EventBus) -> None:
    """Wait until every stream of the AG-UI app has let go of its subscription
    (the server may finish a response after the client has read all of it)."""
    with anyio.fail_after(10):
        while agui_subscriptions(bus):
            await anyio.wait_all_tasks_blocked()


class TestPost:
    async def test_streams_the_run(self) -> None:
        async with agui_server() as (client, bus, script):
            script.gate.set()
            async with client.stream("POST", "/agui", json=body()) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert "access-control-allow-origin" not in response.headers
                frames = await read(response)
            events = events_of(frames)
            check_order(events)
            assert events[0]["threadId"] == "thread-1"
            text = Conversation().apply(events).messages["run-1:main:3"]["content"]
            assert text == "Hello there, world"
            # The last frame made from a bus event carries its offset.
            offsets = [event.offset for event in bus.replay(run_id=RUN)]
            ids = [int(frame.id) for frame in frames if frame.id is not None]
            assert ids == offsets
            assert frames[-1].id == str(offsets[-1])
            await released(bus)

    async def test_a_disconnect_leaves_the_run_finishing(self) -> None:
        async with agui_server() as (client, bus, script):
            url = client.base_url
            assert url.host and url.port
            content = json.dumps(body()).encode()
            request = (
                b"POST /agui HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(content), content)
            )
            async with await anyio.connect_tcp(url.host, url.port) as connection:
                await connection.send(request)
                received = b""
                with anyio.fail_after(10):
                    while b"TEXT_MESSAGE_CONTENT" not in received:
                        received += await connection.receive()
            assert script.halfway.is_set()
            # The client is gone; the run is not.
            await released(bus)
            script.gate.set()
            with anyio.fail_after(10):
                await script.ended.wait()
            assert not script.cancelled
            assert isinstance(bus.replay(run_id=RUN)[-1], RunFinished)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"", "the body is not a RunAgentInput"),
            (b"{", "the body is not a RunAgentInput"),
            (b"[]", "the body is not a RunAgentInput"),
            (b'{"runId": "r"}', "threadId: Field required"),
            (b'{"threadId": "t", "runId": 5, "messages": []}', "runId"),
            (
                b'{"threadId": "t", "runId": "", "messages": []}',
                "a run id has 1 to 512",
            ),
            (json.dumps(body("r" * 600)).encode(), "a run id has 1 to 512"),
            (json.dumps(body("a\nb")).encode(), "printable characters"),
            (
                b'{"threadId": "t", "runId": "r", "messages": [], "state": '
                + b"[" * 100_000
                + b"]" * 100_000
                + b"}",
                "recursion limit exceeded",
            ),
            (b'{"threadId":"t","runId":"r","messages":[{"role":"x"}]}', "messages"),
            (b"\xff\xfe", "the body is not a RunAgentInput"),
        ],
    )
    async def test_malformed_input(self, content: bytes, message: str) -> None:
        async with agui_server() as (client, bus, _):
            response = await client.post("/agui", content=content)
            assert response.status_code == 400
            assert message in response.text
            assert response.headers["content-type"].startswith("text/plain")
            assert bus.replay() == []

    async def test_a_huge_body(self) -> None:
        async with agui_server(max_body=1000) as (client, bus, _):
            big = json.dumps(body(forwardedProps={"x": "y" * 5000})).encode()
            response = await client.post("/agui", content=big)
            assert response.status_code == 413
            assert "larger than 1000 bytes" in response.text

            # Chunked, without a Content-Length: refused once past the bound.
            chunk = b"1f4\r\n" + b" " * 500 + b"\r\n"
            head = await raw(
                client,
                b"POST /agui HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 10,
            )
            assert head.startswith(b"HTTP/1.1 413")
            assert bus.replay() == []

    async def test_an_existing_run_is_refused(self) -> None:
        async with agui_server() as (client, bus, script):
            bus.emit(Log(run_id="taken", message="x", visibility=Visibility.PRIVATE))
            response = await client.post("/agui", json=body("taken"))
            assert response.status_code == 409
            assert "GET" in response.text
            # A run being started is taken too.
            async with client.stream("POST", "/agui", json=body()) as first:
                assert first.status_code == 200
                second = await client.post("/agui", json=body())
                assert second.status_code == 409
                script.gate.set()
                await read(first)

    async def test_without_a_starter(self) -> None:
        async with EventBus() as bus, running(create_app(bus)) as client:
            response = await client.post("/agui", json=body())
            assert response.status_code == 405
            assert response.headers["allow"] == "GET"

    async def test_a_failing_starter_ends_the_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Failing:
            def __init__(self, bus: EventBus) -> None:
                self.bus = bus

            async def __call__(self, run_input: RunAgentInput) -> None:
                await self.bus.publish(run_started(run_input))
                raise RuntimeError("secret detail")

        async with (
            agui_server(Failing) as (client, _, _),
            client.stream("POST", "/agui", json=body()) as response,
        ):
            events = events_of(await read(response))
        check_order(events)
        assert events[-1] == {
            "type": "RUN_ERROR",
            "message": "the run starter failed",
            "timestamp": events[-1]["timestamp"],
        }
        assert "secret detail" not in json.dumps(events)
        assert "the run starter failed for run 'run-1'" in caplog.text

    async def test_a_starter_that_returns_early(self) -> None:
        class Early:
            def __init__(self, bus: EventBus) -> None:
                pass

            async def __call__(self, run_input: RunAgentInput) -> None:
                pass

        async with (
            agui_server(Early) as (client, _, _),
            client.stream("POST", "/agui", json=body()) as response,
        ):
            events = events_of(await read(response))
        check_order(events)
        assert types(events) == ["RUN_STARTED", "RUN_ERROR"]
        assert events[-1]["message"] == "the run starter returned before the run ended"

    async def test_a_cancelled_starter_cancels_the_run(self) -> None:
        async with EventBus() as bus, anyio.create_task_group() as task_group:
            runs: TaskGroup = await task_group.start(task_group_of_own)
            script = Script(bus)
            app = create_app(bus, start_run=script, task_group=runs)
            async with (
                running(app) as client,
                client.stream("POST", "/agui", json=body()) as response,
            ):
                await script.halfway.wait()
                runs.cancel_scope.cancel()  # the server shuts its runs down
                events = events_of(await read(response))
        assert script.cancelled
        check_order(events)
        assert events[-1]["type"] == "RUN_FINISHED"
        assert events[-1]["outcome"] == {"type": "cancelled"}
        assert events[-1]["metadata"] == {"reason": "the server stopped the run"}

    def test_bad_arguments(self) -> None:
        bus = EventBus()

        async def start(run_input: RunAgentInput) -> None:
            pass

        with pytest.raises(ValueError, match="task_group"):
            create_app(bus, start_run=start)
        for kwargs in (
            {"path": "agui"},
            {"path": "/agui/"},
            {"heartbeat": 0},
            {"heartbeat": math.inf},
            {"buffer_size": 0},
            {"max_body": 0},
        ):
            with pytest.raises(ValueError, match=next(iter(kwargs))):
                create_app(bus, **kwargs)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"path": 3}, "path must be a str, not int"),
            ({"heartbeat": "1"}, "heartbeat must be a number, not str"),
            ({"heartbeat": True}, "heartbeat must be a number, not bool"),
            ({"buffer_size": "8"}, "buffer_size must be an int, not str"),
            ({"buffer_size": 1.5}, "buffer_size must be an int, not float"),
            ({"buffer_size": True}, "buffer_size must be an int, not bool"),
            ({"max_body": True}, "max_body must be an int, not bool"),
        ],
    )
    def test_arguments_of_the_wrong_type(
        self, kwargs: dict[str, Any], message: str
    ) -> None:
        """As for EventBus, subscribe and web.create_app (purpose_bus._validate)."""
        with pytest.raises(TypeError) as info:
            create_app(EventBus(), **kwargs)
        assert str(info.value) == message


class TestGet:
    async def test_a_finished_run_replays_whole(self) -> None:
        async with agui_server() as (client, _bus, script):
            script.gate.set()
            async with client.stream("POST", "/agui", json=body()) as response:
                posted = await read(response)
            async with client.stream("GET", "/agui/runs/run-1") as response:
                assert response.status_code == 200
                got = await read(response)
            assert got == posted

    async def test_join_mid_run_and_resume(self) -> None:
        async with agui_server() as (client, bus, script):
            async with client.stream("POST", "/agui", json=body()) as response:
                with anyio.fail_after(10):
                    await script.halfway.wait()
                cursor = bus.replay(run_id=RUN)[-2].offset  # mid-message
                async with client.stream(
                    "GET", "/agui/runs/run-1", headers={"Last-Event-ID": str(cursor)}
                ) as joined:
                    script.gate.set()
                    resumed = events_of(await read(joined))
                posted = events_of(await read(response))
            check_order(resumed)
            assert types(resumed)[:3] == [
                "RUN_STARTED",
                "STEP_STARTED",
                "TEXT_MESSAGE_START",
            ]
            prefix = translate(
                [e for e in bus.replay(run_id=RUN) if e.offset <= cursor]
            )
            assert Conversation().apply(prefix).apply(resumed) == Conversation().apply(
                posted
            )

    async def test_after_query_and_last_event_id_wins(self) -> None:
        async with agui_server() as (client, bus, script):
            script.gate.set()
            async with client.stream("POST", "/agui", json=body()) as response:
                await read(response)
            last = bus.replay(run_id=RUN)[-1].offset
            response = await client.get(f"/agui/runs/{RUN}", params={"after": last})
            assert response.status_code == 204
            response = await client.get(
                f"/agui/runs/{RUN}",
                params={"after": last},
                headers={"Last-Event-ID": "0"},
            )
            assert response.status_code == 200

    @pytest.mark.parametrize(
        ("params", "headers", "message"),
        [
            ({"after": "-1"}, {}, "after must be an event offset"),
            ({"after": "1e9"}, {}, "after must be an event offset"),
            ({"after": "9" * 30}, {}, "after must be an event offset"),
            ({"after": str(2**63)}, {}, "after must be an event offset"),
            (
                {"after": "\u0661"},
                {},
                "after must be an event offset",
            ),  # a non-ASCII digit
            ({"after": ["1", "2"]}, {}, "at most once"),
            ({}, {"Last-Event-ID": "x"}, "Last-Event-ID must be"),
            ({"after": "1000000"}, {}, "is not an event of run"),
            ({"run_id": "x"}, {}, "unknown query parameter"),
            ({"after": "2"}, {}, "is not an event of run 'run-1' on this server"),
        ],
    )
    async def test_bad_cursors(
        self, params: dict[str, Any], headers: dict[str, str], message: str
    ) -> None:
        async with agui_server() as (client, bus, _):
            bus.emit(RunStarted(run_id=RUN))
            bus.emit(Log(run_id="other", message="offset 2"))
            bus.emit(Log(run_id=RUN, message="offset 3"))
            response = await client.get(
                f"/agui/runs/{RUN}", params=params, headers=headers
            )
            assert response.status_code == 400
            assert message in response.text
            assert agui_subscriptions(bus) == []

    async def test_unknown_runs(self) -> None:
        async with agui_server() as (client, bus, _):
            bus.emit(Log(run_id="hidden", message="x", visibility=Visibility.INTERNAL))
            for path in (
                "/agui/runs/nope",
                "/agui/runs/hidden",
                "/agui/runs/" + "r" * 600,
            ):
                response = await client.get(path)
                assert response.status_code in (400, 404), path
            assert (await client.get("/agui/runs/nope")).text.startswith(
                "unknown run 'nope'"
            )
            assert (await client.get("/agui/runs/")).status_code == 400
            assert (await client.delete("/agui/runs/x")).status_code == 405

    async def test_head(self) -> None:
        async with agui_server() as (client, bus, script):
            async with client.stream("POST", "/agui", json=body()) as response:
                await script.halfway.wait()
                # The run is live: HEAD answers at once and holds nothing.
                head = await client.head(f"/agui/runs/{RUN}")
                assert head.status_code == 200
                assert head.headers["content-type"].startswith("text/event-stream")
                with anyio.fail_after(10):
                    while len(agui_subscriptions(bus)) > 1:  # the POST's is left
                        await anyio.wait_all_tasks_blocked()
                script.gate.set()
                await read(response)
            await released(bus)

    async def test_a_run_id_with_slashes(self) -> None:
        async with agui_server() as (client, _bus, script):
            script.gate.set()
            async with client.stream("POST", "/agui", json=body("a/b c")) as response:
                posted = await read(response)
            response = await client.get("/agui/runs/a/b%20c")
            assert parse_frames(response.text) == posted

    async def test_host_check(self) -> None:
        async with agui_server() as (client, bus, _):
            response = await client.post(
                "/agui", json=body(), headers={"Host": "evil.example"}
            )
            assert response.status_code == 400
            assert "not allowed" in response.text
            assert bus.replay() == []

    async def test_configured_host(self) -> None:
        async with agui_server(allowed_hosts=["agents.example"]) as (
            client,
            _bus,
            script,
        ):
            script.gate.set()
            response = await client.post(
                "/agui", json=body(), headers={"Host": "agents.example"}
            )
            assert response.status_code == 200
            assert (await client.post("/agui", json=body("r2"))).status_code == 400


# -- many viewers, and clients that go away, at the ASGI level ------------------


class StaysConnected:
    """An ASGI ``receive``: the request, then nothing (the client stays)."""

    def __init__(self) -> None:
        self.requested = False

    async def __call__(self) -> Message:
        if self.requested:
            await anyio.sleep_forever()
        self.requested = True
        return {"type": "http.request", "body": b"", "more_body": False}


def get_scope(path: str) -> Scope:
    return http_scope(path, [b"127.0.0.1"])


async def call_app(
    app: ASGIApp, path: str, *, disconnect: anyio.Event | None = None
) -> tuple[int, bytes]:
    """One GET to *app*; the client disconnects when *disconnect* is set."""
    path, _, query = path.partition("?")
    scope: Scope = http_scope(path, [b"127.0.0.1"], query=query.encode())
    gone = disconnect or anyio.Event()
    requested = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


class TestViewers:
    async def test_a_thousand_viewers_get_the_same_events(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus)
            bus.emit(RunStarted(run_id=RUN))
            bus.emit(MessageDelta(run_id=RUN, text="a"))
            results: list[tuple[int, bytes]] = []

            async def view() -> None:
                results.append(await call_app(app, f"/agui/runs/{RUN}"))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as task_group:
                    for _ in range(1000):
                        task_group.start_soon(view)
                    await anyio.wait_all_tasks_blocked()
                    assert len(agui_subscriptions(bus)) == 1000
                    bus.emit(MessageDelta(run_id=RUN, text="b"))
                    bus.emit(RunFinished(run_id=RUN))
            assert {status for status, _ in results} == {200}
            assert len({content for _, content in results}) == 1
            check_order(events_of(parse_frames(results[0][1].decode())))
            assert agui_subscriptions(bus) == []

    async def test_a_disconnect_mid_prelude(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus)
            bus.emit(RunStarted(run_id=RUN))
            bus.emit(MessageDelta(run_id=RUN, text="a"))
            gone = anyio.Event()
            gone.set()  # the client is gone before the prelude is sent
            with anyio.fail_after(10):
                status, _ = await call_app(
                    app, f"/agui/runs/{RUN}?after=2", disconnect=gone
                )
            assert status == 200
            assert agui_subscriptions(bus) == []

    async def test_a_heartbeat_in_silence(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus, heartbeat=0.01)
            bus.emit(RunStarted(run_id=RUN))
            chunks: list[bytes] = []

            async def send(message: Message) -> None:
                chunks.append(message.get("body", b""))
                if b": heartbeat\n\n" in chunks[-1]:
                    bus.emit(RunFinished(run_id=RUN))

            with anyio.fail_after(10):
                await app(get_scope(f"/agui/runs/{RUN}"), StaysConnected(), send)
            content = b"".join(chunks)
            assert b": heartbeat\n\n" in content
            assert b"RUN_FINISHED" in content

    async def test_a_slow_viewer_is_told_what_it_lost(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus, buffer_size=2)
            bus.emit(RunStarted(run_id=RUN))
            result: list[tuple[int, bytes]] = []

            async def view() -> None:
                result.append(await call_app(app, f"/agui/runs/{RUN}"))

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(view)
                await anyio.wait_all_tasks_blocked()
                for index in range(10):  # all at once: the viewer cannot keep up
                    bus.emit(MessageDelta(run_id=RUN, text=f"{index} "))
                bus.emit(RunFinished(run_id=RUN))
            events = events_of(parse_frames(result[0][1].decode()))
            check_order(events)
            notices = [e for e in events if e["type"] == "CUSTOM"]
            assert [n["name"] for n in notices] == ["events.dropped"]
            assert notices[0]["value"]["count"] >= 8

    async def test_streams_end_when_the_bus_closes(self) -> None:
        bus = EventBus()
        async with bus:
            app = create_app(bus)
            bus.emit(RunStarted(run_id=RUN))
            result: list[tuple[int, bytes]] = []

            async def view() -> None:
                result.append(await call_app(app, f"/agui/runs/{RUN}"))

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(view)
                await anyio.wait_all_tasks_blocked()
                await bus.aclose()
        status, content = result[0]
        assert status == 200
        assert types(events_of(parse_frames(content.decode()))) == ["RUN_STARTED"]

    async def test_a_cursor_before_the_run(self) -> None:
        async with EventBus() as bus:
            bus.emit(Log(run_id="other", message="offset 1"))
            bus.emit(RunStarted(run_id=RUN))
            bus.emit(RunFinished(run_id=RUN))
            whole = await call_app(create_app(bus), f"/agui/runs/{RUN}")
            after_1 = await call_app(create_app(bus), f"/agui/runs/{RUN}?after=1")
            assert after_1 == whole
            assert whole[0] == 200

    async def test_a_cursor_history_no_longer_reaches(self) -> None:
        async with EventBus(history_size=4) as bus:
            bus.emit(RunStarted(run_id=RUN))
            for index in range(5):  # offsets 2-6: history keeps 3-6
                bus.emit(MessageDelta(run_id=RUN, text=f"{index} "))
            bus.emit(RunFinished(run_id=RUN))
            status, content = await call_app(
                create_app(bus), f"/agui/runs/{RUN}?after=1"
            )
        assert status == 200
        events = events_of(parse_frames(content.decode()))
        check_order(events)
        assert types(events)[:2] == ["RUN_STARTED", "CUSTOM"]
        assert events[1]["name"] == "events.dropped"
        assert events[1]["value"]["first_offset"] == 2

    async def test_the_bus_closed(self) -> None:
        bus = EventBus()
        async with bus:
            bus.emit(RunStarted(run_id=RUN))
        status, content = await call_app(create_app(bus), f"/agui/runs/{RUN}")
        assert (status, content) == (503, b"the bus is closed\n")

    async def test_post_to_a_closed_bus(self) -> None:
        async with anyio.create_task_group() as runs:
            bus = EventBus()
            async with bus:
                pass
            app = create_app(bus, start_run=Script(bus), task_group=runs)
            async with running(app) as client:
                response = await client.post("/agui", json=body())
            assert (response.status_code, response.text) == (
                503,
                "the bus is closed\n",
            )


# -- python -m purpose_bus demo --serve ------------------------------------------------


class TestDemo:
    async def test_without_the_agui_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "purpose_bus.agui", None)  # not importable
        monkeypatch.delattr(purpose_bus, "agui")
        stop = anyio.Event()
        async with anyio.create_task_group() as task_group:
            host, port = await task_group.start(
                partial(serve_demo, port=0, stop=stop.wait, pace=0, rounds=0)
            )
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", trust_env=False
            ) as http:
                assert (await http.post("/agui", json=body())).status_code == 404
                assert (await http.get("/kinds")).status_code == 200  # the live view
            stop.set()

    async def test_post_starts_a_demo_run(self) -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as task_group:
            host, port = await task_group.start(
                partial(
                    serve_demo, port=0, stop=stop.wait, pace=0, pause=math.inf, rounds=0
                )
            )
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", trust_env=False
            ) as client:
                async with client.stream(
                    "POST", "/agui", json=body("mine", "t-7")
                ) as response:
                    events = events_of(await read(response))
                check_order(events)
                assert events[0]["threadId"] == "t-7"
                texts = [
                    m["content"]
                    for m in Conversation().apply(events).messages.values()
                    if m["role"] == "assistant"
                ]
                assert "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 " in texts
                assert {
                    e["name"] for e in events if e["type"] == "SUBAGENT_STARTED"
                } == {"plan", "search", "write"}
                joined = await client.get("/agui/runs/mine")
                assert events_of(parse_frames(joined.text)) == events
                assert (await client.get("/kinds")).status_code == 200  # the live view
            stop.set()


class TestWhatAReviewFound:
    async def test_a_join_without_a_cursor_on_a_trimmed_history_shows_no_loss(
        self,
    ) -> None:
        """``after=0`` on a history that evicted other runs' events announced
        them all as this run's loss (and lost the run's threadId)."""
        async with EventBus(history_size=50) as bus, anyio.create_task_group() as runs:
            for i in range(200):
                bus.emit(Log(run_id=f"other{i}", message="m"))
            bus.emit(RunStarted(run_id="r", payload={"thread_id": "T1"}))
            bus.emit(MessageDelta(run_id="r", text="hello"))
            bus.emit(RunFinished(run_id="r"))
            app = create_app(bus, task_group=runs)
            async with (
                running(app) as client,
                client.stream("GET", "/agui/runs/r") as response,
            ):
                got = events_of(await read(response))
        check_order(got)
        assert [e["type"] for e in got if e["type"] == "CUSTOM"] == []
        assert got[0]["threadId"] == "T1"
        assert got[-1]["type"] == "RUN_FINISHED"

    async def test_a_lone_surrogate_is_streamed_not_a_crash(self) -> None:
        """Admission and encode take a lone surrogate (JSON escapes it);
        pydantic's encoder refused it and the stream died for every viewer."""
        async with EventBus() as bus, anyio.create_task_group() as runs:
            bus.emit(RunStarted(run_id="s"))
            bus.emit(MessageDelta(run_id="s", text="a\ud800b"))
            bus.emit(ToolCall(run_id="s", name="t", arguments={"k\ud800": 1}))
            bus.emit(RunFinished(run_id="s"))
            app = create_app(bus, task_group=runs)
            async with (
                running(app) as client,
                client.stream("GET", "/agui/runs/s") as response,
            ):
                assert response.status_code == 200
                frames = await read(response)
        got = [json.loads(frame.data) for frame in frames if frame.data is not None]
        deltas = [e["delta"] for e in got if e["type"] == "TEXT_MESSAGE_CONTENT"]
        assert deltas == ["a\ud800b"]
        assert got[-1]["type"] == "RUN_FINISHED"

    async def test_a_post_of_a_run_that_ended_and_left_history_gets_409(
        self,
    ) -> None:
        """The bus remembers ended runs beyond history (and rejects their
        events): a POST of one got 200 and an empty stream."""
        async with EventBus(history_size=5) as bus, anyio.create_task_group() as runs:

            async def start(run_input: RunAgentInput) -> None:
                pass

            bus.emit(RunStarted(run_id="done"))
            bus.emit(RunFinished(run_id="done"))
            for i in range(10):
                bus.emit(Log(run_id=f"other{i}", message="m"))
            app = create_app(bus, start_run=start, task_group=runs)
            async with running(app) as client:
                response = await client.post("/agui", json=body(run_id="done"))
            assert response.status_code == 409
