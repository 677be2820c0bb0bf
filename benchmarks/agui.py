"""What serving runs to AG-UI front ends costs (:mod:`purpose_bus.agui`).

1. **Translate + encode vs encode alone.** A delta-heavy run (three lanes; per
   step a tool call, its result and 50 message deltas; 100,000 bus events by
   default), stamped by a real bus. Timed: ``Translator.translate`` on every
   bus event and ``ag_ui.encoder.EventEncoder.encode`` on every AG-UI event it
   gives (what the endpoint does per event), against ``EventEncoder.encode``
   alone on the same, already translated, AG-UI events (the floor: any AG-UI
   server pays it). AG-UI events per second, best of *repeat*. Target: the
   ratio >= 0.5.
2. **Time to first event of a join.** A run with 100,000 events in history
   (``history_size`` large enough) whose first lane is still open, served by
   :func:`purpose_bus.agui.create_app` with hypercorn on loopback; a client
   ``GET``\\ s ``/agui/runs/{run}`` with ``Last-Event-ID`` = the offset of the
   100,000th event, and the time from sending the request to receiving the
   first AG-UI event (the join prelude's ``RUN_STARTED``) is measured, median
   of *repeat* joins (each on a fresh connection). Target: <= 50 ms.

Usage::

    .venv/bin/python benchmarks/agui.py [--events 100000] [--repeat 5]
        [--backend asyncio|trio] [--output FILE] [--no-plot]

Prints a markdown table; writes ``benchmarks/results/agui.json`` and, if
matplotlib is importable, ``benchmarks/results/agui.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
from ag_ui.core import BaseEvent
from ag_ui.encoder import EventEncoder
from hypercorn.config import Config

from purpose_bus import (
    Event,
    EventBus,
    MessageDelta,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    ToolCall,
    ToolResult,
)
from purpose_bus.agui import Translator, create_app
from purpose_bus.web import serve

RESULTS = Path(__file__).parent / "results"
LANES = ("main", "search", "write")
DELTAS_PER_STEP = 50
RATIO_TARGET = 0.5
JOIN_TARGET_MS = 50.0


def delta_heavy_run(run_id: str, events: int, *, finish: bool) -> list[Event]:
    """About *events* bus events of one run, lanes interleaved step by step."""
    out: list[Event] = [RunStarted(run_id=run_id, payload={"thread_id": "t"})]
    step = 0
    while len(out) < events - 1:
        for lane in LANES:
            name = f"{lane}-{step}"
            call = ToolCall(run_id=run_id, lane_id=lane, name="search", arguments={})
            out += [
                StepStarted(run_id=run_id, lane_id=lane, name=name),
                call,
                ToolResult(
                    run_id=run_id,
                    lane_id=lane,
                    name="search",
                    result=[1, 2],
                    parent_span_id=call.span_id,
                ),
            ]
            out += [
                MessageDelta(run_id=run_id, lane_id=lane, text=f"word{i} ")
                for i in range(DELTAS_PER_STEP)
            ]
            out.append(StepFinished(run_id=run_id, lane_id=lane, name=name))
        step += 1
    out = out[: events - 1]
    if finish:
        out.append(RunFinished(run_id=run_id))
    return out


async def stamped_run(events: int) -> list[Event]:
    async with EventBus(history_size=events + 10) as bus:
        for event in delta_heavy_run("bench", events, finish=True):
            bus.emit(event)
        return bus.replay(run_id="bench")


def best_rate(function: Any, count: int, repeat: int) -> float:
    """*count* items / the best time of *repeat* calls of *function*."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return count / min(times)


def throughput(events: list[Event], repeat: int) -> dict[str, Any]:
    encoder = EventEncoder()
    translated: list[BaseEvent] = []
    translator = Translator("bench")
    for event in events:
        translated += translator.translate(event)

    def translate_and_encode() -> None:
        translator = Translator("bench")
        encode = encoder.encode
        for event in events:
            for agui_event in translator.translate(event):
                encode(agui_event)

    def encode_only() -> None:
        encode = encoder.encode
        for agui_event in translated:
            encode(agui_event)

    both = best_rate(translate_and_encode, len(translated), repeat)
    alone = best_rate(encode_only, len(translated), repeat)
    return {
        "bus_events": len(events),
        "agui_events": len(translated),
        "translate_encode_per_s": both,
        "encoder_alone_per_s": alone,
        "ratio": both / alone,
        "target_ratio": RATIO_TARGET,
    }


async def join_latency(events: int, repeat: int) -> dict[str, Any]:
    config = Config()
    config.errorlog = None
    config.graceful_timeout = 1.0
    run = delta_heavy_run("live", events + 10, finish=False)
    stop = anyio.Event()
    async with (
        EventBus(history_size=events + 100) as bus,
        anyio.create_task_group() as task_group,
    ):
        for event in run:
            bus.emit(event)
        cursor = bus.replay(run_id="live")[events - 1].offset
        host, port = await task_group.start(
            partial(
                serve,
                create_app(bus),
                port=0,
                shutdown_trigger=stop.wait,
                config=config,
            )
        )
        url = f"http://{host}:{port}/agui/runs/live"
        samples = []
        for _ in range(repeat):
            async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                gc.collect()
                start = time.perf_counter()
                headers = {"Last-Event-ID": str(cursor)}
                async with client.stream("GET", url, headers=headers) as response:
                    async for chunk in response.aiter_text():
                        if "data: " in chunk:
                            samples.append((time.perf_counter() - start) * 1000)
                            break
        cpu = [state_at_cpu_ms(bus, cursor) for _ in range(repeat)]
        stop.set()
        bus.emit(RunFinished(run_id="live"))  # the streams end
    return {
        "history_events": events,
        "cursor": cursor,
        "first_event_ms_median": statistics.median(samples),
        "first_event_ms": samples,
        "state_cpu_ms_median": statistics.median(cpu),
        "target_ms": JOIN_TARGET_MS,
    }


def state_at_cpu_ms(bus: EventBus, cursor: int) -> float:
    """The CPU time (not wall-clock: the machine may be shared) of what a join
    computes before it can send anything: the run from history, the
    translator's state at the cursor, the prelude."""
    gc.collect()
    start = time.process_time()
    history = bus.replay(run_id="live")
    translator = Translator("live")
    translator.advance(event for event in history if event.offset <= cursor)
    translator.reopen()
    return (time.process_time() - start) * 1000


def table(result: dict[str, Any]) -> str:
    t, j = result["throughput"], result["join"]
    rows = [
        "| measure | value | target |",
        "|---|---|---|",
        f"| translate + encode, AG-UI events/s | {t['translate_encode_per_s']:,.0f} "
        "| |",
        f"| EventEncoder alone, AG-UI events/s | {t['encoder_alone_per_s']:,.0f} | |",
        f"| ratio | {t['ratio']:.2f}x | >= {RATIO_TARGET}x |",
        f"| join at a cursor {j['history_events']:,} events into history: "
        f"first event, median ms | {j['first_event_ms_median']:.1f} | "
        f"<= {JOIN_TARGET_MS:.0f} |",
        f"| of which the server's work (history, state at the cursor, prelude), "
        f"CPU ms | {j['state_cpu_ms_median']:.1f} | |",
    ]
    return "\n".join(rows)


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed)", file=sys.stderr)
        return
    t = result["throughput"]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.barh(
        ["EventEncoder alone", "translate + encode"],
        [t["encoder_alone_per_s"], t["translate_encode_per_s"]],
    )
    axis.set_xlabel("AG-UI events per second")
    axis.set_title(
        f"purpose_bus.agui, {t['bus_events']:,} bus events, ratio {t['ratio']:.2f}x"
    )
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--output", type=Path, default=RESULTS / "agui.json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    events = anyio.run(stamped_run, args.events, backend=args.backend)
    result = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "backend": args.backend,
            "load_average": os.getloadavg(),
        },
        "throughput": throughput(events, args.repeat),
        "join": anyio.run(join_latency, args.events, args.repeat, backend=args.backend),
    }
    result["markdown"] = table(result)
    print(result["markdown"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_plot:
        plot(result, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
