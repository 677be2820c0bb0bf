"""Instructions per event, this checkout against another: an A/B that the
machine's noise cannot move.

On a shared VM two timings of the same code differ by 10-30% from one minute to
the next, so "no worse than before" within a few percent cannot be read off a
clock. The number of machine instructions the interpreter executes can: it is
the same on every run. This script runs small workloads under valgrind's
callgrind (``valgrind --tool=callgrind``, which counts instructions) with each
checkout's ``purpose_bus`` first on ``sys.path``, once with ``--short`` and
once with ``--long`` rounds of 1,000 events; the difference divided by the
extra events is the cost of one event, free of start-up and set-up.

Workloads, all with one subscriber on the event's run and a bus whose
``history_size`` is 1,000 (full, so every emit evicts):

- ``emit``: ``bus.emit`` of a pre-made ``MessageDelta`` (the whole emit: checks,
  guard, stamp, history, the offer to the subscriber's buffer), the 1,000
  events of a round then taken with one ``receive_batch`` (a small share);
- ``receive``: the same emits, each event then taken with
  ``await sub.__anext__()`` (the per-event ``async for``: the cancellation
  check and the take); ``receive`` minus ``emit`` is what one ``async for``
  step costs beyond a share of a batch;
- ``make``: ``MessageDelta(run_id=..., text=...)`` (admission).

Instructions are not time (a cache miss costs more than an add), but for the
same workload on the same interpreter a change in one is a change in the other
of about the same sign and size. Python's garbage collector is off in the
workloads, so the count does not depend on when a collection happens.

Usage::

    .venv/bin/python benchmarks/instructions.py --baseline ../base
        [--backend asyncio trio] [--workload emit receive make]

Needs ``valgrind`` on PATH (``apt install valgrind``); without it, says so and
exits 0. Prints a markdown table and writes
``benchmarks/results/instructions.json`` (and ``instructions.png`` when
matplotlib is installed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

WORKLOADS = ("emit", "receive", "make")
#: Events per round.
EVENTS = 1_000


async def _workload(name: str, rounds: int) -> None:
    """Run *rounds* rounds of *name* (in the measured process)."""
    from purpose_bus import EventBus, MessageDelta

    async with (
        EventBus(buffer_size=1 << 40, history_size=EVENTS) as bus,
        bus.subscribe(run_id="r") as sub,
    ):
        events = [MessageDelta(run_id="r", text="x") for _ in range(EVENTS)]
        for _ in range(rounds):
            if name == "make":
                for _ in range(EVENTS):
                    MessageDelta(run_id="r", text="x")
                continue
            for event in events:
                bus.emit(event)
            if name == "receive":
                for _ in range(EVENTS):
                    await sub.__anext__()
            else:  # a batch hands out at most EVENTS_PER_YIELD since a yield
                taken = 0
                while taken < EVENTS:
                    taken += len(await sub.receive_batch(EVENTS))


def _worker(name: str, rounds: int, backend: str, expect: str) -> None:
    import anyio

    import purpose_bus

    where = str(Path(purpose_bus.__file__).resolve().parent.parent)
    if where != expect:
        raise SystemExit(f"imported purpose_bus from {where}, not {expect}")
    gc.disable()
    anyio.run(_workload, name, rounds, backend=backend)


def _instructions(tree: Path, name: str, rounds: int, backend: str) -> int:
    """Instructions of one run of *name* with *rounds* rounds, *tree*'s package."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        # A fixed hash seed: str hashes (so dict and set probing) are the same
        # in every run.
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            str(rounds),
            backend,
            str(tree),
        ]
        done = subprocess.run(
            command, env=env, cwd=tmp, capture_output=True, text=True, check=False
        )
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return int(found.group(1))


def per_event(tree: Path, name: str, backend: str, short: int, long: int) -> float:
    """Instructions per event of *name* with *tree*'s package."""
    few = _instructions(tree, name, short, backend)
    many = _instructions(tree, name, long, backend)
    return (many - few) / ((long - short) * EVENTS)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | backend | baseline | this checkout | this / baseline |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workload']} | {row['backend']} | {row['baseline']:,.0f} "
            f"| {row['now']:,.0f} | {row['ratio']:.3f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    labels = [f"{r['workload']}\n{r['backend']}" for r in rows]
    figure, axes = plt.subplots(figsize=(max(6, len(rows) * 1.2), 4))
    xs = range(len(rows))
    axes.bar(
        [x - 0.2 for x in xs], [r["baseline"] for r in rows], 0.4, label="baseline"
    )
    axes.bar(
        [x + 0.2 for x in xs], [r["now"] for r in rows], 0.4, label="this checkout"
    )
    axes.set_xticks(list(xs), labels)
    axes.set_ylabel("instructions per event")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return True


def _commit(tree: Path) -> str:
    """*tree*'s git commit, short ("" if it is not a git checkout)."""
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline",
        type=Path,
        required=True,
        help="a checkout whose purpose_bus package to compare with",
    )
    parser.add_argument("--backend", nargs="+", default=["asyncio", "trio"])
    parser.add_argument(
        "--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS)
    )
    parser.add_argument("--short", type=int, default=2, help="rounds of the short run")
    parser.add_argument("--long", type=int, default=6, help="rounds of the long run")
    parser.add_argument("--output", type=Path, default=RESULTS / "instructions.json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt install valgrind): nothing measured")
        return
    if args.long <= args.short:
        parser.error("--long must be more than --short")
    baseline = args.baseline.resolve()
    if not (baseline / "purpose_bus" / "__init__.py").is_file():
        parser.error(f"{baseline} holds no purpose_bus package")
    rows = []
    for backend in args.backend:
        for name in args.workload:
            before = per_event(baseline, name, backend, args.short, args.long)
            now = per_event(ROOT, name, backend, args.short, args.long)
            rows.append(
                {
                    "workload": name,
                    "backend": backend,
                    "baseline": before,
                    "now": now,
                    "ratio": now / before,
                }
            )
            print(f"{name} {backend}: {before:,.0f} -> {now:,.0f}", file=sys.stderr)
    text = table(rows)
    print(text)
    commit, base_commit = _commit(ROOT), _commit(baseline)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "executable": sys.executable,
                },
                "commit": commit,
                "baseline": str(baseline),
                "baseline_commit": base_commit,
                "events_per_round": EVENTS,
                "rounds": [args.short, args.long],
                "rows": rows,
                "markdown": text,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}", file=sys.stderr)
    if not args.no_plot:
        plot(rows, args.output.with_suffix(".png"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
