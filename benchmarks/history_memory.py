"""How many bytes does the bus's history spend per event on bookkeeping?

History keeps the last ``history_size`` accepted events in a ring (a list of
references) with a per-run index (for each run still held: a small object with a
list of references to its events), so that replaying one run costs time
proportional to that run's events. This measures what that costs per event
*beyond the event objects themselves*.

Method, with :mod:`tracemalloc` (which counts the bytes Python allocates; the
allocator's own rounding and arenas are not included):

1. Build every event first, stamped (``seq`` and ``offset`` set, as the bus
   would hand them to history), and keep a reference to each. The bus stamps a
   *copy* of what is emitted, so measuring through ``EventBus.emit`` would count
   those copies; measuring :class:`purpose_bus._history.History` with
   pre-stamped events counts the bookkeeping alone.
2. Take the traced size, create ``History(N)`` and append the events; the growth
   divided by the events held is the bookkeeping per event.
   - ``filled``: N events appended into ``History(N)``: full, nothing evicted
     yet.
   - ``steady (max)``: then up to 3N events appended: the ring wraps twice while
     the per-run index evicts and compacts (in steps, so the size varies); the
     largest of 16 measurements over those two turns. Evicted events stay alive
     here (the benchmark holds them), so only bookkeeping is counted.
3. Scenarios: one run holding everything; many runs of a few events each, run
   after run; runs of one event (the worst case: a run index per event); and
   100 concurrent runs interleaved round-robin.

A second, end-to-end figure goes through a real bus (``EventBus(history_size=N)``,
one run, asyncio): the growth while N events are emitted, minus the size of N
stamped copies (with their own seq and offset ints) measured the same way. It
includes the bus's own per-run state.

Usage::

    .venv/bin/python benchmarks/history_memory.py [--events 100000]

Prints a markdown table and writes ``benchmarks/results/history_memory.json``.
Target: <= 100 bytes of bookkeeping per event.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from purpose_bus import Event, EventBus, Log
from purpose_bus._events import stamped
from purpose_bus._history import History

RESULTS = Path(__file__).parent / "results" / "history_memory.json"
TARGET = 100.0

#: Scenario name -> (description, offset -> run id).
Scenario = tuple[str, Callable[[int], str]]


def _runs_of(size: int) -> Callable[[int], str]:
    return lambda offset: f"run-{(offset - 1) // size}"


def scenarios(events_per_run: Sequence[int]) -> dict[str, Scenario]:
    found: dict[str, Scenario] = {
        "1 run": ("one run holds every event", lambda n: "run"),
    }
    for size in events_per_run:
        found[f"runs of {size}"] = (
            f"a new run every {size} events, run after run",
            _runs_of(size),
        )
    found["100 interleaved"] = (
        "100 concurrent runs, round-robin",
        lambda n: f"run-{n % 100}",
    )
    return found


def build(count: int, run_of: Callable[[int], str]) -> list[Event]:
    """*count* stamped events, offsets 1..count, their run ids from *run_of*
    (each distinct run id a single shared string, as in a real producer)."""
    runs: dict[str, str] = {}
    seqs: dict[str, int] = {}
    events: list[Event] = []
    for offset in range(1, count + 1):
        name = run_of(offset)
        run_id = runs.setdefault(name, name)
        seqs[run_id] = seq = seqs.get(run_id, 0) + 1
        events.append(stamped(Log(run_id=run_id, message="m"), seq, offset))
    return events


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def measure_history(size: int, run_of: Callable[[int], str]) -> dict[str, Any]:
    """Bookkeeping of ``History(size)`` fed 3 * *size* pre-stamped events (kept
    alive): when first full, and the largest seen at 16 points over the last two
    ring turns (the per-run index compacts in steps, so it varies)."""
    events = build(3 * size, run_of)
    checkpoints = {size * (8 + k) // 8 for k in range(17)}  # N, 9N/8 ... 3N
    before = traced()
    history = History(size)
    filled = steady = 0
    runs_filled = runs_steady = 0
    for event in events:
        history.append(event)
        if event.offset in checkpoints:
            grown = traced() - before
            if event.offset == size:
                filled, runs_filled = grown, len(history._by_run)
            elif grown > steady:
                steady, runs_steady = grown, len(history._by_run)
    return {
        "filled_bytes": filled,
        "filled_bytes_per_event": filled / size,
        "runs_held_filled": runs_filled,
        "steady_max_bytes": steady,
        "steady_max_bytes_per_event": steady / size,
        "runs_held_steady": runs_steady,
    }


async def _emit_through_bus(size: int, events: list[Event]) -> int:
    before = traced()
    async with EventBus(history_size=size) as bus:
        for event in events:
            bus.emit(event)
        grown = traced() - before
        assert bus.statistics().history == size
    return grown


def measure_bus(size: int) -> dict[str, Any]:
    """End to end, one run: the bus's growth while recording *size* events,
    minus what *size* stamped copies cost on their own (each with its own seq
    and offset int objects, as the bus makes them)."""
    events: list[Event] = [Log(run_id="run", message="m") for _ in range(size)]
    before = traced()
    seqs, offsets = list(range(1, size + 1)), list(range(1, size + 1))
    copies = [stamped(e, seqs[n], offsets[n]) for n, e in enumerate(events)]
    del seqs, offsets
    copies_bytes = traced() - before - sys.getsizeof(copies)
    del copies
    grown = anyio.run(_emit_through_bus, size, events, backend="asyncio")
    return {
        "bus_growth_bytes": grown,
        "stamped_copies_bytes": copies_bytes,
        "stamped_copy_bytes_per_event": copies_bytes / size,
        "bookkeeping_bytes_per_event": (grown - copies_bytes) / size,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="history_size N")
    parser.add_argument(
        "--runs-of",
        type=int,
        nargs="+",
        default=[1, 2, 3, 5, 10],
        help="events per run in the many-runs scenarios",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size: int = args.events

    tracemalloc.start()
    rows: list[dict[str, Any]] = []
    for name, (description, run_of) in scenarios(args.runs_of).items():
        row: dict[str, Any] = {"scenario": name, "description": description}
        row.update(measure_history(size, run_of))
        rows.append(row)
    bus = measure_bus(size)
    tracemalloc.stop()

    print(f"History bookkeeping per event, N = {size:,} (target <= {TARGET:g} B)\n")
    print(
        "| scenario | filled B/event | steady (max) B/event | runs held | <= target |"
    )
    print("|---|---:|---:|---:|:---:|")
    for row in rows:
        worst = max(row["filled_bytes_per_event"], row["steady_max_bytes_per_event"])
        print(
            f"| {row['scenario']} | {row['filled_bytes_per_event']:.1f} "
            f"| {row['steady_max_bytes_per_event']:.1f} "
            f"| {row['runs_held_steady']:,} "
            f"| {'yes' if worst <= TARGET else 'NO'} |"
        )
    print(
        f"\nThrough EventBus (1 run, asyncio): "
        f"{bus['bookkeeping_bytes_per_event']:.1f} B/event beyond the stamped "
        f"copies ({bus['stamped_copy_bytes_per_event']:.1f} B each)."
    )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "history_memory",
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "events": size,
        "target_bytes_per_event": TARGET,
        "history": rows,
        "bus_one_run": bus,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nWrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
