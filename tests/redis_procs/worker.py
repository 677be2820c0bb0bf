"""A process with an EventBus bridged to Redis, driven by the tests.

Usage: ``python tests/redis_procs/worker.py URL PREFIX BACKEND``. It opens a bus
and a :class:`~purpose_bus.redis.RedisBridge`, prints one JSON line
(``{"ready": true, "client_name": ..., "origin": ...}``), then answers one JSON
command per line on stdin with one JSON line on stdout:

- ``{"op": "emit", "run": R, "lanes": [...], "count": N, "start": bool,
  "finish": bool}``: publish ``RunStarted`` (if *start*), then N rounds of one
  ``MessageDelta`` per lane (text ``"<lane>:<i>"``), then ``RunFinished`` (if
  *finish*), with ``bus.publish`` (a checkpoint, so the bridge's writer runs
  while the worker emits); wait until the bridge has written them; answer the
  emitted events (``[kind, lane, seq, span_id]``).
- ``{"op": "wait_imported", "count": N}``: wait until the bridge has imported
  N events and read back every entry it wrote (polling for at most 10 s);
  answer the statistics.
- ``{"op": "stats"}``: the bridge's statistics and, per run, the events the
  bus's history holds.
- ``{"op": "replay", "run": R}``: the run read back with ``bridge.replay`` and
  with ``bus.subscribe(run_id=R, replay=True)`` (which reaches into Redis).
- ``{"op": "exit"}``: leave the bridge and the bus, and exit.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from purpose_bus import Event, EventBus, MessageDelta, RunFinished, RunStarted
from purpose_bus.redis import RedisBridge

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/
from backends import run, running_backend


def describe(event: Event) -> list[Any]:
    return [event.kind, event.lane_id, event.seq, event.span_id]


def statistics(bus: EventBus, bridge: RedisBridge) -> dict[str, Any]:
    stats = bridge.statistics()
    return {
        "exported": stats.exported,
        "imported": stats.imported,
        "own_skipped": stats.own_skipped,
        "reconnects": stats.reconnects,
        "lost": stats.lost,
        "skipped": stats.skipped,
        "history": dict(Counter(event.run_id for event in bus.replay())),
    }


async def emit(bus: EventBus, bridge: RedisBridge, command: dict[str, Any]) -> Any:
    run, lanes = command["run"], command["lanes"]
    emitted: list[Event] = []
    if command.get("start"):
        emitted.append(await publish(bus, RunStarted(run_id=run)))
    for i in range(command["count"]):
        for lane in lanes:
            event = MessageDelta(run_id=run, lane_id=lane, text=f"{lane}:{i}")
            emitted.append(await publish(bus, event))
    if command.get("finish"):
        emitted.append(await publish(bus, RunFinished(run_id=run)))
    with anyio.fail_after(20):
        await bridge.flush()
    return [describe(event) for event in emitted]


async def publish(bus: EventBus, event: Event) -> Event:
    """Publish *event* (a checkpoint: the bridge's writer runs meanwhile) and
    return it as the bus stamped it."""
    stamped = await bus.publish(event)
    assert stamped is not None
    return stamped


async def wait_imported(bus: EventBus, bridge: RedisBridge, count: int) -> Any:
    def settled() -> bool:
        stats = bridge.statistics()
        return stats.imported >= count and stats.own_skipped >= stats.exported

    with anyio.fail_after(10):
        while not settled():
            await anyio.sleep(0.005)  # polling what Redis and other processes do
    return statistics(bus, bridge)


async def replay(bus: EventBus, bridge: RedisBridge, run: str) -> Any:
    replayed = await bridge.replay(run_id=run)
    with anyio.fail_after(10):
        async with bus.subscribe(run_id=run, replay=True) as sub:
            subscribed = [describe(event) async for event in sub]
    return {"replay": [describe(e) for e in replayed], "subscribe": subscribed}


async def main(url: str, prefix: str) -> None:
    async with (
        EventBus(history_size=100_000, buffer_size=100_000) as bus,
        RedisBridge(bus, url, prefix=prefix) as bridge,
    ):
        ready = {"ready": True, "client_name": bridge.client_name}
        ready |= {"origin": bridge.origin, "backend": running_backend()}
        print(json.dumps(ready), flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            op = command["op"]
            if op == "exit":
                break
            if op == "emit":
                answer = await emit(bus, bridge, command)
            elif op == "wait_imported":
                answer = await wait_imported(bus, bridge, command["count"])
            elif op == "stats":
                answer = statistics(bus, bridge)
            elif op == "replay":
                answer = await replay(bus, bridge, command["run"])
            else:
                raise ValueError(f"unknown command {op!r}")
            print(json.dumps(answer), flush=True)
    print(json.dumps({"closed": True}), flush=True)


if __name__ == "__main__":
    run(main, sys.argv[1], sys.argv[2], word=sys.argv[3])
