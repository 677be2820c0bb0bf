"""What this interpreter can benchmark: print one JSON line with its version,
the versions of the packages the runner reports, and each system it cannot run
with the reason (a peer library, trio, uvloop or the old bus not installed).

Usage::

    python benchmarks/_probe.py

``benchmarks/run.py`` runs it once, with the interpreter the workers will use
(``--python``), and skips the systems it names, one line each.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from systems import SYSTEMS, System


def unavailable(system: System) -> str | None:
    """Why *system* cannot run here, or ``None`` if it can."""
    needs = ["trio"] if system.backend == "trio" else []
    if system.options.get("use_uvloop"):
        needs.append("uvloop")
    try:
        for name in needs:
            importlib.import_module(name)
        importlib.import_module(f"systems.{system.module}")
    except ImportError as exc:
        if exc.name == "purpose_agent":
            return "the old bus (shared/seed/runnable, or PURPOSE_BUS_SEED) is missing"
        return f"{exc.name or exc} is not installed"
    return None


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main() -> int:
    from run import PACKAGES  # the one list of packages the results name

    record = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "packages": {name: installed(name) for name in PACKAGES},
        "unavailable": {
            name: reason
            for name, system in SYSTEMS.items()
            if (reason := unavailable(system)) is not None
        },
    }
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
