"""``python -m purpose_bus demo``: a simulated agent run on the bus.

Two runs, three parallel lanes each; one run finishes, the other fails. Beside
them: a fast UI subscriber, a slow subscriber that drops events (and still gets
the terminal event), a ``BLOCK`` auditor that loses nothing, and a late joiner
that replays the finished run from history. It ends with a table per
subscriber.

``python -m purpose_bus demo --serve`` streams the demo's runs, round after
round, to the live view of :mod:`purpose_bus.web` until interrupted; with the
``agui`` extra it also serves :mod:`purpose_bus.agui` at ``/agui``, where a
``POST`` starts a demo run with the input's ``runId`` and ``threadId``.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import logging
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ._bus import EventBus
from ._events import (
    Event,
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
from ._hosts import ASGIApp, Receive, Scope, Send
from ._overflow import Overflow
from ._subscription import Subscription

if TYPE_CHECKING:
    from ag_ui.core import RunAgentInput

__all__ = ["DemoRow", "main", "run_demo", "serve_demo"]

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


async def _lane(bus: EventBus, run_id: str, lane: str, pace: float = 0.0) -> None:
    # With a pace, each event waits about that long (for a human watching).
    jitter = random.Random(f"{run_id}/{lane}")

    async def publish(event: Event) -> None:
        if pace:
            await anyio.sleep(pace * jitter.uniform(0.5, 1.5))
        await bus.publish(event)

    await publish(LaneStarted(run_id=run_id, lane_id=lane))
    for step in range(STEPS):
        name = f"{lane}-{step}"
        await publish(StepStarted(run_id=run_id, lane_id=lane, name=name))
        await publish(
            ToolCall(run_id=run_id, lane_id=lane, name="search", arguments={"q": name})
        )
        await publish(
            ToolResult(run_id=run_id, lane_id=lane, name="search", result=[1])
        )
        await publish(
            ReasoningSummary(
                run_id=run_id,
                lane_id=lane,
                summary=f"{lane}: compared two sources",
                visibility=Visibility.INTERNAL,
            )
        )
        for index in range(DELTAS):
            await publish(MessageDelta(run_id=run_id, lane_id=lane, text=f"{index} "))
        await publish(StepFinished(run_id=run_id, lane_id=lane, name=name))
    await publish(LaneFinished(run_id=run_id, lane_id=lane))


async def _agent(
    bus: EventBus,
    run_id: str,
    *,
    fail: bool,
    pace: float = 0.0,
    guarded: bool = True,
    thread_id: str | None = None,
) -> None:
    payload = {} if thread_id is None else {"thread_id": thread_id}  # AG-UI's threadId
    await bus.publish(RunStarted(run_id=run_id, payload=payload))
    async with anyio.create_task_group() as task_group:
        for lane in LANES:
            task_group.start_soon(_lane, bus, run_id, lane, pace)
    if guarded:
        # A guard refuses hidden reasoning: this event reaches nobody.
        bus.emit(
            MessageDelta(run_id=run_id, text="", payload={"chain_of_thought": "..."})
        )
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


async def serve_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    stop: Callable[[], Awaitable[object]],
    pace: float = 0.05,
    pause: float = 2.0,
    rounds: int | None = None,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the live view of a bus (:mod:`purpose_bus.web`, on hypercorn) and
    stream the demo's runs to it: rounds of two runs in three lanes each (the
    first finishes, the second fails), *pace* seconds or so between a lane's
    events, *pause* seconds between rounds, until *stop* returns (or *rounds*
    rounds, then serving on). Reports ``(host, port)`` with *task_status* once
    browsers can connect. When *stop* returns, runs in flight are cancelled
    (``run.cancelled``), the bus closes (every event stream ends) and the server
    shuts down.
    """
    from hypercorn.config import Config  # the web extra

    from .web import create_app, serve

    config = Config()
    config.errorlog = logging.getLogger("hypercorn.error")  # warnings and worse
    config.graceful_timeout = 1.0  # the streams end when the bus closes
    async with EventBus() as bus:
        closed = anyio.Event()
        async with anyio.create_task_group() as server:
            async with anyio.create_task_group() as producers:
                address = await server.start(
                    partial(
                        serve,
                        _demo_app(bus, create_app(bus), producers, pace),
                        host=host,
                        port=port,
                        shutdown_trigger=closed.wait,
                        config=config,
                    )
                )
                task_status.started(address)
                producers.start_soon(_rounds, bus, pace, pause, rounds)
                await stop()
                producers.cancel_scope.cancel()
            await bus.aclose()
            closed.set()


def _demo_app(bus: EventBus, view: ASGIApp, runs: TaskGroup, pace: float) -> ASGIApp:
    """The live view, and the AG-UI endpoint at ``/agui`` (when the ``agui``
    extra is installed) starting demo runs in *runs*."""
    try:
        from . import agui
    except ImportError:  # no ag-ui-protocol: the live view only
        return view
    start_run = partial(_agui_agent, bus, pace)
    return _Dispatch(view, agui.create_app(bus, start_run=start_run, task_group=runs))


async def _agui_agent(bus: EventBus, pace: float, run_input: RunAgentInput) -> None:
    """``POST /agui``'s run starter: one demo run (which finishes) with the
    input's run id and thread id."""
    await _live_agent(bus, run_input.run_id, False, pace, run_input.thread_id)


@attrs.frozen
class _Dispatch:
    """``/agui`` and below to the AG-UI app, everything else to the live view."""

    view: ASGIApp
    agui: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == "/agui" or path.startswith("/agui/"):
            await self.agui(scope, receive, send)
        else:
            await self.view(scope, receive, send)


async def _rounds(bus: EventBus, pace: float, pause: float, rounds: int | None) -> None:
    numbers = itertools.count(1) if rounds is None else range(1, rounds + 1)
    for number in numbers:
        async with anyio.create_task_group() as agents:
            for run_id, fail in ((2 * number - 1, False), (2 * number, True)):
                agents.start_soon(
                    partial(_live_agent, bus, f"run-{run_id}", fail, pace)
                )
        await anyio.sleep(pause)


async def _live_agent(
    bus: EventBus, run_id: str, fail: bool, pace: float, thread_id: str | None = None
) -> None:
    try:
        await _agent(
            bus, run_id, fail=fail, pace=pace, guarded=False, thread_id=thread_id
        )
    except anyio.get_cancelled_exc_class():
        bus.emit(RunCancelled(run_id=run_id, reason="the demo was stopped"))
        raise


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
    """The command line: ``python -m purpose_bus demo [--backend
    asyncio|uvloop|trio] [--serve [--host HOST] [--port PORT]]``."""
    parser = argparse.ArgumentParser(prog="python -m purpose_bus")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a simulated agent run on the bus")
    demo.add_argument(
        "--backend",
        choices=tuple(_NEEDS),
        default="asyncio",
        help="the event loop to run on (default: asyncio; trio needs the trio "
        "extra: pip install 'purpose_bus[trio]'; uvloop: pip install uvloop)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="stream demo runs live to a viewer in the browser until interrupted "
        "(needs the web extra)",
    )
    demo.add_argument("--host", help="with --serve: the address (127.0.0.1)")
    demo.add_argument("--port", type=int, help="with --serve: the port (8000)")
    args = parser.parse_args(argv)
    if not args.serve and (args.host is not None or args.port is not None):
        demo.error("--host and --port go with --serve")
    needs = _NEEDS[args.backend]
    if needs is not None and not _installed(needs[0]):
        print(
            f"error: --backend {args.backend} needs {needs[0]} (pip install "
            f"{needs[1]})",
            file=sys.stderr,
        )
        return 1
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.serve:
        host = "127.0.0.1" if args.host is None else args.host
        return _serve(host, 8000 if args.port is None else args.port, args.backend)
    rows = anyio.run(run_demo, **_run_arguments(args.backend))
    print(f"purpose_bus demo on {args.backend}: two runs, three lanes each\n")
    print(format_table(rows))
    return 0


#: The backends, each with the module it needs and how to install it.
_NEEDS: dict[str, tuple[str, str] | None] = {
    "asyncio": None,
    "uvloop": ("uvloop", "uvloop"),
    "trio": ("trio", "'purpose_bus[trio]'"),
}


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _run_arguments(backend: str) -> dict[str, Any]:
    """The keyword arguments of :func:`anyio.run` for a ``--backend``."""
    if backend == "uvloop":
        return {"backend": "asyncio", "backend_options": {"use_uvloop": True}}
    return {"backend": backend}


def _serve(host: str, port: int, backend: str) -> int:
    try:
        import hypercorn  # noqa: F401

        from . import web  # noqa: F401
    except ImportError as exc:
        print(
            f"error: --serve needs the web extra (pip install 'purpose_bus[web]'): "
            f"{exc}",
            file=sys.stderr,
        )
        return 1
    failed: OSError | None = None
    try:
        anyio.run(
            partial(_serve_until_stopped, host, port, backend),
            **_run_arguments(backend),
        )
    except* OSError as group:
        failed = cast(OSError, group.exceptions[0])
    except* KeyboardInterrupt:  # where signals cannot be received (Windows)
        pass
    if failed is not None:
        print(f"error: cannot serve on {host}:{port}: {failed}", file=sys.stderr)
        return 1
    print("stopped")
    return 0


async def _serve_until_stopped(host: str, port: int, backend: str) -> None:
    with _stop_signals() as signals:

        async def stop() -> None:
            async for _ in signals:
                return
            await anyio.sleep_forever()  # no signals here: Ctrl+C interrupts

        async with anyio.create_task_group() as task_group:
            address = await task_group.start(
                partial(serve_demo, host=host, port=port, stop=stop)
            )
            print(
                f"purpose_bus demo on {backend}: the live view is at "
                f"{_url(*address)} (Ctrl+C to stop)",
                flush=True,
            )


def _stop_signals() -> AbstractContextManager[AsyncIterator[signal.Signals]]:
    if sys.platform == "win32":  # pragma: no cover
        return nullcontext(_no_signals())
    return anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


async def _no_signals() -> AsyncIterator[signal.Signals]:  # pragma: no cover
    return
    yield


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
