"""Does an emit's cost grow with what it should not grow with?

DESIGN.md: "no operation's cost grows with what unrelated subscribers hold. An
emit costs O(matching subscribers), whatever terminal events a buffer holds and
however many late joiners are still replaying other runs." This script measures
the cost of ``bus.emit`` (microseconds per event, on each backend) as each of
these grows, with everything else fixed:

- ``terminals``: terminal events held by a subscriber to every run that does
  not read (its buffer of 1,000 full, ``DROP_OLDEST``): 0, 10, 100, 1k, 10k;
- ``replaying``: subscribers still replaying other runs (each emit evicts an
  event from history): 1, 10, 100, 1k, 5k;
- ``live``: live subscribers on other runs: 1, 10, 100, 1k, 10k;
- ``history``: the size of a full history: 1k, 10k, 100k, 1M;
- ``buffered``: events buffered by the subscriber that does not read (its
  buffer full, so each emit evicts one): 10, 100, 1k, 10k, 100k.

Each emit goes to one subscriber that matches it and does not read (its buffer
full: each emit evicts its oldest event, and the oldest event of history); each
figure is the fastest of ``--repeat`` loops of ``--events`` emits, with the
garbage collector off during the loop. The target: every curve flat, each point
within 1.5x of its first.

Usage::

    .venv/bin/python benchmarks/scaling.py [--repeat 5] [--events 5000]
        [--backend asyncio uvloop trio] [--quick]

Prints a markdown table and writes ``benchmarks/results/scaling.json`` and, when
matplotlib is importable, ``benchmarks/results/scaling.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from purpose_bus import EventBus, MessageDelta, RunFinished

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: The target: every point within this factor of its curve's first point.
FLATNESS = 1.5

#: Builds the situation a curve varies, on an open bus, for one size.
Setup = Callable[[EventBus, AsyncExitStack, int], Awaitable[None]]


def _delta(run_id: str, i: int = 0) -> MessageDelta:
    return MessageDelta(run_id=run_id, text=str(i))


async def _terminals(bus: EventBus, stack: AsyncExitStack, count: int) -> None:
    holder = await stack.enter_async_context(bus.subscribe(name="holder"))
    for run in range(count):
        bus.emit(RunFinished(run_id=f"done-{run}"))
    for i in range(1000):
        bus.emit(_delta("filler", i))
    assert holder.statistics().buffered >= min(count, 1000)


async def _replaying(bus: EventBus, stack: AsyncExitStack, count: int) -> None:
    for run in range(count):
        bus.emit(_delta(f"late-{run}"))
    for run in range(count):
        await stack.enter_async_context(bus.subscribe(run_id=f"late-{run}", after=0))


async def _live(bus: EventBus, stack: AsyncExitStack, count: int) -> None:
    for run in range(count):
        await stack.enter_async_context(bus.subscribe(run_id=f"other-{run}"))


async def _nothing(bus: EventBus, stack: AsyncExitStack, count: int) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Curve:
    """One dimension that grows: its sizes, what the x axis says, how a size is
    set up on the bus, and the bus's options for a size."""

    sizes: list[int]
    label: str
    setup: Setup = _nothing
    options: Callable[[int], dict[str, int]] = lambda n: {"history_size": 1000}


CURVES: dict[str, Curve] = {
    "terminals": Curve(
        [0, 10, 100, 1_000, 10_000],
        "terminal events held by a subscriber that does not read",
        _terminals,
    ),
    "replaying": Curve(
        [1, 10, 100, 1_000, 5_000], "subscribers still replaying other runs", _replaying
    ),
    "live": Curve([1, 10, 100, 1_000, 10_000], "live subscribers on other runs", _live),
    "history": Curve(
        [1_000, 10_000, 100_000, 1_000_000],
        "events history holds (full)",
        options=lambda n: {"history_size": n},
    ),
    "buffered": Curve(
        [10, 100, 1_000, 10_000, 100_000],
        "events buffered by the subscriber (full)",
        options=lambda n: {"history_size": 1000, "buffer_size": n},
    ),
}


def _timed(emit: Callable[[Any], None], events: list[MessageDelta]) -> float:
    """Microseconds per event of emitting *events*, the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for event in events:
            emit(event)
        return (time.perf_counter() - start) / len(events) * 1e6
    finally:
        gc.enable()


async def _point(curve: str, size: int, repeat: int, count: int) -> float:
    options = CURVES[curve].options(size)
    async with EventBus(**options) as bus, AsyncExitStack() as stack:
        await CURVES[curve].setup(bus, stack, size)
        await stack.enter_async_context(bus.subscribe(run_id="measured"))
        # Fill history and the measured subscriber's buffer (the other runs'
        # events stay in history when it is larger than the buffer, so that
        # the measured emits evict them).
        for i in range(options.get("buffer_size", 1000) + 1):
            bus.emit(_delta("measured", i))
        best = float("inf")
        for _ in range(repeat):
            events = [_delta("measured", i) for i in range(count)]
            best = min(best, _timed(bus.emit, events))
        return best


def measure(backend: str, repeat: int, count: int, quick: bool) -> dict[str, Any]:
    """Every curve on *backend*: ``{"backend", "curves": {curve: {size: µs}}}``."""
    figures: dict[str, dict[str, float]] = {}
    for curve, spec in CURVES.items():
        sizes = spec.sizes
        points: dict[str, float] = {}
        for size in sizes[:3] if quick else sizes:
            us = anyio.run(
                _point,
                curve,
                size,
                repeat,
                count,
                backend="asyncio" if backend == "uvloop" else backend,
                backend_options={"use_uvloop": True} if backend == "uvloop" else None,
            )
            points[str(size)] = us
            print(f"{backend} {curve} {size}: {us:.2f} µs", file=sys.stderr)
        figures[curve] = points
    return {"backend": backend, "curves": figures}


def _ratio(points: dict[str, float]) -> float:
    values = list(points.values())
    return max(values) / values[0]


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a markdown table, with each curve's worst / first ratio."""
    lines = [
        "| curve | backend | µs per emit, by size | worst / first |",
        "|---|---|---|---|",
    ]
    for curve in CURVES:
        for result in results:
            points = result["curves"].get(curve)
            if not points:
                continue
            cells = ", ".join(f"{size}: {us:.2f}" for size, us in points.items())
            ratio = _ratio(points)
            mark = "" if ratio <= FLATNESS else " **over target**"
            lines.append(
                f"| {curve} | {result['backend']} | {cells} | {ratio:.2f}x{mark} |"
            )
    return "\n".join(lines)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or ``None`` if not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """One panel per curve; whether matplotlib was there to draw it."""
    plt = _pyplot()
    if plt is None:
        return False
    curves = list(CURVES)
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6))
    for ax, curve in zip(axes, curves, strict=True):
        for result in results:
            points = result["curves"].get(curve, {})
            xs = [max(int(size), 1) for size in points]
            ax.plot(xs, list(points.values()), marker="o", label=result["backend"])
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(curve)
        ax.set_xlabel(CURVES[curve].label, fontsize=7)
        ax.set_ylabel("µs per emit")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument(
        "--backend", nargs="+", default=["asyncio", "trio"], help="or uvloop"
    )
    parser.add_argument("--quick", action="store_true", help="the first sizes only")
    parser.add_argument("--output", type=Path, default=RESULTS / "scaling.json")
    args = parser.parse_args(argv)
    results = [
        measure(backend, args.repeat, args.events, args.quick)
        for backend in args.backend
    ]
    markdown = table(results)
    print(markdown)
    args.output.parent.mkdir(exist_ok=True)
    machine = platform.processor() or platform.machine()
    args.output.write_text(
        json.dumps(
            {
                "machine": f"{machine}, Python {platform.python_version()}",
                "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "repeat": args.repeat,
                "events": args.events,
                "target": f"every point within {FLATNESS}x of its curve's first",
                "results": results,
                "markdown": markdown,
            },
            indent=1,
        )
        + "\n"
    )
    png = args.output.with_suffix(".png")
    written = [args.output] + ([png] if plot(results, png) else [])
    print("\nwrote " + " and ".join(map(str, written)), file=sys.stderr)


if __name__ == "__main__":
    main()
