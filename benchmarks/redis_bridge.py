"""Cross-process throughput and latency through the Redis bridge.

Two processes, each with an EventBus and a RedisBridge on the same prefix: a
sender (a subprocess of this script) emits into its bus; this process receives
through its bridge into a subscription of its bus. Measured on every backend
available, in the same run, beside the raw floor:

- ``raw pipelined``: a plain coredis loop, ``XADD`` (``MAXLEN ~``) of the same
  encoded event, 500 per pipeline: one process writing, nobody reading;
- ``raw one at a time``: the same, one awaited ``XADD`` per event;
- ``bridge throughput``: the sender emits N events as fast as it can (a
  checkpoint every 256 emits so its writer runs); the rate is N divided by the
  time from the first event's creation (its ``ts``) to its receipt here of the
  last one, so it includes encoding, Redis, decoding and delivery;
- ``bridge latency``: the sender emits 1,000 events/s (one per millisecond, on
  a deadline schedule) for a few seconds; for each event, receipt time here
  minus its ``ts`` (both ``time.time()`` on the same machine); percentiles
  after a warm-up of 200 events.

Wall-clock rates depend on how many cores are free: the raw loop is one busy
process, the bridge three (sender, receiver, Redis). So the CPU time per event
of each process is measured too (``time.process_time()``; Redis's from ``INFO
cpu``), with the rate the slowest process would allow on a core of its own:
on a shared or small machine, compare those.

Usage::

    .venv/bin/python benchmarks/redis_bridge.py [--events 50000] [--repeat 3]
        [--seconds 3] [--backend asyncio --backend trio] [--url redis://...]

Redis from ``--url`` or ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Prints a markdown table of medians and writes every sample to
``benchmarks/results/redis_bridge.json``. Targets: bridge throughput
>= 1.0x the raw pipelined rate; p50 latency <= 1 ms at 1,000 events/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import coredis
from anyio.lowlevel import checkpoint

from purpose_bus import EventBus, MessageDelta, RunFinished, encode
from purpose_bus.redis import RedisBridge

RESULTS = Path(__file__).parent / "results" / "redis_bridge.json"
TARGET_RATIO = 1.0
TARGET_P50_MS = 1.0
PIPELINE = 500
WARMUP = 200
TEXT = "hello world " * 4  # a typical streamed chunk: ~240 bytes encoded

Backend = tuple[str, dict[str, Any]]
LOAD_BEFORE: list[float] | None = None


def backends() -> dict[str, Backend]:
    found: dict[str, Backend] = {"asyncio": ("asyncio", {})}
    if importlib.util.find_spec("uvloop") is not None:
        found["uvloop"] = ("asyncio", {"use_uvloop": True})
    if importlib.util.find_spec("trio") is not None:
        found["trio"] = ("trio", {})
    return found


# -- the raw floor -----------------------------------------------------------


async def raw_rates(url: str, events: int) -> dict[str, float]:
    """XADDs/s of a plain coredis client: pipelined, then one at a time."""
    key = f"bench:raw:{uuid.uuid4().hex}"
    data = encode(MessageDelta(run_id="bench", text=TEXT, seq=1, offset=1))
    fields = {"o": "0123456789abcdef", "e": data}
    trim = {
        "trim_strategy": coredis.PureToken.MAXLEN,
        "trim_operator": coredis.PureToken.APPROXIMATELY,
        "threshold": 10_000,
    }
    client = coredis.Redis.from_url(url)
    async with client:
        try:
            redis_cpu = await _redis_cpu(client)
            cpu = time.process_time()
            start = time.perf_counter()
            for _ in range(events // PIPELINE):
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(PIPELINE):
                        pipe.xadd(key, fields, **trim)  # type: ignore[arg-type]
            written = events // PIPELINE * PIPELINE
            pipelined = written / (time.perf_counter() - start)
            client_us = 1e6 * (time.process_time() - cpu) / written
            redis_us = 1e6 * (await _redis_cpu(client) - redis_cpu) / written
            single_events = max(1, events // 10)
            start = time.perf_counter()
            for _ in range(single_events):
                await client.xadd(key, fields, **trim)  # type: ignore[arg-type]
            single = single_events / (time.perf_counter() - start)
        finally:
            await client.delete([key])
    return {
        "raw_pipelined": pipelined,
        "raw_single": single,
        "raw_client_us": client_us,
        "raw_redis_us": redis_us,
    }


async def _redis_cpu(client: coredis.Redis[Any]) -> float:
    """The CPU seconds the Redis server has used (user and system)."""
    info = await client.info("cpu")
    return float(str(info["used_cpu_user"])) + float(str(info["used_cpu_sys"]))


# -- the sender (a subprocess) -------------------------------------------------


async def sender(url: str, prefix: str, run_id: str, mode: str, count: int) -> None:
    async with (
        EventBus(history_size=1000) as bus,
        RedisBridge(bus, url, prefix=prefix, maxlen=2 * count) as bridge,
    ):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "go"
        cpu = time.process_time()
        emit = bus.emit
        if mode == "throughput":
            for i in range(count):
                emit(MessageDelta(run_id=run_id, text=TEXT))
                if i % 256 == 255:
                    await checkpoint()
        else:  # paced: one event per millisecond, on a deadline schedule
            start = time.perf_counter()
            for i in range(count):
                delay = start + i / 1000 - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                emit(MessageDelta(run_id=run_id, text=TEXT))
        emit(RunFinished(run_id=run_id))
        await bridge.flush()
        stats = bridge.statistics()
        # Until its own entries have been read back too: part of its cost.
        while bridge.statistics().own_skipped < stats.exported:
            await anyio.sleep(0.001)
        report = {
            "exported": stats.exported,
            "batches": stats.batches,
            "export_dropped": stats.export_dropped,
            "cpu_s": time.process_time() - cpu,
        }
        print(json.dumps(report), flush=True)


# -- the receiver (this process) -------------------------------------------------


async def bridged(url: str, backend: str, mode: str, count: int) -> dict[str, Any]:
    """Run one sender in a subprocess; receive its run here."""
    prefix = f"bench:{uuid.uuid4().hex[:12]}"
    run_id = f"run-{mode}"
    received: list[tuple[float, float]] = []  # (ts, received at)
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(EventBus(buffer_size=count + 10))
        bridge = await stack.enter_async_context(
            RedisBridge(bus, url, prefix=prefix, maxlen=2 * count)
        )
        sub = await stack.enter_async_context(bus.subscribe(run_id=run_id))
        process = await stack.enter_async_context(
            await anyio.open_process(
                [
                    sys.executable,
                    __file__,
                    "--role=sender",
                    f"--url={url}",
                    f"--prefix={prefix}",
                    f"--run-id={run_id}",
                    f"--mode={mode}",
                    f"--events={count}",
                    f"--backend={backend}",
                ],
                stderr=None,
            )
        )
        lines = _lines(process)
        assert await lines.__anext__() == "ready"
        assert process.stdin is not None
        raw = await stack.enter_async_context(coredis.Redis.from_url(url))
        redis_cpu = await _redis_cpu(raw)
        cpu = time.process_time()
        await process.stdin.send(b"go\n")
        with anyio.fail_after(120):
            now = time.time
            async for event in sub:
                received.append((event.ts, now()))
            receiver_cpu = time.process_time() - cpu
            sent = json.loads(await lines.__anext__())
        redis_cpu = await _redis_cpu(raw) - redis_cpu
        await process.wait()
        stats = bridge.statistics()
        await _cleanup(url, prefix)
    events = received[:-1]  # the terminal event is not timed
    assert len(events) == count, (len(events), count, stats)
    result: dict[str, Any] = {"sender": sent, "imported": stats.imported}
    if mode == "throughput":
        result["rate"] = count / (received[-2][1] - received[0][0])
        result["mean_batch"] = sent["exported"] / max(1, sent["batches"])
        result["sender_us"] = 1e6 * sent["cpu_s"] / count
        result["receiver_us"] = 1e6 * receiver_cpu / count
        result["redis_us"] = 1e6 * redis_cpu / count
    else:
        latencies = sorted(1000 * (at - ts) for ts, at in events[WARMUP:])
        result.update(
            p50_ms=_percentile(latencies, 50),
            p90_ms=_percentile(latencies, 90),
            p99_ms=_percentile(latencies, 99),
            max_ms=latencies[-1],
        )
    return result


async def _lines_of(process: anyio.abc.Process) -> Any:
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


def _lines(process: anyio.abc.Process) -> Any:
    return _lines_of(process)


async def _cleanup(url: str, prefix: str) -> None:
    client = coredis.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match=f"{{{prefix}*")]
        if keys:
            await client.delete(keys)


def _percentile(values: Sequence[float], q: float) -> float:
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


# -- driver ----------------------------------------------------------------------

Samples = dict[str, dict[str, list[float]]]


def run_backend(
    backend: Backend, name: str, url: str, events: int, seconds: float
) -> dict[str, float]:
    backend_name, options = backend

    def run(func: Any, *args: Any) -> Any:
        return anyio.run(func, *args, backend=backend_name, backend_options=options)

    sample: dict[str, float] = dict(run(raw_rates, url, events))
    throughput = run(bridged, url, name, "throughput", events)
    for key in ("rate", "mean_batch", "sender_us", "receiver_us", "redis_us"):
        sample[key if key != "rate" else "bridge_rate"] = throughput[key]
    # The rates the CPU alone allows, with a core for each process (the
    # slowest one sets the pace): a measure a busy machine distorts less.
    sample["raw_core_rate"] = 1e6 / max(sample["raw_client_us"], sample["raw_redis_us"])
    sample["bridge_core_rate"] = 1e6 / max(
        sample["sender_us"], sample["receiver_us"], sample["redis_us"]
    )
    sample["core_ratio"] = sample["bridge_core_rate"] / sample["raw_core_rate"]
    latency = run(bridged, url, name, "paced", int(seconds * 1000))
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        sample[key] = latency[key]
    sample["ratio"] = sample["bridge_rate"] / sample["raw_pipelined"]
    return sample


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backend", action="append", help="asyncio, uvloop, trio")
    parser.add_argument(
        "--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    # The sender's own options (internal).
    parser.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global LOAD_BEFORE
    LOAD_BEFORE = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    if args.role == "sender":
        name, options = backends()[args.backend[0]]
        anyio.run(
            sender,
            args.url,
            args.prefix,
            args.run_id,
            args.mode,
            args.events,
            backend=name,
            backend_options=options,
        )
        return 0

    chosen = {
        k: v for k, v in backends().items() if not args.backend or k in args.backend
    }
    samples: Samples = {name: {} for name in chosen}
    for repeat in range(args.repeat):
        for name, backend in chosen.items():
            sample = run_backend(backend, name, args.url, args.events, args.seconds)
            for key, value in sample.items():
                samples[name].setdefault(key, []).append(value)
            print(
                f"  [{repeat + 1}/{args.repeat}] {name:8}"
                f" raw {sample['raw_pipelined']:>8,.0f}/s"
                f" bridge {sample['bridge_rate']:>8,.0f}/s ({sample['ratio']:.2f}x)"
                f" p50 {sample['p50_ms']:.2f} ms p99 {sample['p99_ms']:.2f} ms",
                file=sys.stderr,
            )
    medians = {
        name: {key: statistics.median(values) for key, values in by_key.items()}
        for name, by_key in samples.items()
    }
    print(table(medians, args))
    write_json(args, samples, medians)
    return 0


def table(medians: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        "### Redis bridge, two processes (medians of"
        f" {args.repeat}; {args.events:,} events for rates,"
        f" {args.seconds:g} s at 1,000 events/s for latency)",
        "",
        "| backend | raw XADD pipelined | raw XADD one at a time | bridge"
        " cross-process | bridge / raw pipelined | mean events per write"
        " | latency p50 | p90 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in medians.items():
        lines.append(
            f"| {name} | {m['raw_pipelined']:,.0f}/s | {m['raw_single']:,.0f}/s"
            f" | {m['bridge_rate']:,.0f}/s | {m['ratio']:.2f}x"
            f" | {m['mean_batch']:,.0f} | {m['p50_ms']:.2f} ms"
            f" | {m['p90_ms']:.2f} ms | {m['p99_ms']:.2f} ms |"
        )
    lines += [
        "",
        "CPU time per event (µs; Redis's from INFO, so other clients of the server"
        " count too), and the rate it allows with a core per process:",
        "",
        "| backend | raw: client | raw: Redis | raw rate, a core each | bridge:"
        " sender | bridge: receiver | bridge: Redis | bridge rate, a core each"
        " | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in medians.items():
        lines.append(
            f"| {name} | {m['raw_client_us']:.1f} | {m['raw_redis_us']:.1f}"
            f" | {m['raw_core_rate']:,.0f}/s | {m['sender_us']:.1f}"
            f" | {m['receiver_us']:.1f} | {m['redis_us']:.1f}"
            f" | {m['bridge_core_rate']:,.0f}/s | {m['core_ratio']:.2f}x |"
        )
    lines.append("")
    for name, m in medians.items():
        verdict = (
            "met"
            if m["ratio"] >= TARGET_RATIO and m["p50_ms"] <= TARGET_P50_MS
            else "NOT met"
        )
        lines.append(
            f"- {name}: targets (>= {TARGET_RATIO}x raw pipelined, p50 <="
            f" {TARGET_P50_MS:g} ms at 1,000 events/s) {verdict}:"
            f" {m['ratio']:.2f}x, p50 {m['p50_ms']:.2f} ms"
        )
    return "\n".join(lines)


def write_json(
    args: argparse.Namespace, samples: Samples, medians: dict[str, dict[str, float]]
) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "redis_bridge",
        "events": args.events,
        "latency_seconds": args.seconds,
        "repeat": args.repeat,
        "targets": {"ratio": TARGET_RATIO, "p50_ms": TARGET_P50_MS},
        "load_average_before": LOAD_BEFORE,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "load_average": list(os.getloadavg())
            if hasattr(os, "getloadavg")
            else None,
            "redis": _redis_version(args.url),
            "coredis": coredis.__version__,
            "commit": _commit(),
        },
        "medians": medians,
        "samples": samples,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


def _redis_version(url: str) -> str | None:
    async def info() -> str | None:
        client = coredis.Redis.from_url(url)
        async with client:
            server = await client.info("server")
            return str(server.get("redis_version"))

    try:
        return anyio.run(info)
    except Exception:
        return None


def _commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
