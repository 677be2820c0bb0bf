"""How fast can threads emit into an EventBus?

Producers are worker threads; the bus has ten subscribers that consume
concurrently on the event loop with buffers big enough that nothing is dropped
or blocked. A measurement runs from the moment the producer threads are started
to the moment the last subscriber has received the last event, so the rate is
*events handed off and delivered to every subscriber* per second of wall time.

Methods, measured in the same run, interleaved, on every backend available:

- ``handoff``: ``bus.emit(event)`` called in the thread (the bus's bounded
  thread hand-off: one socket wake-up per batch);
- ``naive``: ``anyio.from_thread.run_sync(bus.emit, event)`` per event (one
  round trip to the loop per event);
- ``loop`` (reference, no threads): ``bus.emit`` in a task on the loop, with a
  checkpoint every 256 events so the subscribers run: the ceiling the hand-off
  can approach, since every event is delivered on the loop thread anyway.

Subscribers consume in one of two ways (each its own table): ``iter`` is the
usual ``async for event in sub`` (one awaited receive, so one cancellation
check, per event and subscriber); ``batch`` is ``async for batch in
sub.batches()`` (one per batch of ready events).

Events are built before the clock starts (each thread its own lane of one run),
and the bus uses its default guards, history and hand-off size.

Usage::

    .venv/bin/python benchmarks/threads.py [--repeat 5] [--events 60000]
        [--naive-events 10000] [--backend trio ...] [--consumer iter ...]

Prints a markdown table of medians and writes every sample to
``benchmarks/results/threads.json``. Issue targets: >= 200,000 events/s from 4
threads, and >= 5x the naive way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.lowlevel import checkpoint

from purpose_bus import Event, EventBus, MessageDelta, Subscription

SUBSCRIBERS = 10
RESULTS = Path(__file__).parent / "results" / "threads.json"
TARGET_RATE = 200_000
TARGET_SPEEDUP = 5.0

Backend = tuple[str, dict[str, Any]]


def backends() -> dict[str, Backend]:
    found: dict[str, Backend] = {"asyncio": ("asyncio", {})}
    if importlib.util.find_spec("uvloop") is not None:
        found["uvloop"] = ("asyncio", {"use_uvloop": True})
    if importlib.util.find_spec("trio") is not None:
        found["trio"] = ("trio", {})
    return found


def make_events(threads: int, per_thread: int) -> list[list[Event]]:
    """One list per thread, built before timing: each thread its own lane."""
    return [
        [
            MessageDelta(run_id="bench", lane_id=f"lane-{t}", text="x")
            for _ in range(per_thread)
        ]
        for t in range(threads)
    ]


async def consume_iter(sub: Subscription[Event], total: int) -> None:
    """The common consumer: ``async for`` (one awaited receive per event)."""
    received = 0
    async for _ in sub:
        received += 1
        if received == total:
            return


async def consume_batch(sub: Subscription[Event], total: int) -> None:
    """A batching consumer: ``async for batch in sub.batches()`` (one awaited
    receive, so one cancellation check, per batch of ready events)."""
    received = 0
    async for batch in sub.batches():
        received += len(batch)
        if received >= total:
            return


CONSUMERS: dict[str, Callable[[Subscription[Event], int], Awaitable[None]]] = {
    "iter": consume_iter,
    "batch": consume_batch,
}


async def consume(
    how: str, sub: Subscription[Event], total: int, done: list[float]
) -> None:
    await CONSUMERS[how](sub, total)
    done.append(time.perf_counter())


def handoff_producer(bus: EventBus, events: Sequence[Event]) -> None:
    emit = bus.emit
    for event in events:
        emit(event)


def naive_producer(bus: EventBus, events: Sequence[Event]) -> None:
    run_sync = anyio.from_thread.run_sync
    emit = bus.emit
    for event in events:
        run_sync(emit, event)


PRODUCERS: dict[str, Callable[[EventBus, Sequence[Event]], None]] = {
    "handoff": handoff_producer,
    "naive": naive_producer,
}


async def loop_producer(bus: EventBus, events: list[list[Event]]) -> None:
    emit = bus.emit
    count = 0
    for batch in events:
        for event in batch:
            emit(event)
            count += 1
            if count % 256 == 0:
                await checkpoint()


async def measure(
    method: str, threads: int, per_thread: int, consumer: str = "iter"
) -> dict[str, Any]:
    """One measurement; returns the rate and what the bus counted."""
    events = make_events(max(threads, 1), per_thread)
    total = sum(len(batch) for batch in events)
    done: list[float] = []
    limiter = anyio.CapacityLimiter(max(threads, 1))
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(EventBus(buffer_size=total))
        subs = [
            await stack.enter_async_context(bus.subscribe(run_id="bench"))
            for _ in range(SUBSCRIBERS)
        ]
        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(consume, consumer, sub, total, done)
            start = time.perf_counter()
            if method == "loop":
                await loop_producer(bus, events)
            else:
                producer = PRODUCERS[method]
                for batch in events:
                    tg.start_soon(
                        partial(
                            anyio.to_thread.run_sync,
                            producer,
                            bus,
                            batch,
                            limiter=limiter,
                        )
                    )
        end = max(done)
        stats = bus.statistics()
    assert stats.emitted == total, stats
    assert stats.dropped == 0, stats
    assert len(done) == SUBSCRIBERS
    seconds = end - start
    return {"events": total, "seconds": seconds, "rate": total / seconds}


def run_one(
    backend: Backend, method: str, threads: int, per_thread: int, consumer: str
) -> float:
    name, options = backend
    result: dict[str, Any] = anyio.run(
        measure,
        method,
        threads,
        per_thread,
        consumer,
        backend=name,
        backend_options=options,
    )
    return float(result["rate"])


CASES = [("handoff", 1), ("naive", 1), ("handoff", 4), ("naive", 4), ("loop", 0)]

#: samples[consumer][backend]["method/threads"] -> rates (events/s)
Samples = dict[str, dict[str, dict[str, list[float]]]]
Medians = dict[str, dict[str, dict[str, float]]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--events", type=int, default=60_000, help="events per hand-off/loop run"
    )
    parser.add_argument(
        "--naive-events", type=int, default=10_000, help="events per naive run"
    )
    parser.add_argument(
        "--backend", action="append", help="only these (asyncio, uvloop, trio)"
    )
    parser.add_argument(
        "--consumer",
        action="append",
        choices=sorted(CONSUMERS),
        help="how subscribers consume (default: iter and batch)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    chosen = {
        k: v for k, v in backends().items() if not args.backend or k in args.backend
    }
    consumers = args.consumer or ["iter", "batch"]
    samples: Samples = {
        c: {b: {f"{m}/{t}": [] for m, t in CASES} for b in chosen} for c in consumers
    }
    for repeat in range(args.repeat):
        for consumer in consumers:
            for backend_name, backend in chosen.items():
                for method, threads in CASES:
                    events = args.naive_events if method == "naive" else args.events
                    per_thread = events // max(threads, 1)
                    rate = run_one(backend, method, threads, per_thread, consumer)
                    samples[consumer][backend_name][f"{method}/{threads}"].append(rate)
                    print(
                        f"  [{repeat + 1}/{args.repeat}] {consumer:5} "
                        f"{backend_name:8} {method:8} threads={threads}:"
                        f" {rate:>10,.0f} events/s",
                        file=sys.stderr,
                    )

    medians: Medians = {
        c: {
            b: {case: statistics.median(rates) for case, rates in by_case.items()}
            for b, by_case in by_backend.items()
        }
        for c, by_backend in samples.items()
    }
    for consumer, by_backend in medians.items():
        print(table(consumer, by_backend))
        print()
    write_json(args, samples, medians)
    return 0


CONSUMER_TITLES = {
    "iter": "subscribers consume with `async for` (one awaited receive per event)",
    "batch": "subscribers take batches with `async for batch in sub.batches()`",
}


def table(consumer: str, medians: dict[str, dict[str, float]]) -> str:
    lines = [
        f"### {SUBSCRIBERS} subscribers; {CONSUMER_TITLES[consumer]}",
        "",
        "Events/s (median), each delivered to every subscriber; wall time from"
        " starting the producers to the last event received.",
        "",
        "| backend | threads | hand-off `bus.emit` | naive `from_thread.run_sync`"
        " | speed-up | loop-side `emit` (ceiling) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backend, rates in medians.items():
        for threads in (1, 4):
            handoff = rates[f"handoff/{threads}"]
            naive = rates[f"naive/{threads}"]
            lines.append(
                f"| {backend} | {threads} | {handoff:,.0f} | {naive:,.0f}"
                f" | {handoff / naive:.1f}x | {rates['loop/0']:,.0f} |"
            )
    lines.append("")
    for backend, rates in medians.items():
        rate = rates["handoff/4"]
        speedup = rate / rates["naive/4"]
        verdict = (
            "met" if rate >= TARGET_RATE and speedup >= TARGET_SPEEDUP else "NOT met"
        )
        lines.append(
            f"- {backend}: target (>= {TARGET_RATE:,} events/s from 4 threads and"
            f" >= {TARGET_SPEEDUP:.0f}x naive) {verdict}: {rate:,.0f} events/s,"
            f" {speedup:.1f}x"
        )
    return "\n".join(lines)


def write_json(args: argparse.Namespace, samples: Samples, medians: Medians) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "threads",
        "unit": "events/s",
        "subscribers": SUBSCRIBERS,
        "events_per_run": {"handoff": args.events, "naive": args.naive_events},
        "repeat": args.repeat,
        "targets": {"rate_4_threads": TARGET_RATE, "speedup": TARGET_SPEEDUP},
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": _cpus(),
            "load_average": _load_average(),
            "commit": _commit(),
            "anyio": _version("anyio"),
            "trio": _version("trio"),
            "uvloop": _version("uvloop"),
        },
        "medians": medians,
        "best": {
            c: {b: {k: max(v) for k, v in cases.items()} for b, cases in bb.items()}
            for c, bb in samples.items()
        },
        "samples": samples,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


def _commit() -> str | None:
    """The commit measured, with ``+dirty`` if purpose_bus has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "purpose_bus"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpus() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
