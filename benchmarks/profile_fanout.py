"""Where does a fan-out delivery's time go? Profile one system's fan-out.

Runs rounds of the fan-out scenario (``--subs`` subscribers, ``--events`` per
round, the publisher yielding every 100 emits) until ``--seconds`` of timed
fan-out have passed, and samples it with py-spy (``pip install py-spy`` into the
venv; ``--cprofile`` uses cProfile instead, which inflates small functions).
Setup (building events, opening the bus, subscribing, closing) is left out of
the attribution. Prints, in nanoseconds per delivery:

- the inclusive time of the functions on purpose_bus's hot path (publisher side
  under ``EventBus.emit``, subscriber side under ``Subscription.__anext__``),
  the harness and the event loop;
- the functions with the most self time.

Usage::

    python benchmarks/profile_fanout.py                    # purpose_bus, asyncio
    python benchmarks/profile_fanout.py --system purpose_bus-trio --subs 100
    python benchmarks/profile_fanout.py --system raw-anyio-asyncio
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _scenarios import TOPIC, Finish, counter, publish  # noqa: E402
from systems import SYSTEMS, load  # noqa: E402
from systems._base import Adapter  # noqa: E402

#: Top-level categories, exclusive (the first that a sample's stack matches):
#: (label, function name, file fragment).
CATEGORIES = [
    ("publisher side: EventBus.emit", "emit", "purpose_bus/_bus.py"),
    ("subscriber side: Subscription.__anext__", "__anext__", "_subscription.py"),
    (
        "subscriber side: Subscription.receive_batch",
        "receive_batch",
        "_subscription.py",
    ),
    ("harness: publisher loop (and its yields)", "publish", "_scenarios.py"),
    ("subscriber loop: `async for` in the caller, handler", "_consume", "systems/"),
]
OTHER = "event loop: scheduling and task switches"
#: Rows inside a category (inclusive): (category, label, function, fragment).
DETAILS = [
    (0, "guards (reject_hidden_reasoning)", "guard", "purpose_bus/_guards.py"),
    (0, "stamp a frozen copy", "stamp", "<string>"),
    (0, "stamp a frozen copy", "stamped", "purpose_bus/_events.py"),
    (0, "History.append", "append", "purpose_bus/_history.py"),
    (0, "OverflowSender.offer (x subscribers)", "offer", "purpose_bus/_sender.py"),
    (0, "offer_each (x subscribers)", "offer_each", "purpose_bus/_sender.py"),
    (0, "  anyio send_nowait", "send_nowait", "anyio/streams/memory.py"),
    (0, "  wake a waiting subscriber (_wake)", "_wake", "purpose_bus/_sender.py"),
    (1, "anyio checkpoint_if_cancelled", "checkpoint_if_cancelled", "anyio/"),
    (1, "anyio checkpoint (a yield every 64)", "checkpoint", "anyio/lowlevel"),
    (1, "OverflowSender.take", "take", "purpose_bus/_sender.py"),
    (1, "  anyio receive_nowait", "receive_nowait", "anyio/streams/memory.py"),
    (1, "OverflowSender.wait (set up a wait)", "wait", "purpose_bus/_sender.py"),
    (2, "OverflowSender.take_batch", "take_batch", "purpose_bus/_sender.py"),
    (2, "  anyio receive_nowait", "receive_nowait", "anyio/streams/memory.py"),
    (4, "handler (count)", "handler", "_scenarios.py"),
]


#: Frames of setup and teardown: samples under them are left out.
SETUP = {
    "make_events",
    "purpose_events",
    "open",
    "subscribe",
    "register",
    "__aenter__",
    "__aexit__",
    "aclose",
    "settle",
    "_round_setup",
}


# -- the measurement (the profiled process) -------------------------------------


async def measure(adapter: Adapter, subs: int, events: int, seconds: float) -> dict:
    timed = 0.0
    rounds = 0
    while timed < seconds:
        timed += await one_round(adapter, subs, events)
        rounds += 1
    return {"timed_seconds": timed, "deliveries": rounds * subs * events}


async def one_round(adapter: Adapter, subs: int, count: int) -> float:
    events = adapter.make_events(TOPIC, count)
    finish = Finish(subs)
    async with adapter.open(buffer=None), anyio.create_task_group() as tg:
        await _round_setup(adapter, tg, subs, count, finish)
        emit = adapter.emitter(TOPIC)
        start = time.perf_counter()
        await publish(adapter, emit, events)
        await finish.done.wait()
        seconds = max(finish.times) - start
        tg.cancel_scope.cancel()
    return seconds


async def _round_setup(
    adapter: Adapter, tg: Any, subs: int, count: int, finish: Finish
) -> None:
    for _ in range(subs):
        await adapter.subscribe(tg, TOPIC, counter(count, finish))


def inner(args: argparse.Namespace) -> int:
    system = SYSTEMS[args.system]
    adapter = load(system)
    profiler = cProfile.Profile() if args.cprofile_out else None

    async def main() -> dict:
        await one_round(adapter, args.subs, min(args.events, 1000))  # warm
        if profiler is not None:
            profiler.enable()
        try:
            return await measure(adapter, args.subs, args.events, args.seconds)
        finally:
            if profiler is not None:
                profiler.disable()

    result = anyio.run(main, backend=system.backend, backend_options=system.options)
    if profiler is not None:
        profiler.dump_stats(args.cprofile_out)
    print(json.dumps(result), flush=True)
    return 0


# -- attribution (the outer process) ------------------------------------------------


def parse_frame(frame: str) -> tuple[str, str]:
    """``"Class.func (path/file.py:12)"`` -> ``("func", "path/file.py")``."""
    name, _, where = frame.rpartition(" (")
    return name.rsplit(".", 1)[-1], where.rsplit(":", 1)[0]


def attribute(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Samples per category and detail row, self samples per function, and the
    number of samples counted (in the event loop, outside setup)."""
    rows: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    counted = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        frames = [parse_frame(f) for f in stack_text.split(";")]
        if not any(n == "run" and "anyio/" in f for n, f in frames):
            continue  # not in the event loop (imports, start-up)
        if any(name in SETUP for name, _ in frames):
            continue
        count = int(count_text)
        counted += count
        self_time["{} ({})".format(*frames[-1])] += count
        category = next(
            (
                index
                for index, (_, function, fragment) in enumerate(CATEGORIES)
                if any(n == function and fragment in f for n, f in frames)
            ),
            None,
        )
        if category is None:
            rows[OTHER] += count
            continue
        rows[CATEGORIES[category][0]] += count
        seen = set()
        for owner, label, function, fragment in DETAILS:
            if owner != category or label in seen:
                continue
            if any(n == function and fragment in f for n, f in frames):
                rows[label] += count
                seen.add(label)
    return rows, self_time, counted


def print_tables(
    rows: Counter[str],
    self_time: Counter[str],
    counted: int,
    result: dict,
    title: str,
) -> None:
    per_delivery = result["timed_seconds"] / result["deliveries"] * 1e9
    scale = per_delivery / max(counted, 1)
    print(f"## {title}\n")
    print(
        f"{result['deliveries']:,} deliveries in {result['timed_seconds']:.2f} s"
        f" timed: {per_delivery:,.0f} ns per delivery"
        f" ({1e9 / per_delivery:,.0f} deliveries/s while profiled);"
        f" {counted:,} samples attributed.\n"
    )
    print("| where (categories add up to 100%) | ns/delivery | share |")
    print("|---|---:|---:|")
    indent = "&nbsp;" * 4

    def row(label: str, depth: int) -> None:
        if rows[label]:
            name = indent * depth + (f"**{label}**" if depth == 0 else label.strip())
            print(
                f"| {name} | {rows[label] * scale:,.0f} | {rows[label] / counted:.0%} |"
            )

    for index, (label, _, _) in enumerate(CATEGORIES):
        row(label, 0)
        done = set()
        for owner, detail, _, _ in DETAILS:
            if owner == index and detail not in done:
                done.add(detail)
                row(detail, 2 if detail.startswith("  ") else 1)
    row(OTHER, 0)
    print("\n| self time (top 15) | ns/delivery | share |\n|---|---:|---:|")
    for name, samples in self_time.most_common(15):
        print(f"| `{name}` | {samples * scale:,.0f} | {samples / counted:.0%} |")


def outer(args: argparse.Namespace) -> int:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--inner",
        "--system",
        args.system,
        "--subs",
        str(args.subs),
        "--events",
        str(args.events),
        "--seconds",
        str(args.seconds),
    ]
    from run import git_version, source_digest

    title = (
        f"{args.system}: fan-out to {args.subs} subscribers, {args.events:,} events"
        f" a round; purpose_bus {git_version()}, sources {source_digest()}"
    )
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}")
    py_spy = py_spy or shutil.which("py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cprofile or py_spy is None:
            if py_spy is None and not args.cprofile:
                print("py-spy not found: using cProfile", file=sys.stderr)
            stats_file = Path(tmp) / "fanout.prof"
            done = subprocess.run(
                [*command, "--cprofile-out", str(stats_file)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            stats = pstats.Stats(str(stats_file))
            print(f"## {title} (cProfile: its overhead inflates small calls)\n")
            per = 1e9 / result["deliveries"]
            print("| function | self ns/delivery | incl. ns/delivery |")
            print("|---|---:|---:|")
            rows = sorted(
                stats.stats.items(),  # type: ignore[attr-defined]
                key=lambda item: item[1][2],
                reverse=True,
            )
            for (file, line, name), (_, _, tt, ct, _) in rows[:25]:
                where = "/".join(Path(file).parts[-2:])
                print(
                    f"| `{name} ({where}:{line})` | {tt * per:,.0f} | {ct * per:,.0f} |"
                )
            return 0
        raw_file = Path(tmp) / "fanout.txt"
        done = subprocess.run(
            [
                py_spy,
                "record",
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                "--nonblocking",
                "--output",
                str(raw_file),
                "--",
                *command,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(
            [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
        )
        raw = raw_file.read_text()
        if args.save_raw:
            args.save_raw.write_text(raw)
    rows, self_time, counted = attribute(raw)
    print_tables(rows, self_time, counted, result, title + " (py-spy)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="purpose_bus-asyncio", choices=SYSTEMS)
    parser.add_argument("--subs", type=int, default=10)
    parser.add_argument("--events", type=int, default=20_000, help="per round")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed, in all")
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples/s")
    parser.add_argument("--cprofile", action="store_true", help="use cProfile")
    parser.add_argument("--save-raw", type=Path, help="keep py-spy's raw stacks")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cprofile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
