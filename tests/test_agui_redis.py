"""AG-UI across replicas: a run started by ``POST`` on one process and joined by
``GET`` on another, both bridged to one real Redis (found, or skipped, as in
``test_redis.py``). The replica that did not run the agent serves a stream that
is valid, complete and, event for event, the one the first replica sent (ids
are derived from what the bridge keeps: run, lane, seq, span id)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
from agui_helpers import Conversation, check_order, parse_frames, validated
from anyio.streams.buffered import BufferedByteReceiveStream
from backends import backend_word
from test_redis import prefix, redis_url  # noqa: F401  (fixtures)

from purpose_bus import EventBus
from purpose_bus.agui import create_app
from purpose_bus.redis import RedisBridge
from purpose_bus.web import serve

REPLICA = Path(__file__).parent / "redis_procs" / "agui_replica.py"


@asynccontextmanager
async def replica(url: str, keys: str, anyio_backend: object) -> AsyncIterator[str]:
    """The agent-running replica, a subprocess on the test's backend (uvloop
    when the test runs on it); yields its AG-UI URL."""
    backend = backend_word(anyio_backend)
    command = [sys.executable, str(REPLICA), url, keys, backend]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None and process.stdin is not None
        try:
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(
                    b"\n", 1 << 16
                )
            hello = json.loads(line)
            assert hello["backend"] == backend
            yield hello["url"]
            await process.stdin.aclose()  # it serves until its stdin closes
            with anyio.fail_after(20):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()


@asynccontextmanager
async def viewer(url: str, keys: str) -> AsyncIterator[str]:
    """This process: a bridged bus serving AG-UI without a run starter."""
    stop = anyio.Event()
    async with (
        EventBus() as bus,
        RedisBridge(bus, url, prefix=keys),
        anyio.create_task_group() as task_group,
    ):
        host, port = await task_group.start(
            partial(serve, create_app(bus), port=0, shutdown_trigger=stop.wait)
        )
        try:
            yield f"http://{host}:{port}/agui"
        finally:
            stop.set()


def events(text: str) -> list[dict[str, Any]]:
    return [validated(f.data) for f in parse_frames(text) if f.data is not None]


async def test_post_on_one_replica_get_on_another(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    anyio_backend: object,
) -> None:
    async with (
        replica(redis_url, prefix, anyio_backend) as first,
        viewer(redis_url, prefix) as second,
        httpx.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        body = {"threadId": "t-x", "runId": "run-x", "messages": []}
        async with http.stream("POST", first, json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_text()
            posted_text = await anext(lines)  # the run is under way
            # The other replica knows the run once the bridge brought it in.
            with anyio.fail_after(20):
                while (
                    joined := await http.get(f"{second}/runs/run-x")
                ).status_code == 404:
                    await anyio.sleep(0.01)  # polling another process, bounded
            async for chunk in lines:
                posted_text += chunk
        assert joined.status_code == 200
        posted, got = events(posted_text), events(joined.text)
        check_order(posted)
        check_order(got)
        assert got == posted
        conversation = Conversation().apply(got)
        texts = [m["content"] for m in conversation.messages.values()]
        assert texts.count("".join(f"{i} " for i in range(40))) == 3
        assert len(conversation.calls) == 3
