"""Tests of :mod:`purpose_bus.web`: the Server-Sent-Events endpoint driven at the
ASGI level by hand (a receive/send pair the test controls), the same app served
by hypercorn on loopback, and ``python -m purpose_bus demo --serve``."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import anyio
import attrs
import httpx
import pytest
from helpers import unchecked
from hypercorn.config import Config
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from purpose_bus import (
    Event,
    EventBus,
    EventsDropped,
    LaneStarted,
    Log,
    MessageDelta,
    RunCancelled,
    RunError,
    RunFinished,
    RunStarted,
    ToolCall,
    Visibility,
    decode,
)
from purpose_bus._demo import main, serve_demo
from purpose_bus.web import create_app, format_event, serve

ASGIApp = Callable[[Scope, Receive, Send], Any]


@attrs.frozen(kw_only=True)
class Audited(Event):
    """An event kind of the application's own (to test ``kinds`` and /kinds)."""

    kind = "test_web.audited"
    terminal = True


@attrs.frozen(kw_only=True)
class BrokenKind(Event):
    """A kind no SSE ``event:`` line can carry."""

    kind = "test_web.broken\nkind"


# -- Server-Sent Events, parsed -------------------------------------------------


@attrs.frozen
class SSE:
    """One block of a Server-Sent-Events stream (up to a blank line)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()

    def decoded(self) -> Event:
        assert self.data is not None
        return decode(self.data)


def parse_block(block: str) -> SSE:
    fields: dict[str, Any] = {}
    comments = []
    for line in block.split("\n"):
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(": ")
        assert name not in fields, f"{name} twice in {block!r}"
        fields[name] = int(value) if name == "retry" else value
    return SSE(**fields, comments=tuple(comments))


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSE]:
        self._buffer += chunk
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        return [parse_block(block.decode()) for block in blocks]


# -- one request, driven by hand ------------------------------------------------


class Exchange:
    """One HTTP request to an ASGI app: the app's ``receive`` (the request, then
    ``http.disconnect`` once :meth:`disconnect` is called) and ``send`` (kept
    for the test to read)."""

    def __init__(self) -> None:
        self._sent, self._messages = anyio.create_memory_object_stream[Message](
            math.inf
        )
        self._requested = False
        self._disconnected = anyio.Event()
        self.done = anyio.Event()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self._parser = SSEParser()
        self._pending: deque[SSE] = deque()

    async def receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self._sent.send_nowait(message)

    def disconnect(self) -> None:
        self._disconnected.set()

    def app_returned(self) -> None:
        self._sent.close()
        self.done.set()

    def close(self) -> None:
        self._sent.close()
        self._messages.close()

    async def start(self) -> int:
        """Wait for the response to start; return its status."""
        if not self.status:
            message = await self._messages.receive()
            assert message["type"] == "http.response.start", message
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        return self.status

    async def chunk(self) -> bytes | None:
        """The next chunk of the body; ``None`` after the last one."""
        await self.start()
        if self.complete:
            return None
        try:
            message = await self._messages.receive()
        except anyio.EndOfStream:
            self.complete = True  # the app returned without ending the body
            return None
        assert message["type"] == "http.response.body", message
        if not message.get("more_body", False):
            self.complete = True
        return bytes(message.get("body", b""))

    async def body(self) -> bytes:
        parts = []
        while (part := await self.chunk()) is not None:
            parts.append(part)
        return b"".join(parts)

    async def next(self) -> SSE:
        """The next block of the event stream.

        :raises EOFError: if the response ended first
        """
        while not self._pending:
            chunk = await self.chunk()
            if chunk is None:
                raise EOFError("the response ended")
            self._pending.extend(self._parser.feed(chunk))
        return self._pending.popleft()

    async def next_event(self) -> SSE:
        """The next block that carries data (an event or a notice)."""
        while (block := await self.next()).data is None:
            pass
        return block

    async def rest(self) -> list[SSE]:
        """Every block until the response ends."""
        blocks = []
        while True:
            try:
                blocks.append(await self.next())
            except EOFError:
                return blocks


def http_scope(
    path: str,
    query: str | Mapping[str, Any] = "",
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> Scope:
    if not isinstance(query, str):
        query = urlencode(query, doseq=True)
    raw_headers = [(b"host", b"testserver")] + [
        (name.lower().encode(), value.encode())
        for name, value in (headers or {}).items()
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@asynccontextmanager
async def request(
    app: ASGIApp,
    path: str = "/events",
    query: str | Mapping[str, Any] = "",
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> AsyncIterator[Exchange]:
    """Run one request to *app*; on exit the client disconnects, and the app
    must return within 5 seconds."""
    exchange = Exchange()
    scope = http_scope(path, query, headers, method)

    async def run() -> None:
        try:
            await app(scope, exchange.receive, exchange.send)
        finally:
            exchange.app_returned()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(run)
        try:
            yield exchange
        finally:
            exchange.disconnect()
            with anyio.fail_after(5):
                await exchange.done.wait()
            exchange.close()


async def get(app: ASGIApp, path: str, **kwargs: Any) -> tuple[int, bytes, Exchange]:
    async with request(app, path, **kwargs) as exchange:
        with anyio.fail_after(5):
            body = await exchange.body()
    return exchange.status, body, exchange


def web_subscriptions(bus: EventBus) -> list[str]:
    return [s.name for s in bus.statistics().subscriptions if s.name.startswith("web")]


def emit_run(bus: EventBus, run_id: str = "r1", deltas: int = 2) -> list[Event]:
    """Emit the start of a run; return the stamped events, as history has them."""
    bus.emit(RunStarted(run_id=run_id))
    bus.emit(LaneStarted(run_id=run_id, lane_id="plan"))
    for index in range(deltas):
        bus.emit(MessageDelta(run_id=run_id, lane_id="plan", text=f"{index} "))
    return bus.replay(run_id=run_id)


# -- the message format ---------------------------------------------------------


class TestFormatEvent:
    async def test_an_event_is_one_message(self) -> None:
        async with EventBus() as bus:
            event = await bus.publish(MessageDelta(run_id="r1", text="a\nb\r\nc"))
        assert event is not None
        text = format_event(event).decode()
        assert text.endswith("\n\n") and text.count("\n\n") == 1
        block = parse_block(text[:-2])
        assert (block.id, block.event) == (str(event.offset), "message.delta")
        assert block.decoded() == event

    def test_a_notice_has_no_id(self) -> None:
        notice = EventsDropped(
            run_id="r1", count=3, first_offset=4, last_offset=6, lane_id="x"
        )
        block = parse_block(format_event(notice).decode()[:-2])
        assert block.id is None
        assert block.event == "events.dropped"
        assert block.decoded() == notice

    def test_a_kind_with_a_line_break_is_refused(self) -> None:
        with pytest.raises(ValueError, match="line break"):
            format_event(BrokenKind(run_id="r1"))


# -- GET /events, driven at the ASGI level -----------------------------------------


class TestEvents:
    async def test_the_stream(self) -> None:
        async with EventBus() as bus:
            events = emit_run(bus)
            app = create_app(bus, retry=0.25)
            async with request(app, query={"after": 0}) as stream:
                assert await stream.start() == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                assert stream.headers["cache-control"] == "no-cache"
                assert await stream.next() == SSE(retry=250)
                for event in events:
                    block = await stream.next()
                    assert block.id == str(event.offset)
                    assert block.event == event.kind
                    assert block.decoded() == event
                # Live events follow, in order.
                finished = await bus.publish(RunFinished(run_id="r1"))
                assert (await stream.next()).decoded() == finished

    async def test_it_starts_live_without_a_cursor(self) -> None:
        async with EventBus() as bus:
            emit_run(bus)
            async with request(create_app(bus)) as stream:
                assert await stream.next() == SSE(retry=1000)  # subscribed by now
                log = await bus.publish(Log(run_id="r1", message="now"))
                assert (await stream.next()).decoded() == log

    async def test_last_event_id_resumes_and_wins_over_after(self) -> None:
        async with EventBus() as bus:
            events = emit_run(bus, deltas=5)
            app = create_app(bus)
            for headers, query in [
                ({"Last-Event-ID": "3"}, {}),
                ({}, {"after": "3"}),
                ({"Last-Event-ID": "3"}, {"after": "0"}),
            ]:
                async with request(app, query=query, headers=headers) as stream:
                    await stream.next()  # retry
                    offsets = [(await stream.next()).id for _ in events[3:]]
                    assert offsets == [str(e.offset) for e in events[3:]]

    async def test_a_cursor_history_no_longer_reaches_is_a_gap(self) -> None:
        async with EventBus(history_size=3) as bus:
            events = emit_run(bus, deltas=6)  # offsets 1..8; history holds 6..8
            async with request(create_app(bus), headers={"Last-Event-ID": "2"}) as s:
                await s.next()
                notice = await s.next()
                assert (notice.id, notice.event) == (None, "events.dropped")
                dropped = notice.decoded()
                assert isinstance(dropped, EventsDropped)
                assert (dropped.count, dropped.first_offset) == (3, 3)
                assert dropped.last_offset == 5
                rest = [(await s.next()).id for _ in range(3)]
                assert rest == [str(e.offset) for e in events[-3:]]

    async def test_dropped_events_are_announced_without_an_id(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus, buffer_size=4)
            async with request(app, query={"run_id": "r1"}) as stream:
                await stream.next()
                # Twenty events at once, for a buffer of four: sixteen dropped.
                events = emit_run(bus, deltas=18)
                notice = await stream.next()
                assert notice.id is None
                dropped = notice.decoded()
                assert isinstance(dropped, EventsDropped)
                assert dropped.count == 16
                assert (dropped.first_offset, dropped.last_offset) == (1, 16)
                rest = [(await stream.next()).id for _ in range(4)]
                assert rest == [str(e.offset) for e in events[16:]]

    async def test_filters(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus)
            query = {
                "run_id": ["r1", "r2"],
                "lane_id": ["main", "plan"],
                "kinds": ["run.started,message.delta", "test_web.audited"],
            }
            async with request(app, query=query) as stream:
                await stream.next()
                emit_run(bus, "r1")
                emit_run(bus, "r2")
                emit_run(bus, "r3")
                bus.emit(MessageDelta(run_id="r1", lane_id="other", text="x"))
                bus.emit(Audited(run_id="r2"))
                bus.emit(Log(run_id="r1", message="not a kind asked for"))
                bus.emit(Audited(run_id="r1"))  # the last: the stream stops at it
                seen = []
                while (block := await stream.next()).event != "test_web.audited" or (
                    block.decoded().run_id != "r1"
                ):
                    event = block.decoded()
                    seen.append((event.run_id, event.lane_id, event.kind))
        assert seen == [
            ("r1", "main", "run.started"),
            ("r1", "plan", "message.delta"),
            ("r1", "plan", "message.delta"),
            ("r2", "main", "run.started"),
            ("r2", "plan", "message.delta"),
            ("r2", "plan", "message.delta"),
            ("r2", "main", "test_web.audited"),
        ]

    async def test_it_ends_after_the_runs_terminal_event(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus)
            async with request(app, query={"run_id": "r1"}) as stream:
                await stream.next()
                emit_run(bus)
                bus.emit(RunError(run_id="r1", error="boom"))
                with anyio.fail_after(5):
                    blocks = await stream.rest()
                    await stream.done.wait()  # without a disconnect
                assert blocks[-1].event == "run.error"
                assert stream.complete
                assert web_subscriptions(bus) == []

    async def test_a_finished_run_resumed_after_its_end_gets_204(self) -> None:
        async with EventBus() as bus:
            emit_run(bus)
            end = await bus.publish(RunFinished(run_id="r1"))
            assert end is not None
            app = create_app(bus)
            query = {"run_id": "r1", "after": end.offset}
            status, body, _ = await get(app, "/events", query=query)
            assert (status, body) == (204, b"")
            # From its start, it replays the run, then ends.
            async with request(app, query={"run_id": "r1", "after": 0}) as stream:
                with anyio.fail_after(5):
                    blocks = await stream.rest()
                assert [b.event for b in blocks[-2:]] == [
                    "message.delta",
                    "run.finished",
                ]
            assert web_subscriptions(bus) == []

    async def test_heartbeats(self) -> None:
        async with (
            EventBus() as bus,
            request(create_app(bus, heartbeat=0.01)) as stream,
        ):
            await stream.next()
            with anyio.fail_after(5):
                assert await stream.next() == SSE(comments=("heartbeat",))
                assert await stream.next() == SSE(comments=("heartbeat",))
            log = await bus.publish(Log(run_id="r1", message="still here"))
            assert (await stream.next_event()).decoded() == log

    async def test_a_disconnect_releases_the_subscription(self) -> None:
        async with EventBus() as bus, request(create_app(bus)) as stream:
            await stream.next()
            assert web_subscriptions(bus) == ["web 127.0.0.1:50000"]
            stream.disconnect()
            with anyio.fail_after(5):
                await stream.done.wait()
            assert web_subscriptions(bus) == []

    async def test_the_stream_ends_when_the_bus_closes(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus)
            async with request(app) as stream:
                await stream.next()
                await bus.aclose()
                with anyio.fail_after(5):
                    assert await stream.rest() == []
                    await stream.done.wait()
                assert stream.complete
            status, body, _ = await get(app, "/events")
            assert (status, body) == (503, b"the bus is closed\n")

    async def test_a_bus_not_open_yet_gets_503(self) -> None:
        bus = EventBus()
        status, _, _ = await get(create_app(bus), "/events")
        assert status == 503

    async def test_head(self) -> None:
        async with EventBus() as bus:
            status, body, exchange = await get(
                create_app(bus), "/events", method="HEAD"
            )
            assert (status, body) == (200, b"")
            assert exchange.headers["content-type"].startswith("text/event-stream")
            assert web_subscriptions(bus) == []

    async def test_an_event_that_cannot_be_encoded_is_announced(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Admission keeps such events out of the bus; one that got past it
        (only ``object.__setattr__`` on a frozen event can do that) is
        announced to the client as a dropped event, and its id moves the
        cursor past it: never silence."""
        event = unchecked(Log(run_id="r1", message="x"), payload={"s": {1}})
        async with EventBus() as bus, request(create_app(bus)) as stream:
            await stream.next()
            bad = await bus.publish(event)
            good = await bus.publish(Log(run_id="r1", message="y"))
            assert bad is not None and good is not None
            notice = (await stream.next()).decoded()
            assert isinstance(notice, EventsDropped)
            assert (notice.count, notice.first_offset) == (1, bad.offset)
            assert (notice.last_offset, notice.run_id) == (bad.offset, "r1")
            skipped = await stream.next()
            assert (skipped.id, skipped.data) == (str(bad.offset), None)
            assert (await stream.next()).decoded() == good
        assert "cannot stream event" in caplog.text


@pytest.mark.parametrize(
    ("query", "headers", "message"),
    [
        ("after=-1", {}, "after must be an event offset (an integer >= 0), not '-1'"),
        ("after=x", {}, "after must be an event offset"),
        ("after=1&after=2", {}, "after must be given at most once"),
        ("after=" + "9" * 20, {}, "after must be an event offset"),
        (f"after={2**63}", {}, "after must be an event offset"),  # past 2**63-1
        ("", {"Last-Event-ID": "abc"}, "Last-Event-ID must be an event offset"),
        ("after=1", {"Last-Event-ID": "1.5"}, "Last-Event-ID must be an event offset"),
        ("run_id=", {}, "run_id must not be empty"),
        ("lane_id=a&lane_id=", {}, "lane_id must not be empty"),
        ("kinds=run.started,,log", {}, "kinds must not be empty"),
        ("kinds=run.startd", {}, "kinds: unknown kind 'run.startd'; known kinds: "),
        ("run=r1", {}, "unknown query parameter 'run'; use run_id, lane_id, kinds"),
    ],
)
async def test_a_bad_query_gets_400(
    query: str, headers: dict[str, str], message: str
) -> None:
    async with EventBus() as bus:
        status, body, exchange = await get(
            create_app(bus), "/events", query=query, headers=headers
        )
        assert status == 400
        assert exchange.headers["content-type"].startswith("text/plain")
        assert body.decode().startswith(f"bad request: {message}")
        assert web_subscriptions(bus) == []


class TestVisibility:
    @staticmethod
    def emit_each_level(bus: EventBus) -> None:
        for level in Visibility:
            bus.emit(Log(run_id="r1", message=level.name, visibility=level))
        bus.emit(RunFinished(run_id="r1"))

    async def messages(self, app: ASGIApp, **headers: str) -> list[str]:
        query = {"run_id": "r1", "after": 0}
        async with request(app, query=query, headers=headers) as stream:
            with anyio.fail_after(5):
                blocks = await stream.rest()
        return [str(getattr(b.decoded(), "message", b.event)) for b in blocks if b.data]

    async def test_public_only_by_default(self) -> None:
        async with EventBus() as bus:
            self.emit_each_level(bus)
            assert await self.messages(create_app(bus)) == ["PUBLIC", "run.finished"]

    async def test_authorize_grants_more(self) -> None:
        def authorize(request: Request) -> Visibility:
            if request.headers.get("authorization") == "Bearer ops":
                return Visibility.INTERNAL
            return Visibility.PUBLIC

        async with EventBus() as bus:
            self.emit_each_level(bus)
            app = create_app(bus, authorize=authorize)
            assert await self.messages(app) == ["PUBLIC", "run.finished"]
            internal = await self.messages(app, authorization="Bearer ops")
            assert internal == ["PUBLIC", "INTERNAL", "run.finished"]

    async def test_authorize_may_be_async(self) -> None:
        async def authorize(request: Request) -> Visibility:
            await anyio.lowlevel.checkpoint()
            return Visibility.PRIVATE

        async with EventBus() as bus:
            self.emit_each_level(bus)
            app = create_app(bus, authorize=authorize)
            everything = ["PUBLIC", "INTERNAL", "PRIVATE", "run.finished"]
            assert await self.messages(app) == everything

    async def test_authorize_may_refuse(self) -> None:
        def authorize(request: Request) -> Visibility:
            raise HTTPException(401, "who are you?", {"WWW-Authenticate": "Bearer"})

        async with EventBus() as bus:
            app = create_app(bus, authorize=authorize)
            status, body, exchange = await get(app, "/events")
            assert (status, body) == (401, b"who are you?")
            assert exchange.headers["www-authenticate"] == "Bearer"
            assert web_subscriptions(bus) == []

    async def test_authorize_must_return_a_visibility(self) -> None:
        async with EventBus() as bus:
            app = create_app(bus, authorize=lambda request: "PRIVATE")  # type: ignore[arg-type,return-value]
            exchange = Exchange()
            with pytest.raises(TypeError, match="authorize must return a Visibility"):
                await app(http_scope("/events"), exchange.receive, exchange.send)
            exchange.close()
            assert web_subscriptions(bus) == []


# -- the other routes, and the app's arguments ----------------------------------------


class TestPages:
    async def test_the_viewer_page(self) -> None:
        async with EventBus() as bus:
            status, body, exchange = await get(create_app(bus), "/")
        assert status == 200
        assert exchange.headers["content-type"] == "text/html; charset=utf-8"
        assert "connect-src 'self'" in exchange.headers["content-security-policy"]
        page = body.decode()
        assert page == (
            resources.files("purpose_bus").joinpath("_viewer.html").read_text()
        )
        assert "new EventSource(" in page
        # One file: nothing is loaded from anywhere else.
        assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page) == ["data:,"]
        assert "http://" not in page and "https://" not in page
        assert "@import" not in page and "url(" not in page

    async def test_kinds(self) -> None:
        async with EventBus() as bus:
            status, body, _ = await get(create_app(bus), "/kinds")
        kinds = json.loads(body)
        assert status == 200
        assert kinds["run.error"] == {"terminal": True}
        assert kinds["message.delta"] == {"terminal": False}
        assert kinds["test_web.audited"] == {"terminal": True}
        assert list(kinds) == sorted(kinds)

    async def test_only_get(self) -> None:
        async with EventBus() as bus:
            status, _, _ = await get(create_app(bus), "/events", method="POST")
        assert status == 405

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"heartbeat": 0},
            {"heartbeat": -1.0},
            {"retry": -1},
            {"retry": math.inf},
            {"buffer_size": 0},
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            create_app(EventBus(), **kwargs)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"heartbeat": "1"},
            {"retry": None},
            {"buffer_size": True},
            {"buffer_size": "8"},
        ],
    )
    def test_arguments_of_the_wrong_type(self, kwargs: dict[str, Any]) -> None:
        """As for EventBus and subscribe: TypeError for the wrong type."""
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            create_app(EventBus(), **kwargs)
        if "buffer_size" in kwargs:
            with pytest.raises(TypeError, match="buffer_size"):
                EventBus(**kwargs)

    def test_purpose_bus_does_not_import_the_web_module(self) -> None:
        code = (
            "import sys, purpose_bus; "
            "assert 'starlette' not in sys.modules, 'starlette'; "
            "assert 'purpose_bus.web' not in sys.modules, 'web'"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- a real server on loopback --------------------------------------------------


class Watched:
    """Wraps an ASGI app and counts the requests to /events that have returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.returned = 0
        self._changed = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http" and scope["path"] == "/events":
                self.returned += 1
                self._changed.set()
                self._changed = anyio.Event()

    async def wait_returned(self, count: int) -> None:
        with anyio.fail_after(5):
            while self.returned < count:
                await self._changed.wait()


def quiet_config() -> Config:
    config = Config()
    config.errorlog = None
    config.graceful_timeout = 1.0
    return config


@asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[str]:
    """Serve *app* on a free loopback port; yield its base URL."""
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        host, port = await task_group.start(
            partial(
                serve, app, port=0, shutdown_trigger=stop.wait, config=quiet_config()
            )
        )
        try:
            yield f"http://{host}:{port}"
        finally:
            stop.set()


async def read_sse(response: httpx.Response) -> AsyncIterator[SSE]:
    parser = SSEParser()
    async for chunk in response.aiter_raw():
        for block in parser.feed(chunk):
            yield block


class TestServe:
    async def test_over_loopback(self) -> None:
        async with EventBus() as bus:
            watched = Watched(create_app(bus))
            async with (
                running(watched) as url,
                httpx.AsyncClient(base_url=url, trust_env=False) as client,
            ):
                page = await client.get("/")
                assert page.status_code == 200
                assert "EventSource" in page.text
                params = {"run_id": "r1", "after": "0"}
                async with client.stream("GET", "/events", params=params) as response:
                    assert response.headers["content-type"].startswith(
                        "text/event-stream"
                    )
                    events = emit_run(bus)
                    blocks = []
                    with anyio.fail_after(5):
                        async for block in read_sse(response):
                            if block.data is None:
                                continue
                            blocks.append(block)
                            if len(blocks) == len(events):
                                bus.emit(RunFinished(run_id="r1"))
                    # The stream ended at the run's terminal event.
                    assert [b.event for b in blocks][-1] == "run.finished"
                    assert [b.decoded() for b in blocks] == bus.replay(run_id="r1")
                await watched.wait_returned(1)
                assert web_subscriptions(bus) == []

    async def test_a_disconnect_releases_the_subscription(self) -> None:
        async with EventBus() as bus:
            watched = Watched(create_app(bus))
            async with (
                running(watched) as url,
                httpx.AsyncClient(base_url=url, trust_env=False) as client,
            ):
                # A client that hangs up mid-stream (a raw socket: the test
                # decides exactly when the connection closes).
                host, port = url.removeprefix("http://").split(":")
                async with await anyio.connect_tcp(host, int(port)) as connection:
                    await connection.send(
                        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                    )
                    received = b""
                    with anyio.fail_after(5):
                        while b"retry: " not in received:
                            received += await connection.receive()
                        emit_run(bus)
                        while b"id: 4\n" not in received:
                            received += await connection.receive()
                # The client hung up: the server sees it and lets go.
                await watched.wait_returned(1)
                assert web_subscriptions(bus) == []
                # It resumes where it left off.
                bus.emit(RunFinished(run_id="r1"))
                headers = {"Last-Event-ID": "4"}
                params = {"run_id": "r1"}
                async with client.stream(
                    "GET", "/events", params=params, headers=headers
                ) as response:
                    with anyio.fail_after(5):
                        ids = [b.id async for b in read_sse(response) if b.data]
                assert ids == ["5"]

    async def test_cancelling_shuts_the_server_down(self) -> None:
        async with EventBus() as bus:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as task_group:
                    host, port = await task_group.start(
                        partial(serve, create_app(bus), port=0, config=quiet_config())
                    )
                    url = f"http://{host}:{port}/kinds"
                    async with httpx.AsyncClient(trust_env=False) as client:
                        assert (await client.get(url)).status_code == 200
                    scope.cancel()
            assert scope.cancelled_caught
            # serve() returned once the server was down: nothing listens now.
            with pytest.raises(OSError, match="connect"):
                async with await anyio.connect_tcp(host, port):
                    pass

    async def test_the_port_must_be_free(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            async with EventBus() as bus, anyio.create_task_group() as task_group:
                with pytest.raises(OSError, match="in use"):
                    await task_group.start(
                        partial(
                            serve, create_app(bus), port=port, config=quiet_config()
                        )
                    )


# -- python -m purpose_bus demo --serve ---------------------------------------------


class TestDemoServe:
    async def test_serve_demo(self) -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as task_group:
            host, port = await task_group.start(
                partial(serve_demo, port=0, stop=stop.wait, pace=0, pause=0, rounds=1)
            )
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", trust_env=False
            ) as client:
                ends = {}
                for run_id in ("run-1", "run-2"):
                    params = {"run_id": run_id, "after": "0"}
                    async with client.stream("GET", "/events", params=params) as r:
                        with anyio.fail_after(10):
                            blocks = [b async for b in read_sse(r) if b.data]
                    ends[run_id] = blocks[-1].decoded()
                    lanes = {b.decoded().lane_id for b in blocks}
                    assert lanes == {"main", "plan", "search", "write"}
                    kinds = {b.event for b in blocks}
                    assert "reasoning.summary" not in kinds  # INTERNAL
                    assert {"tool.call", "message.delta"} <= kinds
            assert isinstance(ends["run-1"], RunFinished)
            assert isinstance(ends["run-2"], RunError)
            stop.set()

    async def test_stopping_cancels_the_runs_in_flight(self) -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as task_group:
            host, port = await task_group.start(
                partial(serve_demo, port=0, stop=stop.wait, pace=1.0)
            )
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}", trust_env=False
            ) as client:
                params = {"run_id": "run-1", "after": "0"}
                async with client.stream("GET", "/events", params=params) as r:
                    blocks = []
                    with anyio.fail_after(10):
                        async for block in read_sse(r):
                            if block.event == "run.started":
                                stop.set()  # the run is in flight
                            if block.data:
                                blocks.append(block)
            cancelled = blocks[-1].decoded()
            assert isinstance(cancelled, RunCancelled)
            assert cancelled.reason == "the demo was stopped"

    async def test_the_command_line(self, anyio_backend_name: str) -> None:
        command = [sys.executable, "-m", "purpose_bus", "demo", "--serve"]
        command += ["--port", "0", "--backend", anyio_backend_name]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        async with await anyio.open_process(command, env=env) as process:
            assert process.stdout is not None
            with anyio.fail_after(20):
                line = b""
                while b"\n" not in line:
                    line += await process.stdout.receive()
                text = line.decode()
                assert f"purpose_bus demo on {anyio_backend_name}" in text
                match = re.search(r"http://127\.0\.0\.1:(\d+)/", text)
                assert match is not None
                async with httpx.AsyncClient(trust_env=False) as client:
                    page = await client.get(match.group(0))
                    assert page.status_code == 200
                process.send_signal(signal.SIGINT)
                rest = b""
                async for chunk in process.stdout:
                    rest += chunk
                assert await process.wait() == 0
            assert rest.decode().strip().endswith("stopped")

    def test_a_port_in_use(self, capsys: pytest.CaptureFixture[str]) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            assert main(["demo", "--serve", "--port", str(port)]) == 1
        assert f"error: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err

    def test_serve_needs_the_web_extra(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(sys.modules, "hypercorn", None)  # not installed
        assert main(["demo", "--serve"]) == 1
        assert "--serve needs the web extra" in capsys.readouterr().err

    def test_host_and_port_go_with_serve(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as info:
            main(["demo", "--port", "8001"])
        assert info.value.code == 2
        assert "--host and --port go with --serve" in capsys.readouterr().err


def test_tool_call_arguments_survive_the_stream() -> None:
    event = ToolCall(run_id="r1", name="search", arguments={"q": "ü\u2028"}, offset=7)
    assert parse_block(format_event(event).decode()[:-2]).decoded() == event
