"""Fan-out to 10 subscribers under several Python versions, side by side, from
the JSON files of ``benchmarks/run.py --only fanout --python PATH`` runs.

Usage::

    python benchmarks/compare_pythons.py results/pythons/*.json

Runs of the same interpreter version are pooled: the rate is the median over
all their repetitions, and "x raw" the median of the bus / raw AnyIO ratios
paired by repetition within each run (measured close in time), so drift between
runs on a shared machine cancels out of the ratios, not out of the rates.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOOPS = ("asyncio", "uvloop", "trio")
KEY = "subs_10"


def rates(run: dict[str, Any], system: str) -> dict[int, float]:
    samples = run["samples"].get("fanout", {}).get(system, [])
    return {s["rep"]: s["metrics"][KEY] for s in samples if s["status"] == "ok"}


def cell(runs: list[dict[str, Any]], system: str, floor: str) -> str:
    values: list[float] = []
    ratios: list[float] = []
    for run in runs:
        mine, raw = rates(run, system), rates(run, floor)
        values += mine.values()
        ratios += [mine[rep] / raw[rep] for rep in mine if raw.get(rep)]
    if not values:
        return "n/a"
    return f"{statistics.median(values):,.0f} ({statistics.median(ratios):.2f}x)"


def repetitions(runs: list[dict[str, Any]]) -> int:
    return sum(len(rates(run, "purpose_bus-asyncio")) for run in runs)


def table(by_version: dict[str, list[dict[str, Any]]]) -> str:
    versions = sorted(by_version, key=lambda v: tuple(map(int, v.split("."))))
    lines = [
        "| fan-out, 10 subscribers: deliveries/s (x raw AnyIO) | "
        + " | ".join(f"Python {v}" for v in versions)
        + " |",
        "|---|" + "---:|" * len(versions),
    ]
    for loop in LOOPS:
        for how, suffix in (
            ("`async for event in sub`", ""),
            ("`sub.batches()`", "-batch"),
        ):
            system = f"purpose_bus-{loop}{suffix}"
            row = [cell(by_version[v], system, f"raw-anyio-{loop}") for v in versions]
            lines.append(f"| {loop}, {how} | " + " | ".join(row) + " |")
        floor = f"raw-anyio-{loop}"
        row = [cell(by_version[v], floor, floor) for v in versions]
        lines.append(
            f"| {loop}, raw AnyIO streams (the floor) | " + " | ".join(row) + " |"
        )
    runs = [run for v in versions for run in by_version[v]]
    loads = [run["machine"].get("loadavg_start") for run in runs]
    known = [load[0] for load in loads if load]
    lines += [
        "",
        f"{len(runs)} runs"
        + (
            f", load average {min(known):.1f}-{max(known):.1f} at their start"
            if known
            else ""
        )
        + "; "
        + ", ".join(f"{v}: {repetitions(by_version[v])} repetitions" for v in versions)
        + ".",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="run.py JSON results")
    args = parser.parse_args(argv)
    by_version: dict[str, list[dict[str, Any]]] = {}
    for path in args.files:
        run = json.loads(path.read_text())
        version = ".".join(run["machine"]["python"].split(".")[:2])
        by_version.setdefault(version, []).append(run)
    print(table(by_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
