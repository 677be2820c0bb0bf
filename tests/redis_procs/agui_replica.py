"""A replica that runs agents: an EventBus bridged to Redis, serving
:mod:`purpose_bus.agui` with a run starter, for ``tests/test_agui_redis.py``.

Usage: ``python tests/redis_procs/agui_replica.py URL PREFIX BACKEND``. It
prints one JSON line (``{"url": "http://127.0.0.1:PORT/agui"}``) once clients
can connect, and serves until its stdin closes.

The run starter emits, for the input's run id: ``RunStarted`` with the thread
id, then in lanes ``main``, ``a`` and ``b`` (interleaved, one checkpoint per
event) a step, a tool call and its result, and 40 message deltas each, then
``RunFinished``.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import anyio
from ag_ui.core import RunAgentInput
from anyio.abc import TaskGroup
from starlette.applications import Starlette

from purpose_bus import (
    EventBus,
    MessageDelta,
    RunFinished,
    StepFinished,
    StepStarted,
    ToolCall,
    ToolResult,
)
from purpose_bus.agui import create_app, run_started
from purpose_bus.redis import RedisBridge
from purpose_bus.web import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/
from backends import run, running_backend

LANES = ("main", "a", "b")


async def lane(bus: EventBus, run_id: str, lane_id: str) -> None:
    await bus.publish(StepStarted(run_id=run_id, lane_id=lane_id, name="work"))
    call = ToolCall(run_id=run_id, lane_id=lane_id, name="look", arguments={"q": 1})
    await bus.publish(call)
    await bus.publish(
        ToolResult(
            run_id=run_id,
            lane_id=lane_id,
            name="look",
            result={"found": lane_id},
            parent_span_id=call.span_id,
        )
    )
    for index in range(40):
        await bus.publish(
            MessageDelta(run_id=run_id, lane_id=lane_id, text=f"{index} ")
        )
    await bus.publish(StepFinished(run_id=run_id, lane_id=lane_id, name="work"))


async def agent(bus: EventBus, run_input: RunAgentInput) -> None:
    await bus.publish(run_started(run_input))
    async with anyio.create_task_group() as lanes:
        for lane_id in LANES:
            lanes.start_soon(lane, bus, run_input.run_id, lane_id)
    await bus.publish(RunFinished(run_id=run_input.run_id))


async def serve_until_stdin_closes(app: Starlette, runs: TaskGroup) -> None:
    stdin = anyio.wrap_file(sys.stdin)
    async with anyio.create_task_group() as server:
        host, port = await server.start(partial(serve, app, port=0))
        url = f"http://{host}:{port}/agui"
        print(json.dumps({"url": url, "backend": running_backend()}), flush=True)
        await stdin.read()
        server.cancel_scope.cancel()
    runs.cancel_scope.cancel()


async def main(url: str, prefix: str) -> None:
    async with (
        EventBus() as bus,
        RedisBridge(bus, url, prefix=prefix),
        anyio.create_task_group() as runs,
    ):
        app = create_app(bus, start_run=partial(agent, bus), task_group=runs)
        await serve_until_stdin_closes(app, runs)


if __name__ == "__main__":
    run(main, sys.argv[1], sys.argv[2], word=sys.argv[3])
