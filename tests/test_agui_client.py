"""The official AG-UI TypeScript client (``@ag-ui/client``, pinned in
``tests/package.json``) against ``python -m purpose_bus demo --serve``'s
``/agui``: ``HttpAgent.runAgent()``, a dropped stream resumed with
``Last-Event-ID``, two viewers of one run, and a client that aborts; and the
README's AG-UI example, served, with ``HttpAgent`` as its client.

Needs Node and ``npm ci --prefix tests``; skipped (with the reason) without
them, except when ``PURPOSE_BUS_REQUIRE_NODE=1`` (CI), where that fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from agui_helpers import RUN, stamped, translate, wire
from agui_strategies import agent_runs
from anyio.streams.buffered import BufferedByteReceiveStream
from backends import run_source
from hypothesis import given, settings
from hypothesis import strategies as st

from purpose_bus import Event
from purpose_bus._demo import serve_demo
from purpose_bus.agui import Translator

TESTS = Path(__file__).parent
DRIVER = TESTS / "agui_client.mjs"
DEMO_TEXT = "".join(f"{index} " for index in range(20))


def _node() -> str:
    """The node executable, or skip (fail under PURPOSE_BUS_REQUIRE_NODE=1)."""
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed"
    elif not (TESTS / "node_modules" / "@ag-ui" / "client").is_dir():
        reason = "tests/node_modules is missing: run npm ci --prefix tests"
    else:
        return node
    if os.environ.get("PURPOSE_BUS_REQUIRE_NODE") == "1":
        pytest.fail(f"PURPOSE_BUS_REQUIRE_NODE=1 but {reason}")
    pytest.skip(reason)


async def client(*args: str) -> dict[str, Any]:
    """Run one scenario of the Node driver; its JSON result."""
    command = [_node(), str(DRIVER), *args]
    with anyio.fail_after(60):
        process = await anyio.run_process(command, cwd=TESTS, check=False)
    assert process.returncode == 0, process.stderr.decode()
    result: dict[str, Any] = json.loads(process.stdout)
    return result


@asynccontextmanager
async def demo(pace: float = 0.0) -> AsyncIterator[str]:
    """The demo server (no rounds of its own); yields the AG-UI URL."""
    _node()  # skip before starting anything
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        host, port = await task_group.start(
            partial(
                serve_demo, port=0, stop=stop.wait, pace=pace, pause=math.inf, rounds=0
            )
        )
        try:
            yield f"http://{host}:{port}/agui"
        finally:
            stop.set()


async def sse_types(url: str) -> list[str]:
    """The event types of a whole stream, read with httpx."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.get(url)
    assert response.status_code == 200
    return [
        json.loads(line[len("data: ") :])["type"]
        for line in response.text.split("\n")
        if line.startswith("data: ")
    ]


async def test_run_agent_completes_with_the_demos_text() -> None:
    async with demo() as url:
        result = await client("run", url, "thread-1", "run-a")
    assistant = [m for m in result["newMessages"] if m["role"] == "assistant"]
    assert DEMO_TEXT in [m.get("content") for m in assistant]
    assert result["types"][0] == "RUN_STARTED"
    assert result["types"][-1] == "RUN_FINISHED"
    tools = [m for m in result["newMessages"] if m["role"] == "tool"]
    assert len(tools) == 9  # three lanes, three steps, one call each


async def test_a_dropped_stream_resumes_with_last_event_id() -> None:
    async with demo(pace=0.005) as url:
        result = await client("resume", url, "run-b", "30")
        whole = await sse_types(f"{url}/runs/run-b")
    assert result["dropped"] == 30
    assert int(result["lastId"]) > 0
    assert result["preludeTypes"][0] == "RUN_STARTED"
    # verifyEvents passed (the driver ran it); the messages are the same.
    assert result["resumedMessages"] == result["unbrokenMessages"]
    contents = [m.get("content") for m in result["resumedMessages"]]
    assert contents.count(DEMO_TEXT) == 9
    assert whole[-1] == "RUN_FINISHED"


async def test_two_viewers_get_the_same_events() -> None:
    async with (
        demo(pace=0.005) as url,
        httpx.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        body = {"threadId": "t", "runId": "run-c", "messages": []}
        async with http.stream("POST", url, json=body) as response:
            lines = response.aiter_lines()
            await anext(lines)  # the run is under way
            result = await client("viewers", url, "run-c", "2")
            async for _ in lines:  # read the POST stream out to its end
                pass
    first, second = result["streams"]
    assert first == second
    assert first[-1]["type"] == "RUN_FINISHED"


async def test_a_client_disconnect_leaves_the_run_finishing() -> None:
    async with demo(pace=0.005) as url:
        result = await client("abort", url, "run-d")
        assert result["seen"] >= 1
        types = await sse_types(f"{url}/runs/run-d")  # waits for the end
    assert types[-1] == "RUN_FINISHED"
    assert types.count("TEXT_MESSAGE_END") == 9


@settings(max_examples=3, deadline=None)
@given(runs=st.lists(agent_runs(), min_size=15, max_size=15))
def test_verify_events_accepts_every_stream_and_join(
    runs: list[list[Event]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The official verifyEvents over generated runs: the whole stream of each,
    and prelude + rest at every cursor (the Python checker's rules, checked
    against the client's own)."""
    streams = []
    for run in runs:
        events = stamped(run)
        streams.append(translate(events))
        for cut in range(1, len(events)):
            translator = Translator(RUN)
            translator.advance(events[:cut])
            joined = wire(translator.reopen()) + wire(
                e for event in events[cut:] for e in translator.translate(event)
            )
            if joined:
                streams.append(joined)
    path = tmp_path_factory.mktemp("verify") / "streams.json"
    path.write_text(json.dumps(streams))
    result = anyio.run(client, "verify", str(path))
    assert result == {"checked": len(streams), "errors": []}


README = TESTS.parent / "README.md"


def readme_agui_example() -> str:
    """The README's AG-UI server example, on a free port."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "from purpose_bus.agui import" in b]
    assert "await tg.start(serve, app)" in block
    return block.replace(
        "await tg.start(serve, app)", "await tg.start(partial(serve, app, port=0))"
    ).replace("import anyio\n", "import anyio\nfrom functools import partial\n", 1)


async def test_the_readme_example(anyio_backend: object) -> None:
    """The README's example, run as a script on the test's backend."""
    _node()
    code = readme_agui_example()
    assert code.count("anyio.run(main)") == 1
    code = code.replace("anyio.run(main)", run_source(anyio_backend))
    command = [sys.executable, "-c", code]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        try:
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(
                    b"\n", 1 << 16
                )
            url = line.decode().removeprefix("AG-UI at ").strip()
            result = await client("run", url, "t1", "r2")
            assert [m.get("content") for m in result["newMessages"]] == [
                "Hello from purpose_bus"
            ]
        finally:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
