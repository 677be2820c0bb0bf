"""Tests of the demo (``python -m purpose_bus demo``): it runs on both backends
and its table shows what the README promises."""

from __future__ import annotations

import os
import re
import signal
import sys

import anyio
import httpx
import pytest
from backends import backend_word

from purpose_bus._demo import DELTAS, LANES, STEPS, DemoRow, main, run_demo

#: run-1's PUBLIC events: its start and end, and per lane a start, an end and per
#: step a start, a tool call, a tool result, the deltas and an end.
PUBLIC_PER_RUN = 2 + len(LANES) * (2 + STEPS * (4 + DELTAS))
#: Each run's INTERNAL events besides: one reasoning summary per step.
INTERNAL_PER_RUN = PUBLIC_PER_RUN + len(LANES) * STEPS


def by_name(rows: list[DemoRow]) -> dict[str, DemoRow]:
    return {row.name.split(" ")[0]: row for row in rows[:-1]}


class TestDemo:
    @pytest.mark.parametrize("slow_delay", [0.0, 0.0001])
    async def test_the_table(self, slow_delay: float) -> None:
        rows = await run_demo(slow_delay=slow_delay)
        assert len(rows) == 5
        table = by_name(rows)
        assert set(table) == {"ui", "slow", "auditor", "late"}
        ui, slow, auditor, late = (
            table["ui"],
            table["slow"],
            table["auditor"],
            table["late"],
        )
        # The fast UI lost nothing and saw its run end.
        assert (ui.delivered, ui.dropped, ui.buffered) == (PUBLIC_PER_RUN, 0, 0)
        assert ui.terminal_seen == "run.finished"
        # The slow subscriber may drop, but never the terminal event, and it
        # accounts for every event of its run.
        assert slow.terminal_seen == "run.finished"
        assert slow.delivered + slow.dropped + slow.buffered == PUBLIC_PER_RUN
        assert (slow.notices > 0) == (slow.dropped > 0)
        # The BLOCK auditor lost nothing and saw both runs end.
        assert auditor.dropped == 0
        assert auditor.delivered == 2 * INTERNAL_PER_RUN
        assert sorted(auditor.terminal_seen.split(", ")) == [
            "run.error",
            "run.finished",
        ]
        # The late joiner replayed the whole finished run.
        assert late.delivered == ui.delivered
        assert late.dropped == 0
        assert late.terminal_seen == "run.finished"
        # The bus: both runs' events accepted, the hidden reasoning rejected.
        assert rows[-1].name == (f"bus: emitted {2 * INTERNAL_PER_RUN}, rejected 2")


class TestMain:
    @pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
    def test_main_prints_the_table(
        self, backend: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo", "--backend", backend]) == 0
        out = capsys.readouterr().out
        assert f"purpose_bus demo on {backend}" in out
        header = next(line for line in out.splitlines() if "subscriber" in line)
        for column in ("delivered", "dropped", "buffered", "gap notices"):
            assert column in header
        for name in ("ui (fast)", "slow (drops)", "auditor (BLOCK)", "late joiner"):
            assert name in out
        assert "run.finished" in out
        assert "run.error" in out
        assert f"bus: emitted {2 * INTERNAL_PER_RUN}, rejected 2" in out

    def test_main_defaults_to_asyncio(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["demo"]) == 0
        assert "purpose_bus demo on asyncio" in capsys.readouterr().out

    def test_main_needs_a_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main([])
        assert info.value.code == 2
        assert "demo" in capsys.readouterr().err

    def test_backend_has_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main(["demo", "--help"])
        assert info.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "the event loop to run on (default: asyncio; trio needs" in out

    @pytest.mark.parametrize("serve", [[], ["--serve"]])
    @pytest.mark.parametrize(
        ("backend", "install"),
        [("trio", "'purpose_bus[trio]'"), ("uvloop", "uvloop")],
    )
    def test_backend_not_installed(
        self,
        serve: list[str],
        backend: str,
        install: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setitem(sys.modules, backend, None)  # not installed
        assert main(["demo", "--backend", backend, *serve]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"error: --backend {backend} needs {backend} (pip install {install})\n"
        )


class TestServeStops:
    async def test_ctrl_c_stops_at_once_while_a_viewer_streams(
        self, anyio_backend: object
    ) -> None:
        # A viewer's open event stream must not hold the server up: Ctrl+C
        # closes the bus, which ends every stream, then hypercorn stops.
        command = [sys.executable, "-m", "purpose_bus", "demo", "--serve"]
        backend = backend_word(anyio_backend)  # uvloop when the test runs on it
        command += ["--port", "0", "--backend", backend]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        async with await anyio.open_process(command, env=env) as process:
            assert process.stdout is not None
            with anyio.fail_after(20):
                line = b""
                while b"\n" not in line:
                    line += await process.stdout.receive()
            match = re.search(r"http://127\.0\.0\.1:\d+/", line.decode())
            assert match is not None
            async with (
                httpx.AsyncClient(base_url=match.group(0), trust_env=False) as client,
                client.stream("GET", "/events") as stream,
            ):
                lines = stream.aiter_lines()
                with anyio.fail_after(20):
                    assert (await anext(lines)).startswith("retry:")  # streaming
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(5):  # the graceful timeout is 1 s
                    async for _ in lines:  # the stream ends
                        pass
                    rest = b"".join([chunk async for chunk in process.stdout])
                    assert await process.wait() == 0
            assert rest.decode().strip().endswith("stopped")
