"""Benchmark purpose_bus against the raw AnyIO stream floor and its peers.

Usage::

    python benchmarks/run.py [--quick] [--no-plot] [--only SCENARIO[,...]]
                             [--systems NAME[,...]] [--reps N] [--jobs N]
                             [--python PATH] [--output FILE]

Every (system, scenario, repetition) runs in a fresh process
(``benchmarks/_worker.py``, one JSON line each). Repetitions are interleaved:
repetition 1 of every scenario and system, then repetition 2, and so on, with the
order of systems rotated each time, so that drift on a shared machine hits all
alike; medians (and ratios of medians paired by repetition) are reported.

Prints markdown tables on stdout (progress on stderr) and writes
``benchmarks/results/latest.json`` (machine, versions, every sample, medians,
key ratios) and ``benchmarks/results/fanout.png``. A ``--quick`` run (tiny sizes,
one repetition, for CI) writes ``results/quick.json`` instead, and a run of a
subset (``--only``/``--systems``) ``results/partial.json``, so neither replaces
the full results; ``--output`` chooses the file. ``--python PATH`` runs the
workers under another interpreter (with purpose_bus installed in it); its
results go to ``latest-3.13.json`` and the like.

Systems the interpreter cannot run (a peer library, trio or uvloop not
installed, the old bus not beside the repository) are skipped with one line
each, and without matplotlib the plot is skipped with a note: the run still
writes its JSON and tables.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _scenarios import sizes  # noqa: E402
from systems import SYSTEMS  # noqa: E402

RESULTS = HERE / "results"
WORKER = HERE / "_worker.py"
PROBE = HERE / "_probe.py"
#: How to install what a skipped system needs.
INSTALL_HINT = "pip install -e '.[bench]'"

#: Scenario -> repetitions in a full run.
SCENARIOS: dict[str, int] = {
    "fanout": 5,
    "latency": 5,
    "idle": 3,
    "slow": 2,
    "threads": 3,
    "memory": 1,
    "history-memory": 1,
}
#: Scenarios run for these systems only.
ONLY_FOR = {"history-memory": {"purpose_bus-asyncio"}}
#: The library peers (not raw floors, not purpose_bus).
PEERS = (
    "seed",
    "blinker-sync",
    "blinker-async",
    "aiopubsub",
    "pyee",
    "broadcaster",
    "bubus",
)
PACKAGES = (
    "purpose_bus",
    "anyio",
    "attrs",
    "trio",
    "uvloop",
    "blinker",
    "aiopubsub",
    "pyee",
    "broadcaster",
    "bubus",
    "matplotlib",
)

Record = dict[str, Any]


# -- running -----------------------------------------------------------------------


def probe(python: str) -> Record:
    """What *python* can run: its version, its packages, the systems it cannot
    run and why (``benchmarks/_probe.py``)."""
    done = subprocess.run(
        [python, str(PROBE)], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise SystemExit(f"error: {python} cannot run the benchmarks: {tail[0]}")
    record: Record = json.loads(lines[-1])
    return record


def run_worker(
    system: str, scenario: str, rep: int, quick: bool, python: str = sys.executable
) -> Record:
    command = [
        python,
        str(WORKER),
        "--system",
        system,
        "--scenario",
        scenario,
        "--rep",
        str(rep),
    ]
    if quick:
        command.append("--quick")
    timeout = sizes(quick).timeout + 30
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"worker timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"status": "error", "reason": tail[0][:300]}
    record: Record = json.loads(lines[-1])
    if record.get("status") == "error" and done.stderr:
        record["stderr"] = done.stderr[-2000:]
    return record


def plan(
    scenarios: Sequence[str], systems: Sequence[str], reps: dict[str, int]
) -> list[tuple[int, str, str]]:
    """(rep, scenario, system), repetition by repetition, systems rotated."""
    jobs = []
    for rep in range(1, max(reps.values(), default=0) + 1):
        shift = (rep - 1) % max(1, len(systems))
        order = [*systems[shift:], *systems[:shift]]
        for scenario in scenarios:
            for name in order:
                if rep > reps[scenario] or rep > (SYSTEMS[name].max_reps or rep):
                    continue
                if name not in ONLY_FOR.get(scenario, {name}):
                    continue
                jobs.append((rep, scenario, name))
    return jobs


def execute(
    jobs: list[tuple[int, str, str]],
    quick: bool,
    parallel: int,
    python: str = sys.executable,
) -> dict[str, dict[str, list[Record]]]:
    """Run *jobs* with *python*; skip later repetitions of what was n/a; show
    progress on stderr (runs done / all, seconds since the start)."""
    records: dict[str, dict[str, list[Record]]] = {}
    not_applicable: set[tuple[str, str]] = set()
    started = time.perf_counter()
    width = len(str(len(jobs)))
    lock = threading.Lock()
    done = 0

    def one(job: tuple[int, str, str]) -> None:
        nonlocal done
        rep, scenario, name = job
        if (scenario, name) in not_applicable:
            record: Record = {"status": "n/a", "reason": "n/a in repetition 1"}
        else:
            record = run_worker(name, scenario, rep, quick, python)
            record["rep"] = rep
            records.setdefault(scenario, {}).setdefault(name, []).append(record)
        if record["status"] == "n/a":
            not_applicable.add((scenario, name))
        with lock:
            done += 1
            elapsed = time.perf_counter() - started
            print(
                f"[{done:>{width}}/{len(jobs)} {elapsed:6.1f}s] rep {rep} "
                f"{scenario:<14} {name:<20} {summary(scenario, record)}",
                file=sys.stderr,
                flush=True,
            )

    if parallel <= 1:
        for job in jobs:
            one(job)
    else:
        with ThreadPoolExecutor(parallel) as pool:
            for future in [pool.submit(one, job) for job in jobs]:
                future.result()
    for by_system in records.values():
        for samples in by_system.values():
            samples.sort(key=lambda r: r["rep"])
    return records


def summary(scenario: str, record: Record) -> str:
    """A short progress note: the status and one headline metric."""
    if record["status"] != "ok":
        return f"{record['status']}: {record.get('reason', '')}"
    m = record["metrics"]
    headline = {
        "fanout": lambda: f"10 subs {fmt_rate(m['subs_10'])}/s",
        "latency": lambda: f"p50 {m['pingpong_p50_us']:.1f} us",
        "idle": lambda: f"ratio {m['ratio']:.2f}",
        "slow": lambda: (
            f"fast lost {m['every1_fast_lost']}/{m['every100_fast_lost']}, "
            f"publisher x{m['every1_publisher_ratio']:.2f}"
        ),
        "threads": lambda: f"4 threads {fmt_rate(m['threads_4'])}/s",
        "memory": lambda: f"{m['subscriber_bytes']:,.0f} B/subscriber",
        "history-memory": lambda: f"{m['bus_bytes_per_event']} B/event",
    }[scenario]
    return f"ok {record['seconds']:.1f}s  {headline()}"


# -- aggregating -------------------------------------------------------------------


def aggregate(samples: list[Record]) -> Record:
    """Medians of the numbers over the ok samples; for losses the worst; for
    flags ``*_terminal`` whether every repetition had it, for ``*capped``
    whether any did."""
    ok = [s["metrics"] for s in samples if s["status"] == "ok"]
    if not ok:
        first = samples[0]
        return {"status": first["status"], "reason": first.get("reason", "")}
    medians: dict[str, Any] = {}
    for key in ok[0]:
        values = [m[key] for m in ok if m.get(key) is not None]
        if not values:
            medians[key] = None
        elif isinstance(values[0], bool):
            medians[key] = any(values) if key.endswith("capped") else all(values)
        elif isinstance(values[0], int | float):
            medians[key] = (
                max(values) if key.endswith("_lost") else statistics.median(values)
            )
        else:
            medians[key] = values[0]
    return {"status": "ok", "reps": len(ok), "median": medians}


def metric(results: Record, scenario: str, system: str, key: str) -> Any:
    entry = results.get(scenario, {}).get(system, {})
    return entry.get("median", {}).get(key) if entry.get("status") == "ok" else None


def paired_ratio(
    records: dict[str, dict[str, list[Record]]],
    scenario: str,
    a: str,
    b: str,
    key: str,
    key_b: str | None = None,
) -> float | None:
    """The median over repetitions of a's metric / b's (same repetition, so
    measured close in time); the ratio of medians when they cannot be paired."""
    by_rep: dict[int, dict[str, float]] = {}
    for name, k in ((a, key), (b, key_b or key)):
        for r in records.get(scenario, {}).get(name, []):
            if r["status"] == "ok" and r["metrics"].get(k) is not None:
                by_rep.setdefault(r["rep"], {})[name] = r["metrics"][k]
    ratios = [v[a] / v[b] for v in by_rep.values() if a in v and b in v and v[b]]
    if ratios:
        return statistics.median(ratios)
    return None


# -- key ratios --------------------------------------------------------------------


def key_ratios(
    results: Record, records: dict[str, dict[str, list[Record]]], quick: bool
) -> list[Record]:
    """The figures the benchmarks issue sets targets for (asyncio unless said)."""
    rows: list[Record] = []
    z = sizes(quick)

    def add(
        check: str, value: Any, target: str, met: bool | None, unit: str = "x"
    ) -> None:
        rows.append(
            {"check": check, "value": value, "unit": unit, "target": target, "met": met}
        )

    def at_least(value: float | None, floor: float) -> bool | None:
        return None if value is None else value >= floor

    pb = "purpose_bus-asyncio"
    peers = {
        p: v
        for p in PEERS
        if (v := metric(results, "fanout", p, "subs_10")) is not None
    }
    # Per event (``async for event in sub``) and per batch (``sub.batches()``).
    variants = (("per event", ""), ("batch", "-batch"))
    if peers:
        fastest = max(peers, key=lambda p: peers[p])
        for how, suffix in variants:
            value = paired_ratio(records, "fanout", pb + suffix, fastest, "subs_10")
            add(
                f"fan-out 10 subs: purpose_bus ({how}) / fastest peer ({fastest})",
                value,
                ">= 1.0x",
                at_least(value, 1.0),
            )
    for other in ("asyncio-queue", "raw-anyio-asyncio"):
        for how, suffix in variants:
            value = paired_ratio(records, "fanout", pb + suffix, other, "subs_10")
            add(f"fan-out 10 subs: purpose_bus ({how}) / {other}", value, "", None)
    for peer in ("blinker-sync", "asyncio-queue", "seed"):
        value = paired_ratio(records, "fanout", peer, "raw-anyio-asyncio", "subs_10")
        add(f"fan-out 10 subs: {peer} / raw-anyio-asyncio", value, "(reference)", None)
    for backend, floor in (("trio", 2.0), ("uvloop", None)):
        for how, suffix in variants:
            value = paired_ratio(
                records,
                "fanout",
                f"purpose_bus-{backend}{suffix}",
                f"raw-anyio-{backend}",
                "subs_10",
            )
            add(
                f"fan-out 10 subs, {backend}: purpose_bus ({how})"
                f" / raw-anyio-{backend}",
                value,
                f">= {floor:.1f}x" if floor else "",
                at_least(value, floor) if floor else None,
            )
    for name in ("purpose_bus-asyncio", "purpose_bus-uvloop", "purpose_bus-trio"):
        value = metric(results, "idle", name, "ratio")
        add(
            f"{z.idle_subs:,} idle subscribers: {name} rate / its single-sub rate",
            value,
            ">= 0.9x",
            at_least(value, 0.9),
        )
    for name in ("purpose_bus-asyncio", "purpose_bus-trio"):
        floor_name = SYSTEMS[name].floor or ""
        value = paired_ratio(records, "latency", name, floor_name, "pingpong_p50_us")
        add(
            f"latency p50 ping-pong: {name} / {floor_name}",
            value,
            "<= 1.2x",
            None if value is None else value <= 1.2,
        )
    for every in (1, 100):
        m = f"every{every}_"
        lost = metric(results, "slow", pb, m + "fast_lost")
        terminal = metric(results, "slow", pb, m + "slow_terminal")
        ratio = metric(results, "slow", pb, m + "publisher_ratio")
        add(
            f"slow consumer (publisher yields every {every}): fast subscriber lost",
            lost,
            "0",
            None if lost is None else lost == 0,
            "count",
        )
        add(
            f"slow consumer (every {every}): slow subscriber got RunFinished",
            terminal,
            "yes",
            terminal,
            "flag",
        )
        add(
            f"slow consumer (every {every}): publisher rate / rate without it",
            ratio,
            ">= 0.9x",
            at_least(ratio, 0.9),
        )
    value = metric(results, "memory", pb, "subscription_bytes")
    add(
        "memory per idle subscription (bytes)",
        value,
        "<= 2048",
        None if value is None else value <= 2048,
        "bytes",
    )
    value = metric(results, "memory", pb, "subscriber_bytes")
    add(
        "memory per idle subscriber with its waiting task (bytes)",
        value,
        "",
        None,
        "bytes",
    )
    worst = metric(results, "history-memory", pb, "worst_bytes_per_event")
    target = metric(results, "history-memory", pb, "target")
    add(
        "history bookkeeping per event, worst case (bytes)",
        worst,
        f"<= {target:g}" if target else "",
        None if worst is None or not target else worst <= target,
        "bytes",
    )
    value = metric(results, "threads", pb, "threads_4")
    add(
        "events/s from 4 threads, 10 subscribers (threads.py's target)",
        value,
        ">= 200,000",
        at_least(value, 200_000),
        "rate",
    )
    return rows


# -- reporting ---------------------------------------------------------------------


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def fmt(value: Any, spec: str = ",.0f", suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int | float):
        return f"{value:{spec}}{suffix}"
    return str(value)


def cell(results: Record, scenario: str, system: str) -> Record | None:
    """The medians, or ``None`` (and the reason) when not ok."""
    entry = results.get(scenario, {}).get(system)
    if entry is None or entry["status"] != "ok":
        return None
    median: Record = entry["median"]
    return median


def status(results: Record, scenario: str, system: str) -> str:
    entry = results.get(scenario, {}).get(system)
    if entry is None:
        return "not run"
    if entry["status"] == "n/a":
        return f"n/a ({entry['reason']})"
    return f"{entry['status']}: {entry.get('reason', '')}"


def table(
    title: str,
    header: Sequence[str],
    scenario: str,
    results: Record,
    systems: Iterable[str],
    row: Callable[[str, Record], Sequence[str]],
) -> list[str]:
    if scenario not in results:
        return []
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|")
    for name in systems:
        if name not in results[scenario]:
            continue
        medians = cell(results, scenario, name)
        label = SYSTEMS[name].label
        if medians is None:
            rest = [status(results, scenario, name)] + [""] * (len(header) - 2)
            lines.append("| " + " | ".join([label, *rest]) + " |")
        else:
            lines.append("| " + " | ".join([label, *row(name, medians)]) + " |")
    return [*lines, ""]


def report(
    results: Record,
    records: dict[str, dict[str, list[Record]]],
    systems: Sequence[str],
    ratios: list[Record],
    meta: Record,
    reps: dict[str, int],
) -> str:
    z = sizes(meta["quick"])
    out = [
        f"## purpose_bus benchmarks ({meta['kind']})",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, Python {meta['python']},"
        f" {meta['date']}, purpose_bus {meta['git']}. Medians of fresh-process"
        " repetitions, interleaved across systems"
        f" ({', '.join(f'{s} x{n}' for s, n in reps.items() if s in results)});"
        " ratios are medians of same-repetition ratios.",
        "",
    ]
    if meta.get("skipped"):
        out += [
            "Skipped, not installed for this interpreter: "
            + "; ".join(f"{name} ({why})" for name, why in meta["skipped"].items())
            + ".",
            "",
        ]
    if meta.get("sources_changed_during_run"):
        out += [
            "**Warning: purpose_bus's sources changed during this run"
            f" ({', '.join(meta['sources_changed_during_run'])}); repetitions"
            " measured different code.**",
            "",
        ]

    def floor_of(name: str) -> str:
        system = SYSTEMS[name]
        if system.floor:
            return system.floor
        if system.options.get("use_uvloop"):
            return "raw-anyio-uvloop"
        return f"raw-anyio-{system.backend}"

    def vs_floor(scenario: str, name: str, key: str) -> str:
        value = paired_ratio(records, scenario, name, floor_of(name), key)
        return fmt(value, ".2f", "x")

    subs = z.fanout_subs
    out += table(
        "Fan-out throughput (deliveries/s = events x subscribers / s)",
        [
            "system",
            *(f"{n} sub{'s' if n > 1 else ''}" for n in subs),
            "10 subs vs raw anyio (same loop)",
        ],
        "fanout",
        results,
        systems,
        lambda name, m: [
            *(fmt(m.get(f"subs_{n}")) for n in subs),
            vs_floor("fanout", name, "subs_10"),
        ],
    )
    out += table(
        "Latency emit -> receive (microseconds)",
        [
            "system",
            "ping-pong p50",
            "ping-pong p99",
            "p50 vs raw anyio",
            f"fan-out {z.load_subs} under load p50",
            "under load p99",
        ],
        "latency",
        results,
        systems,
        lambda name, m: [
            fmt(m["pingpong_p50_us"], ",.1f"),
            fmt(m["pingpong_p99_us"], ",.1f"),
            vs_floor("latency", name, "pingpong_p50_us"),
            fmt(m["load_p50_us"], ",.0f"),
            fmt(m["load_p99_us"], ",.0f"),
        ],
    )
    out += table(
        f"{z.idle_subs:,} idle subscribers on other runs (one run published)",
        [
            "system",
            "1 subscriber alone (deliveries/s)",
            "beside the idle ones",
            "ratio",
        ],
        "idle",
        results,
        systems,
        lambda name, m: [
            fmt(m["single_rate"]),
            fmt(m["idle_rate"]),
            fmt(m["ratio"], ".2f", "x"),
        ],
    )
    out += table(
        f"Slow consumer ({z.slow_sleep * 1000:g} ms per event, buffer"
        f" {z.slow_buffer:,}) beside a fast one, {z.slow_events:,} events + a"
        " terminal one; publisher yielding every emit / every 100",
        [
            "system",
            "full buffer",
            "fast lost",
            "fast lost, no slow sub",
            "slow got terminal",
            "slow received",
            "publisher rate vs no slow sub",
        ],
        "slow",
        results,
        systems,
        lambda name, m: [
            str(m["overflow"]),
            f"{fmt(m['every1_fast_lost'])} / {fmt(m['every100_fast_lost'])}",
            f"{fmt(m['every1_base_fast_lost'])} / {fmt(m['every100_base_fast_lost'])}",
            f"{fmt(m['every1_slow_terminal'])} / {fmt(m['every100_slow_terminal'])}",
            f"{fmt(m['every1_slow_received'])} / {fmt(m['every100_slow_received'])}",
            f"{fmt(m['every1_publisher_ratio'], '.2f', 'x')} /"
            f" {fmt(m['every100_publisher_ratio'], '.2f', 'x')}"
            + (" (capped)" if m["every1_capped"] or m["every100_capped"] else ""),
        ],
    )
    out += table(
        f"Emit from threads (events/s delivered to {z.thread_subs} subscribers)",
        ["system", *(f"{n} thread{'s' if n > 1 else ''}" for n in z.thread_counts)],
        "threads",
        results,
        systems,
        lambda name, m: [fmt(m.get(f"threads_{n}")) for n in z.thread_counts],
    )
    out += table(
        f"Memory per idle subscription (tracemalloc, {z.memory_subs:,} of them, bytes)",
        [
            "system",
            "registered, nothing consuming",
            "with its consumer task waiting",
            "a bare waiting task (reference)",
        ],
        "memory",
        results,
        systems,
        lambda name, m: [
            fmt(m["subscription_bytes"]),
            fmt(m["subscriber_bytes"]),
            fmt(m["bare_task_bytes"]),
        ],
    )
    out += table(
        "History bookkeeping per event (benchmarks/history_memory.py, bytes)",
        ["system", "through the bus, 1 run", "History, 1 run", "History, worst case"],
        "history-memory",
        results,
        systems,
        lambda name, m: [
            fmt(m["bus_bytes_per_event"], ",.1f"),
            fmt(m["one_run_bytes_per_event"], ",.1f"),
            f"{fmt(m['worst_bytes_per_event'], ',.1f')} ({m['worst_case']})",
        ],
    )
    if ratios:
        out += [
            "### Key ratios (asyncio unless said)",
            "",
            "| check | value | target | met |",
            "|---|---:|---|:---:|",
        ]
        for r in ratios:
            shown = {
                "x": lambda v: fmt(v, ".2f", "x"),
                "bytes": lambda v: fmt(v, ",.0f"),
                "count": lambda v: fmt(v, ",.0f"),
                "flag": fmt,
                "rate": lambda v: fmt(v, ",.0f"),
            }[r["unit"]](r["value"])
            met = {True: "yes", False: "**NO**", None: ""}[r["met"]]
            out.append(f"| {r['check']} | {shown} | {r['target']} | {met} |")
        out.append("")
    return "\n".join(out)


def plot(results: Record, systems: Sequence[str], path: Path, quick: bool) -> bool:
    """Deliveries/s by number of subscribers, one line per system and backend."""
    if "fanout" not in results:
        return False
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is not installed ({INSTALL_HINT})", file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subs = sizes(quick).fanout_subs
    fig, ax = plt.subplots(figsize=(10, 6))
    # purpose_bus and its raw floor share a colour per event loop (solid, dashed).
    paired = {"asyncio": "tab:blue", "uvloop": "tab:green", "trio": "tab:orange"}
    others = itertools.cycle(
        [
            "tab:red",
            "tab:purple",
            "tab:brown",
            "tab:pink",
            "tab:gray",
            "tab:olive",
            "tab:cyan",
            "black",
            "gold",
            "navy",
            "lime",
            "teal",
        ]
    )
    for name in systems:
        m = cell(results, "fanout", name)
        if m is None:
            continue
        batch = name.endswith("-batch")
        loop = name.removesuffix("-batch").rsplit("-", 1)[-1]
        pair = name.startswith(("purpose_bus-", "raw-anyio-")) and loop in paired
        style: dict[str, Any] = {
            "marker": "o",
            "color": paired[loop] if pair else next(others),
        }
        if name.startswith("purpose_bus"):
            style.update(linewidth=2.8, linestyle=":" if batch else "-")
        elif name.startswith("raw-"):
            style.update(linestyle="--")
        else:
            style.update(linewidth=1.2, alpha=0.85)
        ax.plot(
            subs, [m[f"subs_{n}"] for n in subs], label=SYSTEMS[name].label, **style
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(subs), [str(n) for n in subs])
    ax.set_xlabel("subscribers")
    ax.set_ylabel("deliveries / s (median)")
    ax.set_title("Fan-out throughput (publisher yields every 100 emits)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- the machine -------------------------------------------------------------------


def machine(quick: bool, interpreter: Record) -> Record:
    """The machine, and the interpreter the workers run (from :func:`probe`)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "quick": quick,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(affinity) if affinity is not None else None,
        "python": interpreter["python"],
        "implementation": interpreter["implementation"],
        "executable": interpreter["executable"],
        "platform": platform.platform(),
        "packages": interpreter["packages"],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_version(),
        "source_digest": source_digest(),
        "source_files": source_files(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def source_files() -> dict[str, str]:
    """A digest of each of purpose_bus's core modules (``__init__.py`` and the
    private ``_*.py``; not the optional integrations), to notice an edit of the
    measured code during a run."""
    package = HERE.parent / "purpose_bus"
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted(package.glob("_*.py"))
    }


def source_digest() -> str:
    """One digest of purpose_bus's core modules."""
    return hashlib.sha256(repr(source_files()).encode()).hexdigest()[:16]


def git_version() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--", "purpose_bus")
    except OSError:
        return "unknown"
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


# -- main --------------------------------------------------------------------------


def split(values: Sequence[str] | None) -> list[str]:
    return [v for value in values or () for v in value.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="systems: "
        + ", ".join(SYSTEMS)
        + "\nscenarios: "
        + ", ".join(SCENARIOS),
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke run")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="scenarios")
    parser.add_argument("--systems", nargs="+", metavar="SYSTEM", help="systems")
    parser.add_argument("--reps", type=int, help="repetitions (default: per scenario)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="workers at once (default 1; 3 with --quick): more skews timings",
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="the interpreter the workers run (default: this one); purpose_bus"
        " and what the systems need must be installed in it",
    )
    parser.add_argument("--output", type=Path, help="the JSON file to write")
    args = parser.parse_args(argv)
    python = sys.executable
    if args.python is not None:
        found = shutil.which(args.python)
        if found is None:
            parser.error(f"--python: no interpreter at {args.python}")
        python = found

    scenarios = split(args.only) or list(SCENARIOS)
    systems = split(args.systems) or list(SYSTEMS)
    for name, known in (("scenario", SCENARIOS), ("system", SYSTEMS)):
        unknown = [
            v for v in (scenarios if name == "scenario" else systems) if v not in known
        ]
        if unknown:
            parser.error(f"unknown {name}(s): {', '.join(unknown)}")
    scenarios = [s for s in SCENARIOS if s in scenarios]
    interpreter = probe(python)
    skipped = {n: r for n, r in interpreter["unavailable"].items() if n in systems}
    for name, reason in skipped.items():
        hint = f" ({INSTALL_HINT})" if reason.endswith("not installed") else ""
        print(f"skipped {name}: {reason}{hint}", file=sys.stderr)
    systems = [name for name in systems if name not in skipped]
    if not systems:
        print("error: none of the systems can run here", file=sys.stderr)
        return 1
    reps = {s: 1 if args.quick else (args.reps or SCENARIOS[s]) for s in scenarios}
    partial = args.only is not None or args.systems is not None
    stem = "quick" if args.quick else "partial" if partial else "latest"
    if args.python is not None:
        stem += "-" + ".".join(interpreter["python"].split(".")[:2])
    output = args.output or RESULTS / f"{stem}.json"
    jobs_at_once = args.jobs or (3 if args.quick else 1)

    meta = machine(args.quick, interpreter)
    meta["skipped"] = skipped
    meta["kind"] = (
        "quick smoke run" if args.quick else "partial run" if partial else "full run"
    )
    jobs = plan(scenarios, systems, reps)
    print(
        f"{len(jobs)} runs: {len(systems)} systems x {len(scenarios)} scenarios,"
        f" {max(reps.values(), default=0)} repetition(s), {jobs_at_once} at a time",
        file=sys.stderr,
    )
    started = time.perf_counter()
    records = execute(jobs, args.quick, jobs_at_once, python)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["source_digest_end"] = source_digest()
    files_end = source_files()
    meta["sources_changed_during_run"] = sorted(
        name
        for name in {*files_end, *meta["source_files"]}
        if files_end.get(name) != meta["source_files"].get(name)
    )

    results = {
        scenario: {name: aggregate(samples) for name, samples in by_system.items()}
        for scenario, by_system in records.items()
    }
    ratios = key_ratios(results, records, args.quick)
    if partial:
        ratios = [r for r in ratios if r["value"] is not None]
    markdown = report(results, records, systems, ratios, meta, reps)
    print(markdown)

    plot_path = output.with_name(
        "fanout.png" if output.name == "latest.json" else f"{output.stem}-fanout.png"
    )
    plotted = not args.no_plot and plot(results, systems, plot_path, args.quick)
    document = {
        "machine": meta,
        "config": {
            "scenarios": scenarios,
            "systems": {
                name: {
                    "label": SYSTEMS[name].label,
                    "backend": SYSTEMS[name].backend,
                    "options": SYSTEMS[name].options,
                    "description": SYSTEMS[name].description,
                    "scale": SYSTEMS[name].scale,
                }
                for name in systems
            },
            "repetitions": reps,
            "sizes": sizes(args.quick).__dict__,
        },
        "results": results,
        "key_ratios": ratios,
        "samples": records,
        "markdown": markdown,
        "plot": str(plot_path.relative_to(HERE.parent)) if plotted else None,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(
        f"\nwrote {output}"
        + (f" and {plot_path}" if plotted else "")
        + f" in {meta['seconds']:.0f} s",
        file=sys.stderr,
    )
    failed = [
        (s, n)
        for s, by in results.items()
        for n, entry in by.items()
        if entry["status"] == "error"
    ]
    if meta["sources_changed_during_run"]:
        changed = ", ".join(meta["sources_changed_during_run"])
        print(
            f"WARNING: purpose_bus's {changed} changed during the run", file=sys.stderr
        )
    for scenario, name in failed:
        print(
            f"ERROR {scenario} {name}: {status(results, scenario, name)}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
