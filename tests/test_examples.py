"""The programs in ``examples/`` run and print what their comments say."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: What the subscriber prints, in order: an unscoped subscription goes on
#: past the run's terminal event until the bus closes, PUBLIC events only.
PORTED_SUBSCRIBER = [
    "subscriber: run.started",
    "subscriber: message.delta Hello",
    "subscriber: message.delta world",
    "subscriber: run.finished",
    "subscriber: run.started",
]
#: What the program prints itself, in order.
PORTED_MAIN = [
    "replay: ['run.started', 'message.delta Hello', 'message.delta world',"
    " 'reasoning.summary', 'run.finished']",
    "replay since seq 1, lane main: ['run.finished']",
    "history: 6 subscriptions: 1",
    "merged: ['message.delta Hello', 'message.delta world']",
    "after close: BusClosed",
]


class TestOldBusPorted:
    async def test_it_runs(
        self, anyio_backend: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await load("old_bus_ported").main()
        lines = capsys.readouterr().out.splitlines()
        # The subscriber's lines interleave with the program's as tasks run.
        assert [line for line in lines if line.startswith("subscriber:")] == (
            PORTED_SUBSCRIBER
        )
        assert [line for line in lines if not line.startswith("subscriber:")] == (
            PORTED_MAIN
        )

    def test_it_runs_as_a_script(self) -> None:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "old_bus_ported.py"), "trio"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "after close: BusClosed"
