"""The old bus's own usage example (the docstrings of its ``EventBus`` and
``parallel_merge``), ported to purpose_bus line by line.

Each old line is quoted in a comment (``old:``) above what replaces it; the
README's "Coming from the old bus" explains every change. Run it with
``python examples/old_bus_ported.py`` (add ``trio`` to run it on trio).
"""

from __future__ import annotations

import sys

import anyio
from anyio.abc import TaskStatus

from purpose_bus import (
    BusClosed,
    Event,
    EventBus,
    MessageDelta,
    ReasoningSummary,
    RunFinished,
    RunStarted,
    Visibility,
    parallel_merge,
)


def show(event: Event) -> str:
    # old: print(event.kind, event.payload)
    # kind is a str ("message.delta"), not an EventKind; a token's text is the
    # field MessageDelta.text, not payload["text"].
    text = event.text if isinstance(event, MessageDelta) else ""
    return f"{event.kind} {text}".rstrip()


async def subscriber(
    bus: EventBus, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    # old: async for event in bus.subscribe(visibility=Visibility.PUBLIC):
    async with bus.subscribe(visibility=Visibility.PUBLIC) as sub:
        # Registered: from here on no event can miss it. The old pattern
        # (create_task, then sleep and hope the generator had started) raced.
        task_status.started()
        # Unscoped, it ends when the bus closes; the old one stopped at the first
        # run.finished or run.error of any run. Scope it to a run
        # (subscribe(run_id=...)) to end with that run.
        async for event in sub:
            print("subscriber:", show(event))


async def main() -> None:
    # The task group encloses the bus: leaving the bus's block closes it, which
    # ends the unscoped subscription, and then the task group waits for its
    # subscriber. The other way round the two would wait for each other.
    # old: bus = EventBus(max_queue_size=1000)
    async with anyio.create_task_group() as tg, EventBus(buffer_size=1000) as bus:
        await tg.start(subscriber, bus)

        # old: bus.emit(event)  # Publish (can be called from sync or async context)
        bus.emit(RunStarted(run_id="abc123"))
        # old: PAEvent(kind=EventKind.TOKEN, payload={"text": "Hello"})
        bus.emit(MessageDelta(run_id="abc123", lane_id="lane_a", text="Hello"))
        # old: bus.emit_sync(event)  # from a thread; publish_from_thread waits
        # for the loop, so this event is stamped before the run's end
        await anyio.to_thread.run_sync(
            bus.publish_from_thread,
            MessageDelta(run_id="abc123", lane_id="lane_b", text="world"),
        )
        # Not PUBLIC: the subscriber above does not see it (as before).
        bus.emit(
            ReasoningSummary(
                run_id="abc123",
                summary="greeted the user",
                visibility=Visibility.INTERNAL,
            )
        )
        bus.emit(RunFinished(run_id="abc123"))
        # The old subscriber stopped at abc123's end; this one sees the next run.
        bus.emit(RunStarted(run_id="def456"))

        # old: events = bus.replay(run_id="abc123")  # Replay (late subscribers)
        # The old replay returned every visibility; the default is now PUBLIC.
        events = bus.replay(run_id="abc123", visibility=Visibility.PRIVATE)
        print("replay:", [show(event) for event in events])
        # old: bus.replay(run_id, lane_id, since_seq): since_seq by keyword
        after_first = bus.replay(run_id="abc123", lane_id="main", since_seq=1)
        print("replay since seq 1, lane main:", [e.kind for e in after_first])

        # old: bus.history_size, bus.subscriber_count
        stats = bus.statistics()
        print("history:", stats.history, "subscriptions:", len(stats.subscriptions))

        # old: merged = parallel_merge({
        # old:     "lane_a": [event1, event2],
        # old:     "lane_b": [event3, event4],
        # old: })
        merged = parallel_merge(
            {
                "lane_a": [e for e in events if e.lane_id == "lane_a"],
                "lane_b": [e for e in events if e.lane_id == "lane_b"],
            }
        )
        print("merged:", [show(event) for event in merged])
        # old: bus.close()  # leaving the block closes the bus

    # old: emit after close was ignored; it now raises BusClosed.
    try:
        bus.emit(RunStarted(run_id="late"))
    except BusClosed as exc:
        print("after close:", type(exc).__name__)


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
