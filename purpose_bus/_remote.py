"""Replay that reaches beyond the local history: a run-scoped subscription on a
bus with a replay source (an open :class:`~purpose_bus.redis.RedisBridge`)
first hands out what the source holds of the run, then the local history and
live events, skipping what it handed out already."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import checkpoint

from ._events import Event
from ._filters import EventFilter
from ._subscription import YIELD_INTERVAL, E_co, Subscription, _check_max_items

if TYPE_CHECKING:
    from ._bus import EventBus

__all__ = ["MergedReplay", "ReplaySource"]

#: Reads what a source holds of the run of a run-scoped filter, in order.
ReplaySource = Callable[[EventFilter], Awaitable[Sequence[Event]]]


class MergedReplay(Subscription[E_co]):
    """A :class:`Subscription` made by ``bus.subscribe(run_id=..., replay=True)``
    (no ``after``) while the bus has replay sources.

    Entering registers it on the local bus first (the bus's history of the run,
    then live events, buffered from that moment), then reads the run from each
    source. It hands out the sources' events first, in their order and up to
    the first terminal event; then its local events, skipping every one whose
    ``span_id`` was handed out already. If a source held the run's terminal
    event, it ends once the local history adds nothing more (the run is over:
    nothing live can follow); otherwise it ends as any run-scoped subscription
    does. Events from a source carry the ``offset`` of the bus that first
    accepted them. Its statistics count local events only; a local event
    skipped as already handed out counts as delivered.
    """

    __slots__ = ("_backlog", "_done", "_over", "_seen", "_sources")

    def __init__(
        self,
        bus: EventBus,
        flt: EventFilter,
        *,
        sources: Sequence[ReplaySource],
        **kwargs: Any,
    ) -> None:
        super().__init__(bus, flt, **kwargs)
        self._sources = tuple(sources)
        self._backlog: deque[Event] = deque()
        self._seen: set[str] = set()
        self._over = False  # a source held the run's terminal event
        self._done = False  # ... and everything after it was handed out

    async def __aenter__(self) -> MergedReplay[E_co]:
        """Register with the bus, then read the run from every replay source.
        A cancellation point; cancelled (or failing) while reading, it closes
        the subscription and leaves nothing registered.

        :raises BusClosed: if the bus is not open (the subscription is closed)
        :raises RuntimeError: if this subscription was entered or closed before
        :raises Exception: what a source raises (for a bridge, a lost
            connection to Redis after its retries)
        """
        await super().__aenter__()
        try:
            for source in self._sources:
                for event in await source(self._filter):
                    if event.span_id in self._seen:
                        continue
                    self._backlog.append(event)
                    self._seen.add(event.span_id)
                    if event.terminal:
                        self._over = True
                        break
                if self._over:
                    break
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._done = False  # closed, not ended: receive raises ClosedResourceError
        self._backlog.clear()
        super().close()

    def receive_nowait(self) -> E_co:
        if self._done:
            raise anyio.EndOfStream
        if self._backlog:
            if self._closed:
                raise anyio.ClosedResourceError
            return self._backlog.popleft()  # type: ignore[return-value]
        seen = self._seen
        while True:
            try:
                event = super().receive_nowait()
            except anyio.WouldBlock:
                if not self._over:
                    raise
                # The run is over and nothing local is left: end (unregistered).
                Subscription.close(self)
                self._done = True
                raise anyio.EndOfStream from None
            if event.span_id not in seen:
                return event

    async def _ready(self) -> None:
        """The cancellation check (or, every YIELD_INTERVAL events handed out,
        the yield) of a receive that will not wait."""
        if self._streak < YIELD_INTERVAL:
            await self._cancelled_check()
        else:
            self._streak = 0
            await checkpoint()

    async def __anext__(self) -> E_co:
        if self._over or self._backlog:
            # Nothing to wait for: hand out what is ready, or end.
            await self._ready()
            try:
                event = self.receive_nowait()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            self._streak += 1
            return event
        seen = self._seen
        while True:
            event = await super().__anext__()
            if event.span_id not in seen:
                return event

    async def receive_batch(self, max_items: int = YIELD_INTERVAL) -> list[E_co]:
        """As :meth:`Subscription.receive_batch`, in this class's order: the
        source's events, then local ones not handed out already."""
        if not (self._over or self._backlog):
            seen = self._seen
            while True:
                batch = await super().receive_batch(max_items)
                fresh = [event for event in batch if event.span_id not in seen]
                if fresh:
                    return fresh
        _check_max_items(max_items)
        await self._ready()
        limit = max(1, min(max_items, YIELD_INTERVAL - self._streak))
        batch = []
        try:
            while len(batch) < limit:
                batch.append(self.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            if not batch:
                raise  # EndOfStream: WouldBlock needs an empty backlog, not over
        self._streak += len(batch)
        return batch
