"""The systems the benchmarks compare, one adapter module each.

This module holds only metadata, so the runner can plan without importing any
peer library; the worker imports the one adapter it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ._base import Adapter

__all__ = ["SYSTEMS", "System", "load"]


@dataclass(frozen=True)
class System:
    """One (library, backend) pair: what ``--systems`` names."""

    name: str
    module: str
    backend: str  # "asyncio" or "trio": the anyio backend the worker runs
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    #: Multiplies the work sizes: the slowest peers get fewer events, so that a
    #: measurement takes about as long as everyone else's (rates stay rates).
    scale: float = 1.0
    #: At most this many repetitions (for peers too slow to repeat five times).
    max_reps: int | None = None
    #: The raw floor this system is compared with (same backend).
    floor: str | None = None

    @property
    def label(self) -> str:
        """The name, with the backend added where the name does not say it."""
        backend = "uvloop" if self.options.get("use_uvloop") else self.backend
        return self.name if backend in self.name else f"{self.name} ({backend})"


UVLOOP = {"use_uvloop": True}

_ALL = [
    System(
        "purpose_bus-asyncio",
        "purpose",
        "asyncio",
        "purpose_bus EventBus, one subscription per subscriber (run_id filter)",
        floor="raw-anyio-asyncio",
    ),
    System(
        "purpose_bus-uvloop",
        "purpose",
        "asyncio",
        "purpose_bus EventBus on asyncio with uvloop",
        options=UVLOOP,
        floor="raw-anyio-uvloop",
    ),
    System(
        "purpose_bus-trio",
        "purpose",
        "trio",
        "purpose_bus EventBus on trio",
        floor="raw-anyio-trio",
    ),
    System(
        "purpose_bus-asyncio-batch",
        "purpose",
        "asyncio",
        "purpose_bus EventBus, consumed with sub.batches() (receive_batch)",
        floor="raw-anyio-asyncio",
    ),
    System(
        "purpose_bus-uvloop-batch",
        "purpose",
        "asyncio",
        "purpose_bus EventBus on asyncio with uvloop, consumed with sub.batches()",
        options=UVLOOP,
        floor="raw-anyio-uvloop",
    ),
    System(
        "purpose_bus-trio-batch",
        "purpose",
        "trio",
        "purpose_bus EventBus on trio, consumed with sub.batches()",
        floor="raw-anyio-trio",
    ),
    System(
        "raw-anyio-asyncio",
        "raw_anyio",
        "asyncio",
        "floor: one AnyIO memory object stream per subscriber, send_nowait to each",
    ),
    System(
        "raw-anyio-uvloop",
        "raw_anyio",
        "asyncio",
        "floor: AnyIO memory object streams on asyncio with uvloop",
        options=UVLOOP,
    ),
    System(
        "raw-anyio-trio",
        "raw_anyio",
        "trio",
        "floor: AnyIO memory object streams on trio",
    ),
    System(
        "asyncio-queue",
        "asyncio_queue",
        "asyncio",
        "raw fan-out: one asyncio.Queue per subscriber, put_nowait to each",
    ),
    System(
        "trio-channels",
        "trio_channels",
        "trio",
        "raw fan-out: one trio memory channel per subscriber, send_nowait to each",
    ),
    System(
        "seed",
        "seed_bus",
        "asyncio",
        "the old bus (purpose_agent.runtime.event_bus), unmodified",
        scale=0.25,
    ),
    System(
        "blinker-sync",
        "blinker_signals",
        "asyncio",
        "blinker Signal.send to sync receivers that put_nowait into the"
        " subscriber's asyncio.Queue",
    ),
    System(
        "blinker-async",
        "blinker_signals",
        "asyncio",
        "blinker Signal.send_async to async receivers that await queue.put",
    ),
    System(
        "aiopubsub",
        "aiopubsub_hub",
        "asyncio",
        "aiopubsub Hub/Publisher, one Subscriber per subscriber, consume() loop",
    ),
    System(
        "pyee",
        "pyee_emitter",
        "asyncio",
        "pyee AsyncIOEventEmitter with async handlers (one task per delivery)",
        scale=0.5,
    ),
    System(
        "broadcaster",
        "broadcaster_memory",
        "asyncio",
        "broadcaster Broadcast('memory://'), one subscribe() per subscriber",
    ),
    System(
        "bubus",
        "bubus_bus",
        "asyncio",
        "bubus EventBus(parallel_handlers=True), one async handler per subscriber",
        scale=0.005,
        max_reps=3,
    ),
]

SYSTEMS: dict[str, System] = {s.name: s for s in _ALL}


def load(system: System) -> Adapter:
    """Import the adapter module of *system* and make its adapter."""
    module = importlib.import_module(f"{__name__}.{system.module}")
    adapter: Adapter = module.make(system.name, system.backend)
    return adapter
