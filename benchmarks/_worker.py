"""Run one scenario for one system in this (fresh) process and print one JSON
line: ``{"system", "scenario", "status": "ok" | "n/a" | "error", "metrics", ...}``.

Usage::

    python benchmarks/_worker.py --system purpose_bus-asyncio --scenario fanout
    python benchmarks/_worker.py --system purpose_bus-asyncio --scenario fanout \\
        --profile /tmp/fanout.prof     # cProfile it; top functions on stderr

``benchmarks/run.py`` starts one of these per (system, scenario, repetition).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from _scenarios import PLAIN, SCENARIOS, Sizes, sizes
from systems import SYSTEMS, System, load
from systems._base import NotApplicable


def run(system: System, scenario: str, z: Sizes, rep: int) -> dict[str, Any]:
    if scenario in PLAIN:
        return PLAIN[scenario](system, z)
    adapter = load(system)
    function = SCENARIOS[scenario]

    async def main() -> dict[str, Any]:
        with anyio.fail_after(z.timeout):
            return await function(adapter, system, z, rep)

    result: dict[str, Any] = anyio.run(
        main, backend=system.backend, backend_options=system.options
    )
    return result


def unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument(
        "--scenario", required=True, choices=sorted([*SCENARIOS, *PLAIN])
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument(
        "--rep", type=int, default=1, help="repetition number (alternates orders)"
    )
    parser.add_argument("--profile", type=Path, help="write cProfile stats here")
    args = parser.parse_args(argv)
    system = SYSTEMS[args.system]
    record: dict[str, Any] = {"system": system.name, "scenario": args.scenario}
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    start = time.perf_counter()
    try:
        if profiler is not None:
            profiler.enable()
        try:
            metrics = run(system, args.scenario, sizes(args.quick), args.rep)
        finally:
            if profiler is not None:
                profiler.disable()
    except Exception as raised:
        exc = unwrap(raised)
        if isinstance(exc, NotApplicable):
            record.update(status="n/a", reason=str(exc))
        else:
            traceback.print_exc()
            reason = f"{type(exc).__name__}: {exc}".strip()
            if isinstance(exc, TimeoutError):
                reason = "timeout"
            record.update(status="error", reason=reason[:300])
    else:
        record.update(status="ok", metrics=metrics)
    record["seconds"] = round(time.perf_counter() - start, 3)
    frameworks = sorted({"pytest", "hypothesis"} & set(sys.modules))
    if frameworks:  # benchmarks must not depend on test frameworks
        record["imported_test_frameworks"] = frameworks
    if profiler is not None:
        import pstats

        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(30)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
