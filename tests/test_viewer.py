"""The viewer page of :mod:`purpose_bus.web` in headless Chromium, on a real
server on loopback (hypercorn, on asyncio and on trio).

Skipped when Chromium or chromedriver is not installed (Debian: ``apt-get install
chromium chromium-driver``), unless ``PURPOSE_BUS_REQUIRE_BROWSER=1``, which
makes a missing browser a failure (CI sets it). With
``PURPOSE_BUS_SCREENSHOT=docs/viewer.png`` the first test saves a screenshot of
the page there.

Selenium blocks, so every browser call runs in a worker thread while the event
loop serves the page; waits are for DOM conditions (``WebDriverWait``), never
for time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from hypercorn.config import Config
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait
from starlette.types import Receive, Scope, Send

from purpose_bus import (
    Event,
    EventBus,
    LaneFinished,
    LaneStarted,
    Log,
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
from purpose_bus._demo import serve_demo
from purpose_bus.web import create_app, serve

T = TypeVar("T")
ASGIApp = Callable[[Scope, Receive, Send], Any]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: How long a DOM condition may take to come true.
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        reason = (
            f"headless Chromium is not installed ({', '.join(missing)} missing; "
            "on Debian: apt-get install chromium chromium-driver)"
        )
        if os.environ.get("PURPOSE_BUS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + ", and PURPOSE_BUS_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
        "--window-size=1280,800",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, driven from worker threads (Selenium blocks)."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.url = url

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(function, *args))

    async def open(self) -> None:
        await self.call(self.driver.get, self.url)

    async def script(self, code: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, code, *args)

    async def wait_for(self, css: str) -> WebElement:
        """Wait until an element matches *css*; return it."""

        def find(driver: WebDriver) -> WebElement | bool:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0] if found else False

        wait = WebDriverWait(self.driver, TIMEOUT, poll_frequency=0.02)
        element: WebElement = await self.call(
            wait.until, find, f"nothing matches {css}"
        )
        return element

    async def shown(self, event: Event) -> WebElement:
        return await self.wait_for(
            f'section.run[data-run-id="{event.run_id}"] '
            f'section.lane[data-lane-id="{event.lane_id}"] '
            f'[data-offset="{event.offset}"]'
        )

    async def placement(self) -> dict[int, tuple[str, str]]:
        """Every event on the page: offset -> (run, lane column); each once."""
        rows = await self.script(
            """return Array.from(document.querySelectorAll("[data-offset]"), (n) =>
                [Number(n.dataset.offset), n.closest("section.run").dataset.runId,
                 n.closest("section.lane").dataset.laneId]);"""
        )
        placement = {offset: (run, lane) for offset, run, lane in rows}
        assert len(placement) == len(rows), "an event is shown twice"
        return placement

    async def errors(self) -> list[str]:
        """What the page logged as errors (script errors, CSP refusals) since
        the last call; not a stream the server cut off (the test did that)."""
        entries = await self.call(self.driver.get_log, "browser")
        return [
            entry["message"]
            for entry in entries
            if entry["level"] == "SEVERE"
            and "net::ERR_INCOMPLETE_CHUNKED_ENCODING" not in entry["message"]
        ]

    async def close(self) -> None:
        await self.call(self.driver.get, "about:blank")


class Gate:
    """Wraps the app: can close the open event streams (the server drops the
    connection) and hold new ones until released; records each stream's
    ``Last-Event-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.last_event_ids: list[bytes] = []
        self.returned = 0
        self._open = anyio.Event()
        self._open.set()
        self._changed = anyio.Event()
        self._streams: set[anyio.CancelScope] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/events":
            await self.app(scope, receive, send)
            return
        await self._open.wait()
        self.last_event_ids.append(dict(scope["headers"]).get(b"last-event-id", b""))
        try:
            with anyio.CancelScope() as stream:
                self._streams.add(stream)
                await self.app(scope, receive, send)
        finally:
            self._streams.discard(stream)
            self.returned += 1
            self._changed.set()
            self._changed = anyio.Event()

    def drop_and_hold(self) -> None:
        self._open = anyio.Event()
        for stream in self._streams:
            stream.cancel()

    def release(self) -> None:
        self._open.set()

    async def wait_returned(self, count: int) -> None:
        with anyio.fail_after(TIMEOUT):
            while self.returned < count:
                await self._changed.wait()


@asynccontextmanager
async def running(app: ASGIApp, bus: EventBus) -> AsyncIterator[str]:
    """Serve *app* on a free loopback port and yield its address; on exit,
    close *bus* (which ends the browser's event stream), then the server."""
    config = Config()
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        host, port = await task_group.start(
            partial(serve, app, port=0, shutdown_trigger=stop.wait, config=config)
        )
        try:
            yield f"http://{host}:{port}/"
        finally:
            await bus.aclose()
            stop.set()


def a_finished_run(run_id: str) -> list[Event]:
    events: list[Event] = [RunStarted(run_id=run_id)]
    for lane in ("plan", "search"):
        events += [
            LaneStarted(run_id=run_id, lane_id=lane),
            StepStarted(run_id=run_id, lane_id=lane, name=f"{lane}-0"),
            ToolCall(run_id=run_id, lane_id=lane, name="search", arguments={"q": lane}),
            ToolResult(run_id=run_id, lane_id=lane, name="search", result=["doc-1"]),
        ]
        events += [
            MessageDelta(run_id=run_id, lane_id=lane, text=word)
            for word in ("Found ", "two ", "sources.")
        ]
        events += [
            StepFinished(run_id=run_id, lane_id=lane, name=f"{lane}-0"),
            LaneFinished(run_id=run_id, lane_id=lane),
        ]
    return [*events, RunFinished(run_id=run_id)]


def emit(bus: EventBus, *events: Event) -> list[Event]:
    """Emit *events* at once (no checkpoint between them); return them stamped."""
    for event in events:
        bus.emit(event)
    return bus.replay(visibility=Visibility.PRIVATE)[-len(events) :]


XSS = '<img src=x onerror="window.pwned = 1">'


async def test_lanes_gaps_and_resume(browser: WebDriver) -> None:
    async with EventBus() as bus:
        # Each stream buffers 8 events: a burst of 30 drops 22 of them.
        app = create_app(
            bus, buffer_size=8, retry=0.1, authorize=lambda _: Visibility.INTERNAL
        )
        gate = Gate(app)
        expected: dict[int, tuple[str, str]] = {}

        def expect(events: list[Event]) -> None:
            for event in events:
                expected[event.offset] = (event.run_id, event.lane_id)

        expect(emit(bus, *a_finished_run("run-1")))
        async with running(gate, bus) as url:
            page = Page(browser, url)
            await page.open()
            try:
                # History first (the page asks for after=0), then live events.
                await page.wait_for(
                    'button[data-run-id="run-1"][data-state="finished"]'
                )
                await page.wait_for('#connection[data-state="live"][data-opens="1"]')
                live = emit(
                    bus,
                    RunStarted(run_id="run-2"),
                    LaneStarted(run_id="run-2", lane_id="plan"),
                    LaneStarted(run_id="run-2", lane_id="search"),
                    StepStarted(run_id="run-2", lane_id="plan", name="outline"),
                    ToolCall(
                        run_id="run-2", lane_id="plan", name="draft", arguments={"n": 3}
                    ),
                    ToolResult(
                        run_id="run-2", lane_id="plan", name="draft", result="ok"
                    ),
                    MessageDelta(run_id="run-2", lane_id="plan", text="Three parts."),
                    MessageDelta(
                        run_id="run-2", lane_id="search", text="Searching the archive…"
                    ),
                )
                expect(live)
                await page.shown(live[-1])
                # Every event is in its run's view, in its lane's column.
                assert await page.placement() == expected

                # The server drops events: the page marks the gap in the lane
                # of the first event lost.
                burst = emit(
                    bus,
                    *(
                        Log(
                            run_id="run-2",
                            lane_id="search",
                            message=f"fetched page {i}",
                        )
                        for i in range(30)
                    ),
                )
                expect(burst[-8:])
                gap = await page.wait_for(
                    'section.run[data-run-id="run-2"] '
                    'section.lane[data-lane-id="search"] li.gap'
                )
                await page.shown(burst[-1])
                assert await page.call(gap.get_attribute, "data-count") == "22"
                assert await page.call(gap.get_attribute, "data-first") == str(
                    burst[0].offset
                )
                assert await page.call(gap.get_attribute, "data-last") == str(
                    burst[21].offset
                )
                dropped = await page.script("return $('count-dropped').textContent")
                assert dropped == "22"
                assert await page.placement() == expected

                # The server closes the connection; events go on meanwhile.
                gate.drop_and_hold()
                await gate.wait_returned(1)
                await page.wait_for('#connection[data-state="reconnecting"]')
                meanwhile = emit(
                    bus,
                    LaneStarted(run_id="run-2", lane_id="write"),
                    ReasoningSummary(
                        run_id="run-2",
                        lane_id="write",
                        summary="two sources agree",
                        visibility=Visibility.INTERNAL,
                    ),
                    *(
                        MessageDelta(run_id="run-2", lane_id="write", text=word)
                        for word in ("The ", "answer ", "is ", "42.")
                    ),
                )
                expect(meanwhile)
                gate.release()
                # The browser resumes after the last event it saw: nothing
                # missed, nothing twice.
                await page.shown(meanwhile[-1])
                await page.wait_for('#connection[data-state="live"][data-opens="2"]')
                assert gate.last_event_ids == [b"", str(burst[-1].offset).encode()]
                assert await page.placement() == expected

                # The run ends in an error: marked on the run and in its lane.
                end = emit(bus, RunError(run_id="run-2", error="tool quota exceeded"))
                expect(end)
                await page.wait_for('button[data-run-id="run-2"][data-state="error"]')
                terminal = await page.shown(end[0])
                classes = await page.call(terminal.get_attribute, "class")
                assert "terminal" in str(classes).split()
                text = await page.call(terminal.get_attribute, "textContent")
                assert "tool quota exceeded" in str(text)
                assert await page.placement() == expected

                # A lane still running when its run ends is marked ended.
                await page.wait_for(
                    'section.run[data-run-id="run-2"] section.lane[data-lane-id="plan"]'
                    ' .state[data-state="ended"]'
                )
                # The INTERNAL summary the page was granted is tagged as such.
                summary = await page.shown(meanwhile[1])
                text = await page.call(summary.get_attribute, "textContent")
                assert "internal" in str(text)

                screenshot = os.environ.get("PURPOSE_BUS_SCREENSHOT")
                if screenshot:
                    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                    await page.call(browser.save_screenshot, screenshot)

                # Picking a run in the list shows its lanes instead.
                button = await page.wait_for('button[data-run-id="run-1"]')
                await page.call(button.click)
                run_1 = await page.wait_for('section.run[data-run-id="run-1"]')
                assert await page.call(run_1.is_displayed)
                run_2 = await page.wait_for('section.run[data-run-id="run-2"]')
                assert not await page.call(run_2.is_displayed)
                assert await page.errors() == []
            finally:
                await page.close()


async def test_the_demo_in_the_browser(browser: WebDriver) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        host, port = await task_group.start(
            partial(serve_demo, port=0, stop=stop.wait, pace=0, pause=0, rounds=1)
        )
        page = Page(browser, f"http://{host}:{port}/")
        await page.open()
        try:
            run_1 = await page.wait_for(
                'button[data-run-id="run-1"][data-state="finished"]'
            )
            await page.wait_for('button[data-run-id="run-2"][data-state="error"]')
            # Every PUBLIC event of the run (see tests/test_demo.py).
            assert "224 events" in await page.call(getattr, run_1, "text")
            lanes = await page.script(
                """return Array.from(document.querySelectorAll(
                     'section.run[data-run-id="run-2"] section.lane'),
                     (n) => n.dataset.laneId);"""
            )
            assert lanes[0] == "main"
            assert sorted(lanes[1:]) == ["plan", "search", "write"]
            assert await page.errors() == []
        finally:
            await page.close()
            stop.set()


async def test_a_run_scoped_page_stops_at_the_runs_end(browser: WebDriver) -> None:
    async with EventBus() as bus:
        gate = Gate(create_app(bus, retry=0.1))
        emit(bus, *a_finished_run("run-1"))
        async with running(gate, bus) as url:
            page = Page(browser, url + "?run_id=run-2")
            await page.open()
            try:
                await page.wait_for('#connection[data-state="live"]')
                events = emit(
                    bus,
                    RunStarted(run_id="run-2"),
                    MessageDelta(run_id="run-2", text=XSS),
                    RunFinished(run_id="run-2"),
                )
                await page.wait_for('#connection[data-state="ended"]')
                await page.shown(events[-1])
                # What events carry is shown as text, never run as HTML.
                delta = await page.shown(events[1])
                assert await page.call(getattr, delta, "text") == XSS
                assert await page.script(
                    "return [document.querySelectorAll('img').length, window.pwned]"
                ) == [0, None]
                assert await page.script("return source.readyState") == 2  # CLOSED
                await gate.wait_returned(1)
                # The page closed its stream: no reconnection.
                assert gate.last_event_ids == [b""]
                filters = await page.script("return $('filters').textContent")
                assert filters == "run_id=run-2"
                assert set((await page.placement()).values()) == {("run-2", "main")}
                assert await page.errors() == []
            finally:
                await page.close()


async def test_a_new_bus_behind_the_same_address(browser: WebDriver) -> None:
    async with EventBus() as old_bus, EventBus() as new_bus:
        gate = Gate(create_app(old_bus, retry=0.1))
        emit(old_bus, *a_finished_run("run-1"))  # offsets 1..20
        async with running(gate, old_bus) as url:
            page = Page(browser, url)
            await page.open()
            try:
                await page.wait_for(
                    'button[data-run-id="run-1"][data-state="finished"]'
                )
                # The server restarts with a new bus, whose offsets start again.
                started = emit(new_bus, RunStarted(run_id="run-7"))
                gate.drop_and_hold()
                await gate.wait_returned(1)
                gate.app = create_app(new_bus, retry=0.1)
                gate.release()
                # The browser resumes after offset 20, which the new bus has not
                # reached: its stream starts live. Its next event has a lower
                # offset than the page has seen: the page starts again, from
                # the new bus's history.
                await page.wait_for('#connection[data-state="live"][data-opens="2"]')
                later = emit(new_bus, MessageDelta(run_id="run-7", text="hello"))
                await page.shown(later[0])
                await page.wait_for('#connection[data-state="live"][data-opens="3"]')
                notices = await page.script("return $('notices').textContent")
                assert "new bus" in notices
                assert await page.placement() == {
                    started[0].offset: ("run-7", "main"),
                    later[0].offset: ("run-7", "main"),
                }
                assert await page.script("return runs.size") == 1
                assert await page.errors() == []
            finally:
                await page.close()
                await new_bus.aclose()
