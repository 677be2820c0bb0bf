"""The scenarios, written once against the adapter interface (see
``systems/_base.py``); each returns a dict of metrics for one repetition.

Common rules: events are built before timing; buffers are large enough that
nothing is dropped unless the scenario is about dropping; the publisher emits
in bursts and yields (``anyio.lowlevel.checkpoint``) every ``YIELD_EVERY``
emits; every subscriber consumes concurrently in its own task; ``gc.collect()``
runs before each timed section (the collector stays on while timing).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from systems import System
from systems._base import Adapter, Handler, NotApplicable, Pace

__all__ = ["SCENARIOS", "Sizes", "sizes"]

HERE = Path(__file__).parent
TOPIC = "run-0"
YIELD_EVERY = 100
perf = time.perf_counter


@dataclass(frozen=True)
class Sizes:
    fanout_deliveries: int = 100_000
    fanout_subs: tuple[int, ...] = (1, 10, 100)
    pingpong_rounds: int = 3_000
    load_events: int = 10_000
    load_subs: int = 10
    idle_subs: int = 1_000
    idle_events: int = 30_000
    slow_events: int = 20_000
    slow_buffer: int = 1_000
    slow_sleep: float = 0.001
    slow_cap: float = 2.0  # seconds of publishing at most
    #: A subscriber that received nothing for this long lost its terminal event.
    slow_quiet: float = 0.25
    thread_events: int = 20_000
    thread_counts: tuple[int, ...] = (1, 4)
    thread_subs: int = 10
    memory_subs: int = 1_000
    history_events: int = 50_000
    #: Paired measurements inside one process alternate this often (best kept).
    idle_rounds: int = 3
    slow_rounds: int = 2
    #: Scaled sizes (``System.scale``) never go below this many events.
    min_events: int = 10
    timeout: float = 240.0  # per worker


FULL = Sizes()
QUICK = Sizes(
    fanout_deliveries=3_000,
    pingpong_rounds=200,
    load_events=300,
    idle_subs=200,
    idle_events=2_000,
    slow_events=2_000,
    slow_cap=0.25,
    slow_quiet=0.1,
    thread_events=2_000,
    memory_subs=100,
    history_events=1_000,
    idle_rounds=1,
    slow_rounds=1,
    min_events=3,
    timeout=30.0,
)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def scaled(n: float, system: System, z: Sizes) -> int:
    return max(z.min_events, round(n * system.scale))


# -- the pieces --------------------------------------------------------------


async def publish(
    adapter: Adapter,
    emit: Callable[[Any], Any],
    events: Sequence[Any],
    stamps: list[float] | None = None,
) -> None:
    """Emit *events*, yielding every ``YIELD_EVERY`` emits; with *stamps*, note
    the time just before each emit."""
    checkpoint = anyio.lowlevel.checkpoint
    n = 0
    if adapter.async_emit:
        for i, event in enumerate(events):
            if stamps is not None:
                stamps[i] = perf()
            await emit(event)
            n += 1
            if n == YIELD_EVERY:
                n = 0
                await checkpoint()
    elif stamps is None:
        for event in events:
            emit(event)
            n += 1
            if n == YIELD_EVERY:
                n = 0
                await checkpoint()
    else:
        for i, event in enumerate(events):
            stamps[i] = perf()
            emit(event)
            n += 1
            if n == YIELD_EVERY:
                n = 0
                await checkpoint()


class Finish:
    """Collects the time each subscriber finished; ``done`` is set when all
    ``expected`` have."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.times: list[float] = []
        self.done = anyio.Event()

    def finished(self) -> None:
        self.times.append(perf())
        if len(self.times) == self.expected:
            self.done.set()


def counter(count: int, finish: Finish) -> Handler:
    """A subscriber that stops after *count* events."""
    received = 0

    def handler(event: Any) -> bool:
        nonlocal received
        received += 1
        if received < count:
            return False
        finish.finished()
        return True

    return handler


class Tally:
    """A subscriber for the slow scenario: counts events until the terminal one."""

    def __init__(self, is_terminal: Callable[[Any], bool]) -> None:
        self.is_terminal = is_terminal
        self.received = 0
        self.terminal = False

    def __call__(self, event: Any) -> bool:
        if self.is_terminal(event):
            self.terminal = True
            return True
        self.received += 1
        return False


def _never(event: Any) -> bool:
    raise AssertionError(f"an idle subscriber received {event!r}")


async def settle() -> None:
    """Let every task started so far run until it blocks (a few scheduler
    rounds and a short sleep: ``anyio.wait_all_tasks_blocked`` would import
    ``trio.testing``, and with it pytest)."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    await anyio.sleep(0.02)
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


def percentile(ordered: Sequence[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


# -- fan-out -------------------------------------------------------------------


async def fanout_rate(adapter: Adapter, subs: int, count: int, idle: int = 0) -> float:
    """Deliveries/s: *count* events to *subs* subscribers (beside *idle* idle
    ones on other topics), from the first emit to the last delivery."""
    events = adapter.make_events(TOPIC, count)
    finish = Finish(subs)
    async with adapter.open(buffer=None), anyio.create_task_group() as tg:
        for i in range(idle):
            await adapter.subscribe(tg, f"idle-{i}", _never)
        for _ in range(subs):
            await adapter.subscribe(tg, TOPIC, counter(count, finish))
        if idle:
            await settle()
        emit = adapter.emitter(TOPIC)
        gc.collect()
        start = perf()
        await publish(adapter, emit, events)
        await finish.done.wait()
        tg.cancel_scope.cancel()
    return count * subs / (max(finish.times) - start)


async def scenario_fanout(adapter: Adapter, system: System, z: Sizes, rep: int) -> dict:
    await fanout_rate(adapter, 10, scaled(z.fanout_deliveries / 50, system, z))  # warm
    metrics: dict[str, Any] = {}
    for subs in z.fanout_subs:
        count = scaled(z.fanout_deliveries / subs, system, z)
        metrics[f"subs_{subs}"] = await fanout_rate(adapter, subs, count)
        metrics[f"events_{subs}"] = count
    return metrics


# -- latency -------------------------------------------------------------------


async def pingpong(adapter: Adapter, rounds: int) -> list[float]:
    """Emit one event, wait until the subscriber has it, repeat: emit->receive
    times."""
    events = adapter.make_events(TOPIC, rounds)
    samples: list[float] = []
    state: list[Any] = [None, 0.0]  # the waiter, the time of the emit

    def handler(event: Any) -> bool:
        samples.append(perf() - state[1])
        state[0].set()
        return False

    async with adapter.open(buffer=None), anyio.create_task_group() as tg:
        await adapter.subscribe(tg, TOPIC, handler)
        emit = adapter.emitter(TOPIC)
        gc.collect()
        for event in events:
            waiter = state[0] = anyio.Event()
            state[1] = perf()
            if adapter.async_emit:
                await emit(event)
            else:
                emit(event)
            await waiter.wait()
        tg.cancel_scope.cancel()
    return samples


async def latency_under_load(adapter: Adapter, subs: int, count: int) -> list[float]:
    """Fan-out to *subs* subscribers with a timestamp per event: every
    subscriber's emit->receive time of every event."""
    events = adapter.make_events(TOPIC, count)
    stamps = [0.0] * count
    samples: list[float] = []
    finish = Finish(subs)

    def make_handler() -> Handler:
        k = 0
        append = samples.append

        def handler(event: Any) -> bool:
            nonlocal k
            append(perf() - stamps[k])
            k += 1
            if k < count:
                return False
            finish.finished()
            return True

        return handler

    async with adapter.open(buffer=None), anyio.create_task_group() as tg:
        for _ in range(subs):
            await adapter.subscribe(tg, TOPIC, make_handler())
        emit = adapter.emitter(TOPIC)
        gc.collect()
        await publish(adapter, emit, events, stamps)
        await finish.done.wait()
        tg.cancel_scope.cancel()
    return samples


async def scenario_latency(
    adapter: Adapter, system: System, z: Sizes, rep: int
) -> dict:
    await pingpong(adapter, 50)  # warm
    ping = sorted(await pingpong(adapter, scaled(z.pingpong_rounds, system, z)))
    load = sorted(
        await latency_under_load(adapter, z.load_subs, scaled(z.load_events, system, z))
    )
    us = 1e6
    return {
        "pingpong_p50_us": percentile(ping, 50) * us,
        "pingpong_p99_us": percentile(ping, 99) * us,
        "load_p50_us": percentile(load, 50) * us,
        "load_p99_us": percentile(load, 99) * us,
        "pingpong_rounds": len(ping),
        "load_samples": len(load),
    }


# -- idle subscribers ------------------------------------------------------------


async def scenario_idle(adapter: Adapter, system: System, z: Sizes, rep: int) -> dict:
    """The rate of one subscriber beside ``idle_subs`` idle ones, and alone;
    alternated ``idle_rounds`` times in this process, the best of each kept (the
    machine's noise only ever slows a measurement down)."""
    if adapter.no_topics:
        raise NotApplicable(adapter.no_topics)
    count = scaled(z.idle_events, system, z)
    await fanout_rate(adapter, 1, max(10, count // 10))  # warm
    rates: dict[str, list[float]] = {"single": [], "idle": []}
    order = ["single", "idle"] if rep % 2 else ["idle", "single"]
    for _ in range(z.idle_rounds):
        for which in order:
            idle = z.idle_subs if which == "idle" else 0
            rates[which].append(await fanout_rate(adapter, 1, count, idle=idle))
    single, idle = max(rates["single"]), max(rates["idle"])
    return {
        "single_rate": single,
        "idle_rate": idle,
        "ratio": idle / single,
        "idle_subs": z.idle_subs,
    }


# -- slow consumer -----------------------------------------------------------------


async def slow_once(
    adapter: Adapter, z: Sizes, every: int, with_slow: bool
) -> dict[str, Any]:
    """A fast subscriber (and a slow one, sleeping after each event while the
    publisher runs), buffers of ``slow_buffer``; ``slow_events`` events and a
    terminal one, the publisher yielding every *every* emits."""
    events = adapter.make_events(TOPIC, z.slow_events, terminal=True)
    *body, last = events
    fast, slow = Tally(adapter.is_terminal), Tally(adapter.is_terminal)
    pace = Pace(z.slow_sleep)
    checkpoint = anyio.lowlevel.checkpoint
    async with adapter.open(buffer=z.slow_buffer), anyio.create_task_group() as tg:
        await adapter.subscribe(tg, TOPIC, fast)
        if with_slow:
            await adapter.subscribe(tg, TOPIC, slow, pace=pace)
        emit = adapter.emitter(TOPIC)
        is_async = adapter.async_emit
        published, capped = 0, False
        gc.collect()
        start = perf()
        for event in body:
            if is_async:
                await emit(event)
            else:
                emit(event)
            published += 1
            if published % every == 0:
                await checkpoint()
            if published % 100 == 0 and perf() - start > z.slow_cap:
                capped = True
                break
        if is_async:
            await emit(last)
        else:
            emit(last)
        elapsed = perf() - start
        pace.active = False  # the slow one now drains at full speed
        await wait_for_terminals([fast, slow] if with_slow else [fast], z.slow_quiet)
        tg.cancel_scope.cancel()
    return {
        "published": published,
        "rate": (published + 1) / elapsed,
        "capped": capped,
        "fast_lost": published - fast.received,
        "fast_terminal": fast.terminal,
        "slow_received": slow.received,
        "slow_lost": published - slow.received,
        "slow_terminal": slow.terminal,
    }


async def wait_for_terminals(tallies: list[Tally], quiet: float) -> None:
    """Until every tally saw its terminal event, or none received anything for
    *quiet* seconds (its terminal event was lost)."""
    last = -1
    still = perf()
    while not all(t.terminal for t in tallies):
        seen = sum(t.received for t in tallies)
        if seen != last:
            last, still = seen, perf()
        elif perf() - still > quiet:
            return
        await anyio.sleep(0.01)


async def scenario_slow(adapter: Adapter, system: System, z: Sizes, rep: int) -> dict:
    """For each publisher (yielding every emit, every 100): runs with and
    without the slow subscriber, alternated ``slow_rounds`` times (once if publishing
    was capped); the publisher ratio compares the best rate of each, the losses
    are the worst seen, the terminal event must have reached the slow subscriber
    every time."""
    metrics: dict[str, Any] = {}
    for every in (1, YIELD_EVERY):
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(z.slow_rounds):
            for with_slow in (False, True) if rep % 2 else (True, False):
                runs[with_slow].append(await slow_once(adapter, z, every, with_slow))
            if any(r["capped"] for r in runs[False] + runs[True]):
                break
        base = max(r["rate"] for r in runs[False])
        loaded = max(r["rate"] for r in runs[True])
        m = f"every{every}_"
        metrics[m + "rate"] = loaded
        metrics[m + "base_rate"] = base
        metrics[m + "publisher_ratio"] = loaded / base
        metrics[m + "published"] = min(r["published"] for r in runs[True])
        metrics[m + "capped"] = any(r["capped"] for r in runs[False] + runs[True])
        for key in ("fast_lost", "slow_lost"):
            metrics[m + key] = max(r[key] for r in runs[True])
        metrics[m + "base_fast_lost"] = max(r["fast_lost"] for r in runs[False])
        metrics[m + "slow_received"] = min(r["slow_received"] for r in runs[True])
        for key in ("fast_terminal", "slow_terminal"):
            metrics[m + key] = all(r[key] for r in runs[True])
    metrics["overflow"] = adapter.overflow
    return metrics


# -- threads -----------------------------------------------------------------------


def _produce(
    go: threading.Event,
    emit: Callable[[Any], None],
    events: list[Any],
    errors: list[BaseException],
) -> None:
    go.wait()
    try:
        for event in events:
            emit(event)
    except BaseException as exc:
        errors.append(exc)


async def thread_rate(adapter: Adapter, threads: int, count: int, subs: int) -> float:
    """Events/s from *threads* threads (each its own lane) delivered to *subs*
    subscribers on the loop, from release to the last delivery."""
    per = count // threads
    total = per * threads
    batches = [
        adapter.make_events(TOPIC, per, lane=f"lane-{t}") for t in range(threads)
    ]
    finish = Finish(subs)
    errors: list[BaseException] = []
    async with adapter.open(buffer=None), anyio.create_task_group() as tg:
        emit = adapter.thread_emitter(TOPIC)
        if emit is None:
            raise NotApplicable("no way to emit from a thread")
        for _ in range(subs):
            await adapter.subscribe(tg, TOPIC, counter(total, finish))
        go = threading.Event()
        workers = [
            threading.Thread(target=_produce, args=(go, emit, batch, errors))
            for batch in batches
        ]
        for worker in workers:
            worker.start()
        gc.collect()
        start = perf()
        go.set()
        with anyio.fail_after(60):
            while not finish.done.is_set() and not errors:
                with anyio.move_on_after(0.05):
                    await finish.done.wait()
        for worker in workers:
            await anyio.to_thread.run_sync(worker.join)
        if errors:
            raise errors[0]
        tg.cancel_scope.cancel()
    return total / (max(finish.times) - start)


async def scenario_threads(
    adapter: Adapter, system: System, z: Sizes, rep: int
) -> dict:
    count = scaled(z.thread_events, system, z)
    await thread_rate(adapter, 1, max(10, count // 10), z.thread_subs)  # warm
    metrics: dict[str, Any] = {}
    for threads in z.thread_counts:
        metrics[f"threads_{threads}"] = await thread_rate(
            adapter, threads, count, z.thread_subs
        )
    metrics["events"] = count
    return metrics


# -- memory --------------------------------------------------------------------------


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _idle_task(event: anyio.Event) -> None:
    await event.wait()


async def scenario_memory(adapter: Adapter, system: System, z: Sizes, rep: int) -> dict:
    """Bytes per idle subscription, by tracemalloc over ``memory_subs`` of them on
    distinct topics: registered only (nothing consuming; n/a where a
    subscription exists only while iterated), and with a consumer task blocked
    waiting in it; and, for reference, a bare task blocked on an event."""
    n = z.memory_subs
    topics = [f"idle-{i}" for i in range(n)]
    registered: float | None = None
    tracemalloc.start()
    try:
        async with adapter.open(buffer=None):
            async with anyio.create_task_group() as tg:  # warm: caches, interning
                for i in range(10):
                    await adapter.subscribe(tg, f"warm-{i}", _never)
                await settle()
                tg.cancel_scope.cancel()
            try:
                before = traced()
                async with AsyncExitStack() as stack:
                    for topic in topics:
                        await adapter.register(stack, topic)
                    registered = (traced() - before) / n
            except NotApplicable:
                pass
            before = traced()
            async with anyio.create_task_group() as tg:
                for topic in topics:
                    await adapter.subscribe(tg, topic, _never)
                await settle()
                consuming = (traced() - before) / n
                tg.cancel_scope.cancel()
        events = [anyio.Event() for _ in range(n)]
        before = traced()
        async with anyio.create_task_group() as tg:
            for event in events:
                tg.start_soon(_idle_task, event)
            await settle()
            task = (traced() - before) / n
            tg.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    return {
        "subscription_bytes": registered,
        "subscriber_bytes": consuming,
        "bare_task_bytes": task,
        "subscriptions": n,
    }


# -- history memory (purpose_bus only; runs benchmarks/history_memory.py) -----------


def scenario_history(system: System, z: Sizes) -> dict:
    if not system.name.startswith("purpose_bus"):
        raise NotApplicable("purpose_bus only")
    script = HERE / "history_memory.py"
    if not script.exists():
        raise NotApplicable("benchmarks/history_memory.py not there yet")
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "history_memory.json"
        subprocess.run(
            [
                sys.executable,
                str(script),
                "--events",
                str(z.history_events),
                "--output",
                str(output),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=z.timeout,
        )
        document = json.loads(output.read_text())
    rows = {
        row.get("scenario", str(i)): max(
            (v for k, v in row.items() if k.endswith("bytes_per_event")), default=None
        )
        for i, row in enumerate(document.get("history", []))
    }
    known = [v for v in rows.values() if v is not None]
    bus = document.get("bus_one_run", {})
    return {
        "bus_bytes_per_event": bus.get("bookkeeping_bytes_per_event"),
        "stamped_copy_bytes": bus.get("stamped_copy_bytes_per_event"),
        "one_run_bytes_per_event": rows.get("1 run"),
        "worst_bytes_per_event": max(known) if known else None,
        "worst_case": max(rows, key=lambda k: rows[k] or 0) if known else None,
        "target": document.get("target_bytes_per_event"),
        "events": z.history_events,
    }


Scenario = Callable[[Adapter, System, Sizes, int], Awaitable[dict]]

SCENARIOS: dict[str, Scenario] = {
    "fanout": scenario_fanout,
    "latency": scenario_latency,
    "idle": scenario_idle,
    "slow": scenario_slow,
    "threads": scenario_threads,
    "memory": scenario_memory,
}
#: Scenarios that do not run an adapter (synchronous, no event loop).
PLAIN: dict[str, Callable[[System, Sizes], dict]] = {"history-memory": scenario_history}
