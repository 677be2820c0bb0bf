"""Stress the bus: a thread storm while subscribers join and leave, then a long
run of subscribe/leave cycles; check nothing is lost or leaked, print figures.

The large sizes of ``tests/test_reliability.py``'s storm and leak tests (which
run small ones in CI):

1. Storm: ``--threads`` (8) threads each emit ``--events`` (50,000) numbered
   events into one bus (every fifth one ``INTERNAL``), then their run's terminal
   event, while on the loop subscriptions of random policy, buffer and filters
   join, receive a little and leave, as fast as they can. A ``BLOCK`` auditor
   must receive every event, each thread's in order; a ``DROP_OLDEST``
   subscriber with gap notices must account for every event it matched
   (delivered + dropped, the notices adding up to dropped); every visitor must
   satisfy delivered + dropped + buffered == matched (matched counted from the
   auditor's record of the offsets in its window), a ``BLOCK`` visitor with
   nothing dropped.
2. Cycles: subscribe/leave cycles of every kind (live, replaying, resuming
   after a cursor, run-scoped, ``BLOCK``, left by an exception, cancelled while
   waiting) until ``--cycles`` (100,000) cycles were made in total, storm
   visits included, in two halves.

Memory: the traced size (:mod:`tracemalloc`, started after a warm-up, so it
counts what was allocated since and is still alive) and the resident set size,
after a garbage collection, before and after each phase and half. After the
storm, history holds ``history_size`` events (10,000 by default), and about
that many events should be alive (counted with :mod:`gc`); the cycles must not
grow anything: the two halves should differ by noise only.

Usage::

    .venv/bin/python benchmarks/stress.py [--threads 8] [--events 50000]
        [--cycles 100000] [--backend asyncio trio] [--no-tracemalloc]
        [--json PATH]

Prints a markdown table per backend (and writes the figures as JSON with
``--json``). Exits non-zero if a check fails. Timings include tracemalloc's
overhead unless ``--no-tracemalloc``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import resource
import sys
import threading
import time
import tracemalloc
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

from purpose_bus import (
    Event,
    EventBus,
    EventsDropped,
    MessageDelta,
    Overflow,
    RunFinished,
    Subscription,
    Visibility,
)


@attrs.frozen(kw_only=True)
class Tick(Event):
    """A numbered event from one thread."""

    kind = "benchmarks.stress.tick"

    source: int
    n: int


class Failed(AssertionError):
    """A stress check failed."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def rss_bytes() -> int:
    """The resident set size now (Linux), else the peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def events_alive() -> int:
    """How many event objects exist (after a collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Event))


@attrs.define
class Memory:
    traced: bool
    samples: dict[str, tuple[int, int]] = attrs.Factory(dict)

    def sample(self, label: str) -> None:
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] if self.traced else 0
        self.samples[label] = (traced, rss_bytes())


# -- phase 1: the storm -------------------------------------------------------------


@attrs.define
class Record:
    """What the auditor saw, compactly: per offset, the source and visibility."""

    sources: bytearray = attrs.Factory(bytearray)
    internal: bytearray = attrs.Factory(bytearray)

    def add(self, event: Event) -> None:
        self.sources.append(int(event.run_id.removeprefix("t")))
        self.internal.append(event.visibility > Visibility.PUBLIC)


@attrs.define
class VisitFigures:
    visits: int = 0
    block_visits: int = 0
    received: int = 0
    dropped: int = 0


async def storm(
    bus: EventBus, threads: int, per_thread: int, rng: random.Random
) -> dict[str, Any]:
    record = Record()
    orders: dict[int, int] = {}
    lossy_seen = {"delivered": 0, "announced": 0, "ends": 0}
    windows: list[tuple[frozenset[int] | None, bool, int, int, int]] = []
    figures = VisitFigures()
    producing = threading.Event()
    done_producing = anyio.Event()

    def produce(source: int) -> None:
        emit = bus.emit
        run = f"t{source}"
        producing.set()
        for n in range(per_thread):
            vis = Visibility.INTERNAL if n % 5 == 0 else Visibility.PUBLIC
            emit(Tick(run_id=run, source=source, n=n, visibility=vis))
        emit(RunFinished(run_id=run))

    async def producers() -> None:
        async with anyio.create_task_group() as tg:
            for source in range(threads):
                tg.start_soon(anyio.to_thread.run_sync, partial(produce, source))
        done_producing.set()

    async def auditor(
        sub: Subscription[Event], *, task_status: TaskStatus[None]
    ) -> None:
        task_status.started()
        async for event in sub:
            check(event.offset == len(record.sources) + 1, "auditor: offset gap")
            if isinstance(event, Tick):
                check(orders.get(event.source, -1) == event.n - 1, "thread order")
                orders[event.source] = event.n
            record.add(event)

    async def lossy(sub: Subscription[Event], *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        async for event in sub:
            if isinstance(event, EventsDropped):
                lossy_seen["announced"] += event.count
            else:
                lossy_seen["delivered"] += 1
                lossy_seen["ends"] += event.terminal
            await checkpoint()

    async def visit() -> None:
        policy = rng.choice(list(Overflow))
        kwargs: dict[str, Any] = {
            "overflow": policy,
            "buffer_size": rng.choice([1, 4, 64]),
            "gap_events": rng.random() < 0.5,
        }
        runs: frozenset[int] | None = None
        if rng.random() < 0.5:
            picked = rng.sample(range(threads), 2)
            runs = frozenset(picked)
            kwargs["run_id"] = [f"t{s}" for s in picked]
        internal = rng.random() < 0.3
        if internal:
            kwargs["visibility"] = Visibility.INTERNAL
        async with bus.subscribe(**kwargs) as sub:
            entered = bus.statistics().emitted
            for _ in range(rng.randrange(0, 20)):
                try:
                    sub.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    await checkpoint()
            stats = sub.statistics()
            left = bus.statistics().emitted
        if policy is Overflow.BLOCK:
            check(stats.dropped == 0, "a BLOCK visitor dropped events")
            figures.block_visits += 1
        windows.append(
            (
                runs,
                internal,
                entered,
                left,
                stats.delivered + stats.dropped + stats.buffered,
            )
        )
        figures.visits += 1
        figures.received += stats.delivered
        figures.dropped += stats.dropped

    start = time.perf_counter()
    audit = bus.subscribe(
        overflow=Overflow.BLOCK, buffer_size=1024, visibility=Visibility.PRIVATE
    )
    drops = bus.subscribe(buffer_size=64, gap_events=True)
    async with audit, drops, anyio.create_task_group() as tg:
        await tg.start(auditor, audit)
        await tg.start(lossy, drops)
        tg.start_soon(producers)
        await anyio.to_thread.run_sync(producing.wait)
        while not done_producing.is_set():
            await visit()
        elapsed = time.perf_counter() - start
        await bus.aclose()
    lossy_stats = drops.statistics()

    total = threads * (per_thread + 1)
    check(len(record.sources) == total, f"auditor got {len(record.sources)} of {total}")
    check(all(orders[s] == per_thread - 1 for s in range(threads)), "thread order")
    check(audit.statistics().dropped == 0, "the BLOCK auditor dropped events")
    public = total - sum(record.internal)
    check(lossy_stats.delivered + lossy_stats.dropped == public, "lossy accounting")
    check(lossy_seen["announced"] == lossy_stats.dropped, "notices != dropped")
    check(lossy_seen["ends"] == threads, "a terminal event was lost")
    for runs, internal, entered, left, accounted in windows:
        matched = 0
        for index in range(entered, left):  # offsets entered + 1 ... left
            if runs is not None and record.sources[index] not in runs:
                continue
            if record.internal[index] and not internal:
                continue
            matched += 1
        check(
            accounted == matched, "visitor: delivered + dropped + buffered != matched"
        )
    check(bus.statistics().subscriptions == (), "subscriptions left registered")
    return {
        "threads": threads,
        "events": total,
        "seconds": round(elapsed, 3),
        "events/s": round(total / elapsed),
        "visits during the storm": figures.visits,
        "BLOCK visits": figures.block_visits,
        "lossy delivered": lossy_stats.delivered,
        "lossy dropped (all announced)": lossy_stats.dropped,
    }


# -- phase 2: subscribe/leave cycles --------------------------------------------------


async def cycles(bus: EventBus, count: int, rng: random.Random) -> float:
    """*count* subscribe/leave cycles of every kind; return the seconds taken."""

    async def one(index: int) -> None:
        run = f"c{index % 13}"
        mode = index % 6
        kwargs: dict[str, Any] = {
            "run_id": run if index % 2 else None,
            "overflow": list(Overflow)[index % 3],
            "buffer_size": rng.choice([1, 2, 16]),
            "replay": mode == 1,
            "after": max(0, bus.statistics().emitted - rng.randrange(50))
            if mode == 2
            else None,
            "gap_events": bool(index % 3),
        }
        sub = bus.subscribe(**kwargs)
        if mode == 3:  # cancelled while waiting
            with anyio.CancelScope() as scope:
                async with sub:
                    scope.cancel()
                    await sub.receive()
            return
        guard: Any = _expect(KeyError) if mode == 4 else nullcontext()
        with guard:
            async with sub:
                bus.emit(MessageDelta(run_id=run, text="x"))
                try:
                    sub.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    pass
                if mode == 4:
                    raise KeyError(run)
                if mode == 5:
                    bus.emit(MessageDelta(run_id=run, text="y"))

    start = time.perf_counter()
    for index in range(count):
        await one(index)
    elapsed = time.perf_counter() - start
    check(bus.statistics().subscriptions == (), "subscriptions left registered")
    return elapsed


class _expect:
    def __init__(self, error: type[BaseException]) -> None:
        self._error = error

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        check(exc_type is self._error, "the expected exception did not come out")
        return True


# -- a run ----------------------------------------------------------------------------


async def run_backend(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    memory = Memory(traced=not args.no_tracemalloc)
    # Warm up (imports, caches, the thread pool) before measuring.
    async with EventBus() as warm:
        await storm(warm, 2, 200, rng)
    async with EventBus() as warm:
        await cycles(warm, 500, rng)
    if memory.traced:
        tracemalloc.start()
    memory.sample("start")
    async with EventBus() as bus:
        memory.sample("bus open")
        figures = await storm(bus, args.threads, args.events, rng)
        memory.sample("after the storm")
        history = bus.statistics().history
        alive = events_alive()
    visits = figures["visits during the storm"]
    remaining = max(0, args.cycles - visits)
    async with EventBus(history_size=100) as bus:
        memory.sample("cycles: bus open")
        first = await cycles(bus, remaining // 2, rng)
        memory.sample("cycles: first half")
        second = await cycles(bus, remaining - remaining // 2, rng)
        memory.sample("cycles: second half")
        alive_after_cycles = events_alive()
    memory.sample("end")
    peak = tracemalloc.get_traced_memory()[1] if memory.traced else 0
    if memory.traced:
        tracemalloc.stop()
    (half_traced, half_rss) = memory.samples["cycles: first half"]
    (end_traced, end_rss) = memory.samples["cycles: second half"]
    figures.update(
        {
            "history held after the storm": history,
            "events alive after the storm (should be about history)": alive,
            "subscribe/leave cycles": visits + remaining,
            "cycles/s (after the storm)": round(remaining / max(first + second, 1e-9)),
            "events alive after the cycles (history of 100)": alive_after_cycles,
            "memory": {
                k: {"traced": t, "rss": r} for k, (t, r) in memory.samples.items()
            },
            "traced peak": peak,
            "cycles: growth over the second half (traced bytes)": end_traced
            - half_traced,
            "cycles: growth over the second half (rss bytes)": end_rss - half_rss,
        }
    )
    return figures


def _mib(value: int) -> str:
    return f"{value / 2**20:,.2f} MiB"


def print_table(backend: str, figures: dict[str, Any], traced: bool) -> None:
    print(f"\n### {backend}\n")
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        if key == "memory" or (not traced and ("traced" in key)):
            continue
        shown = f"{value:,}" if isinstance(value, int) else value
        if "bytes" in key or key == "traced peak":
            shown = f"{value:+,} B" if "growth" in key else _mib(value)
        print(f"| {key} | {shown} |")
    print("\n| memory at | traced | RSS |\n|---|---|---|")
    for label, sample in figures["memory"].items():
        shown = _mib(sample["traced"]) if traced else "-"
        print(f"| {label} | {shown} | {_mib(sample['rss'])} |")


def backends() -> dict[str, tuple[str, dict[str, Any]]]:
    found: dict[str, tuple[str, dict[str, Any]]] = {"asyncio": ("asyncio", {})}
    if importlib.util.find_spec("trio") is not None:
        found["trio"] = ("trio", {})
    if importlib.util.find_spec("uvloop") is not None:
        found["uvloop"] = ("asyncio", {"use_uvloop": True})
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=50_000, help="per thread")
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--backend", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-tracemalloc", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    available = backends()
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "tracemalloc": not args.no_tracemalloc,
    }
    status = 0
    traced = "on" if results["tracemalloc"] else "off"
    print(
        f"# purpose_bus stress: {args.threads} threads x {args.events:,} events, "
        f"{args.cycles:,} subscribe/leave cycles (python {results['python']}, "
        f"{results['cpus']} CPUs, tracemalloc {traced})"
    )
    for name in args.backend:
        backend, options = available[name]
        try:
            figures = anyio.run(
                run_backend, args, backend=backend, backend_options=options
            )
        except Failed as exc:
            print(f"\n### {name}: FAILED: {exc}")
            status = 1
            continue
        results[name] = figures
        print_table(name, figures, results["tracemalloc"])
        sys.stdout.flush()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
