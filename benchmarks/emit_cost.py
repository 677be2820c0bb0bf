"""What does an emit cost, and how much of that does the contract require?

The latency target of the benchmarks issue is a ping-pong p50 (one event in
flight, emit -> the subscriber has it) within 1.2x a bare AnyIO memory stream's
``send_nowait``. That leaves an emit ``0.2 x raw p50`` more than the bare stream
spends. This script measures, in one process and on each backend, that budget
beside what an emit must do by DESIGN.md before any subscriber is involved:

- ``stamp``: make the accepted event, a new frozen instance with ``seq`` and
  ``offset`` set (the bus's generated slot copy, several times cheaper than
  ``attrs.evolve``);
- ``guard``: the default guard (``reject_hidden_reasoning``) on the event;
- ``history``: record it in a full ``History(10_000)`` ring (evicting the oldest).

and the whole ``bus.emit`` to one subscriber that is not waiting, and a bare
``send_nowait``. Each figure is the fastest of ``--repeat`` loops over
``--events`` pre-built events (the machine's noise only ever slows a loop
down), with the garbage collector off, net of the same loop calling a no-op
function: so the sum of the parts is a lower bound of what an emit must cost.
The ping-pong p50s (medians of 5 runs, interleaved) come from the runner's own
scenario (``benchmarks/_scenarios.py``, ``pingpong``) with the runner's adapters
for purpose_bus and for the raw AnyIO stream.

Admission (issue #14) moved checking and freezing an event's fields to when
it is made, so ``--baseline DIR`` compares *making and emitting* an event with
another checkout of purpose_bus (``DIR`` holds its ``purpose_bus`` package, say
a ``git worktree`` of the commit before): a ``MessageDelta`` and a ``ToolCall``
whose ``arguments`` hold 10 keys (strings, numbers, a nested mapping of 3 keys,
a list), made and emitted to one subscriber, fastest of ``--repeat`` loops of
``--events`` with the garbage collector off. The two run in subprocesses,
interleaved ``--pairs`` times, and the table shows the medians and the
difference.

Usage::

    .venv/bin/python benchmarks/emit_cost.py [--repeat 15] [--events 10000]
        [--rounds 3000] [--backend asyncio trio]
    .venv/bin/python benchmarks/emit_cost.py --baseline ../base [--pairs 5]

Prints a markdown table and writes ``benchmarks/results/emit_cost.json`` and
``benchmarks/results/emit_cost.png`` (with ``--baseline``:
``benchmarks/results/admission_cost.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _scenarios import TOPIC, pingpong  # noqa: E402
from systems import SYSTEMS, load  # noqa: E402
from systems._base import purpose_events  # noqa: E402

from purpose_bus import Event, EventBus, reject_hidden_reasoning  # noqa: E402
from purpose_bus._events import stamper  # noqa: E402
from purpose_bus._history import History  # noqa: E402

RESULTS = HERE / "results"
#: The target: ping-pong p50 <= TARGET x the raw floor.
TARGET = 1.2
#: The contract's parts, in the order they are shown.
PARTS = ("stamp", "guard", "history")


def _per_event(loop: Callable[[], None], count: int) -> float:
    """Nanoseconds per event of *loop*, the garbage collector off (its pauses
    are real costs, left out here so that the floor stays a lower bound)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        loop()
        return (time.perf_counter() - start) / count * 1e9
    finally:
        gc.enable()


async def _loops(count: int) -> dict[str, float]:
    """One loop of each kind over *count* events: nanoseconds per event, gross."""
    events = purpose_events(TOPIC, count)
    stamp = stamper(type(events[0]))
    stamped = [stamp(e, i, i) for i, e in enumerate(events, 1)]
    guard = reject_hidden_reasoning
    history = History(10_000)
    for offset in range(1, 10_001):  # full: every append below evicts one
        history.append(stamp(events[0], offset, offset))
    restamped = [stamp(e, i, i) for i, e in enumerate(events, 10_001)]
    send, receive = anyio.create_memory_object_stream[Event](count)

    def noop(event: Event) -> None:
        return None

    def loop_of(
        function: Callable[[Any], object], items: list[Any]
    ) -> Callable[[], None]:
        def loop() -> None:
            for item in items:
                function(item)

        return loop

    def three_loop(
        function: Callable[[Event, int, int], object],
    ) -> Callable[[], None]:
        def loop() -> None:
            for offset, event in enumerate(events, 1):
                function(event, offset, offset)

        return loop

    def noop3(event: Event, seq: int, offset: int) -> None:
        return None

    figures = {
        "noop": _per_event(loop_of(noop, events), count),
        "noop3": _per_event(three_loop(noop3), count),
        "stamp": _per_event(three_loop(stamp), count),
        "guard": _per_event(loop_of(guard, stamped), count),
        "history": _per_event(loop_of(history.append, restamped), count),
        "send_nowait": _per_event(loop_of(send.send_nowait, events), count),
    }
    send.close()
    receive.close()
    async with EventBus(buffer_size=count) as bus, bus.subscribe(run_id=TOPIC):
        figures["emit"] = _per_event(loop_of(bus.emit, events), count)
    return figures


def measure(backend: str, repeat: int, count: int, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        figures = anyio.run(_loops, count, backend=backend)
        for name, value in figures.items():
            samples.setdefault(name, []).append(value)
    best = {name: min(values) for name, values in samples.items()}
    net = {
        name: max(0.0, best[name] - best["noop3" if name == "stamp" else "noop"])
        for name in best
        if not name.startswith("noop")
    }
    ping: dict[str, list[float]] = {"raw": [], "bus": []}
    for _ in range(5):
        for key, system in (
            ("raw", f"raw-anyio-{backend}"),
            ("bus", f"purpose_bus-{backend}"),
        ):
            adapter = load(SYSTEMS[system])
            anyio.run(pingpong, adapter, 50, backend=backend)  # warm
            times = sorted(anyio.run(pingpong, adapter, rounds, backend=backend))
            ping[key].append(times[len(times) // 2] * 1e9)
    raw_p50 = statistics.median(ping["raw"])
    bus_p50 = statistics.median(ping["bus"])
    floor = sum(net[part] for part in PARTS)
    budget = (TARGET - 1) * raw_p50
    return {
        "backend": backend,
        "ns_per_event_net": net,
        "ns_per_event_gross": best,
        "pingpong_p50_ns": {"raw": raw_p50, "bus": bus_p50},
        "pingpong_ratio": bus_p50 / raw_p50,
        "budget_ns": budget,
        "contract_floor_ns": floor,
        "floor_over_budget": floor / budget,
        "best_possible_ratio": (raw_p50 + floor) / raw_p50,
        "samples": samples,
        "pingpong_samples_ns": ping,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| ns per event (net of a no-op call) | "
        + " | ".join(r["backend"] for r in results)
        + " |",
        "|---|" + "---:|" * len(results),
    ]

    def row(label: str, values: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    def ns(value: float) -> str:
        return f"{value:,.0f}"

    row(
        "bare `send_nowait`",
        [ns(r["ns_per_event_net"]["send_nowait"]) for r in results],
    )
    for part in PARTS:
        row(f"contract: {part}", [ns(r["ns_per_event_net"][part]) for r in results])
    row(
        "**contract floor** (stamp + guard + history)",
        [f"**{ns(r['contract_floor_ns'])}**" for r in results],
    )
    row(
        "whole `bus.emit`, one subscriber",
        [ns(r["ns_per_event_net"]["emit"]) for r in results],
    )
    row(
        "ping-pong p50: raw AnyIO / purpose_bus",
        [
            f"{ns(r['pingpong_p50_ns']['raw'])} / {ns(r['pingpong_p50_ns']['bus'])}"
            for r in results
        ],
    )
    row(
        "ping-pong ratio (target <= 1.2x)",
        [f"{r['pingpong_ratio']:.2f}x" for r in results],
    )
    row(
        f"budget: ({TARGET} - 1) x raw p50",
        [ns(r["budget_ns"]) for r in results],
    )
    row("contract floor / budget", [f"{r['floor_over_budget']:.1f}x" for r in results])
    row(
        "best ratio the floor allows: (raw p50 + floor) / raw p50",
        [f"{r['best_possible_ratio']:.2f}x" for r in results],
    )
    return "\n".join(rows)


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 1.2 + 1.3 * len(results)))
    ticks: list[float] = []
    labels: list[str] = []
    for i, r in enumerate(results):
        raw = r["pingpong_p50_ns"]["raw"] / 1000
        bus = r["pingpong_p50_ns"]["bus"] / 1000
        floor = r["contract_floor_ns"] / 1000
        y = i * 3.0
        first = i == 0
        ax.barh(y + 1, raw, color="#999999", label="raw AnyIO p50" if first else None)
        ax.barh(
            y + 1,
            floor,
            left=raw,
            color="#d95f02",
            label="+ the contract's floor (stamp, guard, history)" if first else None,
        )
        ax.barh(y, bus, color="#1b9e77", label="purpose_bus p50" if first else None)
        ax.vlines(raw * TARGET, y - 0.5, y + 1.5, color="black", lw=0.8, ls=":")
        ax.text(raw * TARGET, y + 1.55, f" target: {TARGET}x raw", fontsize=7)
        ticks += [y, y + 1]
        labels += [f"{r['backend']}: purpose_bus", f"{r['backend']}: raw + floor"]
    ax.set_yticks(ticks, labels)
    ax.set_ylim(-0.7, 3.0 * len(results) - 0.3)
    ax.set_xlabel("ping-pong p50, microseconds (one event in flight)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _arguments() -> dict[str, Any]:
    """The 10-key ``arguments`` of the ToolCall measured (made anew per call, as
    a producer would)."""
    return {
        "query": "event bus",
        "limit": 10,
        "offset": 0,
        "lang": "en",
        "safe": True,
        "score": 0.5,
        "filters": {"year": 2026, "kind": "paper", "open": True},
        "tags": ["anyio", "trio", "asyncio"],
        "sort": "relevance",
        "cursor": None,
    }


async def _make_and_emit(count: int) -> dict[str, float]:
    """Nanoseconds per event of making and emitting each kind, to one
    subscriber that takes them between loops (gross: the loop included)."""
    from purpose_bus import MessageDelta, ToolCall

    makers: dict[str, Callable[[], Event]] = {
        "MessageDelta": lambda: MessageDelta(run_id="r", text="hello"),
        "ToolCall(10 keys)": lambda: ToolCall(
            run_id="r", name="search", arguments=_arguments()
        ),
    }
    figures: dict[str, float] = {}
    async with (
        EventBus(history_size=count) as bus,
        bus.subscribe(buffer_size=count + 1) as sub,
    ):
        for name, make in makers.items():
            emit = bus.emit

            def loop() -> None:
                for _ in range(count):
                    emit(make())  # noqa: B023

            figures[name] = _per_event(loop, count)
            while True:
                try:
                    sub.receive_nowait()
                except anyio.WouldBlock:
                    break
    return figures


def _make_and_emit_best(backend: str, repeat: int, count: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, value in anyio.run(_make_and_emit, count, backend=backend).items():
            samples.setdefault(name, []).append(value)
    return {name: min(values) for name, values in samples.items()}


def _run_worker(path: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """This script's ``--worker`` in a subprocess, importing purpose_bus from
    *path* (``None``: this checkout)."""
    import os
    import subprocess

    env = dict(os.environ)
    root = path if path is not None else HERE.parent
    env["PYTHONPATH"] = str(root)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    command += ["--repeat", str(args.repeat), "--events", str(args.events)]
    command += ["--backend", *args.backend]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def compare(args: argparse.Namespace) -> None:
    """Make-and-emit here and in ``args.baseline``, interleaved, then a table."""
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    for pair in range(args.pairs):
        print(f"pair {pair + 1}/{args.pairs} ...", file=sys.stderr, flush=True)
        runs["baseline"].append(_run_worker(args.baseline, args))
        runs["this"].append(_run_worker(None, args))
    rows = ["| make + emit, ns per event | backend | baseline | this | difference |"]
    rows.append("|---|---|---:|---:|---:|")
    medians: dict[str, Any] = {}
    for backend in args.backend:
        for name in runs["this"][0][backend]:
            base = statistics.median(r[backend][name] for r in runs["baseline"])
            this = statistics.median(r[backend][name] for r in runs["this"])
            medians[f"{backend} {name}"] = {"baseline": base, "this": this}
            rows.append(
                f"| {name} | {backend} | {base:,.0f} | {this:,.0f} | "
                f"{this - base:+,.0f} |"
            )
    print("\n".join(rows))
    output = args.output.with_name("admission_cost.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "baseline": str(args.baseline),
        "events": args.events,
        "repeat": args.repeat,
        "pairs": args.pairs,
        "medians_ns": medians,
        "runs": runs,
    }
    output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {output}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="compare make+emit with it")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3_000)
    parser.add_argument("--backend", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--output", type=Path, default=RESULTS / "emit_cost.json")
    args = parser.parse_args(argv)
    if args.worker:
        figures = {
            b: _make_and_emit_best(b, args.repeat, args.events) for b in args.backend
        }
        print(json.dumps(figures))
        return
    if args.baseline is not None:
        compare(args)
        return
    results = []
    for backend in args.backend:
        print(f"measuring {backend} ...", file=sys.stderr, flush=True)
        results.append(measure(backend, args.repeat, args.events, args.rounds))
    print(table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "events": args.events,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "results": results,
    }
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    png = args.output.with_suffix(".png")
    wrote = plot(results, png)
    print(f"\nwrote {args.output}" + (f" and {png}" if wrote else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
