"""Tests of replay sources: ``subscribe(run_id=..., replay=True)`` on a bus that
can read runs from beyond its history (what an open ``RedisBridge`` does; here
a source in memory, so that every case runs fast on both backends; the Redis
cases are in ``test_redis.py``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import anyio
import pytest
from anyio.lowlevel import checkpoint
from attrs import evolve
from helpers import all_tasks_blocked, delta, drain, texts
from hypothesis import given
from hypothesis import strategies as st

from purpose_bus import (
    Event,
    EventBus,
    Log,
    MessageDelta,
    RunFinished,
    RunStarted,
    Subscription,
    Visibility,
)
from purpose_bus._bus import bus_seam
from purpose_bus._remote import ReplaySource

PRIVATE = Visibility.PRIVATE


class Source:
    """Holds runs of "another process" (events as that process stamped them),
    or of this one (*own*: events this bus stamped), and names them as a
    bridge does: by the bus that stamped them and its offset."""

    def __init__(self, events: Sequence[Event] = (), *, own: bool = False) -> None:
        self.events = list(events)
        self.origin = "here" if own else "elsewhere"
        self.asked: list[str] = []
        self.gate: anyio.Event | None = None
        self.error: BaseException | None = None
        self.imported: dict[int, Hashable] = {}  # local offset -> identity

    async def read(self, run_id: str) -> list[tuple[Hashable, Event]]:
        self.asked.append(run_id)
        if self.gate is not None:
            await self.gate.wait()
        await checkpoint()
        if self.error is not None:
            raise self.error
        return [((self.origin, e.offset), e) for e in self.events if e.run_id == run_id]

    def identity(self, event: Event) -> Hashable:
        return self.imported.get(event.offset, ("here", event.offset))

    async def ingest(self, bus: EventBus, event: Event) -> Event | None:
        """Import *event* (as stamped elsewhere) into *bus*, as a bridge does."""
        accepted = await bus_seam(bus).ingest(event, self)
        if accepted is not None:
            self.imported[accepted.offset] = ("elsewhere", event.offset)
        return accepted


def add_source(bus: EventBus, source: Source) -> Callable[[], None]:
    return bus_seam(bus).add_replay_source(ReplaySource(source.read, source.identity))


async def elsewhere(*events: Event) -> list[Event]:
    """*events* as another bus stamps them (their own offsets, seq, span ids)."""
    stamped: list[Event] = []
    async with EventBus() as other:
        for event in events:
            published = await other.publish(event)
            assert published is not None
            stamped.append(published)
    return stamped


class TestWhenASourceIsUsed:
    async def test_only_run_scoped_replays_without_after(self) -> None:
        async with EventBus() as bus:
            source = Source()
            remove = add_source(bus, source)
            async with bus.subscribe(run_id="r1", replay=True):
                assert source.asked == ["r1"]
            for sub in [
                bus.subscribe(run_id="r1"),
                bus.subscribe(replay=True),
                bus.subscribe(run_id=["r1", "r2"], replay=True),
                bus.subscribe(run_id="r1", replay=True, after=0),
            ]:
                async with sub:
                    pass
            assert source.asked == ["r1"]
            remove()
            async with bus.subscribe(run_id="r1", replay=True):
                pass
            assert source.asked == ["r1"]

    async def test_a_source_added_after_subscribe_is_not_asked(self) -> None:
        """Only subscriptions made and entered while a source is registered
        reach into it (README, Limits)."""
        async with EventBus() as bus:
            sub = bus.subscribe(run_id="r1", replay=True)
            source = Source()
            add_source(bus, source)
            async with sub:
                pass
        assert source.asked == []

    async def test_a_source_removed_before_entering_is_not_asked(self) -> None:
        """The sources are those of the bus when the subscription is entered (a
        bridge closed in between is not read)."""
        source = Source(await elsewhere(delta("remote")))
        async with EventBus() as bus:
            remove = add_source(bus, source)
            bus.emit(delta("local"))
            sub = bus.subscribe(run_id="r1", replay=True)
            remove()
            async with sub:
                assert texts(drain(sub)) == ["local"]
        assert source.asked == []

    async def test_the_source_is_asked_for_the_whole_run(self) -> None:
        """The filters apply here, so that the source's terminal event ends the
        subscription even when the filters skip it."""
        remote = await elsewhere(
            RunStarted(run_id="r1"),
            delta("a", lane_id="a"),
            Log(run_id="r1", lane_id="a", message="m"),
            delta("b", lane_id="b"),
            RunFinished(run_id="r1"),
        )
        source = Source(remote)
        async with EventBus() as bus:
            add_source(bus, source)
            sub = bus.subscribe(
                run_id="r1", lane_id="a", kinds=MessageDelta, replay=True
            )
            async with sub:
                with anyio.fail_after(5):
                    assert texts([e async for e in sub]) == ["a"]
        assert source.asked == ["r1"]


class TestOrder:
    async def test_source_first_then_history_then_live_each_once(self) -> None:
        remote = await elsewhere(RunStarted(run_id="r1"), *map(delta, "abc"))
        async with EventBus() as bus:
            source = Source(remote)
            add_source(bus, source)
            # The local bus holds some of them (imported), and one of its own.
            for event in remote[2:]:
                await source.ingest(bus, event)
            bus.emit(delta("local"))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                bus.emit(delta("live"))
                got = drain(sub)
                assert [e.span_id for e in got[:4]] == [e.span_id for e in remote]
                assert texts(got) == ["a", "b", "c", "local", "live"]
                bus.emit(RunFinished(run_id="r1"))
                with anyio.fail_after(5):
                    rest = [e async for e in sub]
                assert [e.kind for e in rest] == ["run.finished"]
                # Local events skipped as handed out already count as delivered.
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped, stats.buffered) == (5, 0, 0)

    @pytest.mark.parametrize("mode", ["async for", "receive_batch"])
    async def test_what_the_source_lacks_comes_in_order_and_the_end_last(
        self, mode: str
    ) -> None:
        """The bus that produced a run: Redis holds its public events only (a
        bridge at level PUBLIC); a PRIVATE late joiner gets every event once in
        offset order, the terminal last, then the end."""
        async with EventBus() as bus:
            for event in [
                RunStarted(run_id="r1"),
                delta("a", lane_id="x"),
                MessageDelta(run_id="r1", lane_id="x", text="p", visibility=PRIVATE),
                delta("b"),
                MessageDelta(run_id="r1", text="i", visibility=Visibility.INTERNAL),
                RunFinished(run_id="r1"),
            ]:
                bus.emit(event)
            everything = bus.replay(run_id="r1", visibility=PRIVATE)
            public = [e for e in everything if e.visibility == Visibility.PUBLIC]
            add_source(bus, Source(public, own=True))
            sub = bus.subscribe(run_id="r1", replay=True, visibility=PRIVATE)
            async with sub:
                with anyio.fail_after(5):
                    got = await receive(sub, len(everything), mode, 2)
                assert got == everything
                with pytest.raises(anyio.EndOfStream):
                    await sub.receive()
                with pytest.raises(anyio.EndOfStream):
                    sub.receive_nowait()
                assert bus.statistics().subscriptions == ()
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped, stats.buffered) == (6, 0, 0)
            with pytest.raises(anyio.ClosedResourceError):
                await sub.receive()

    async def test_what_only_the_history_holds_goes_by_its_lanes_seq(self) -> None:
        """No event is in both: a local one goes before the first source event
        of its lane with a higher ``seq``."""
        remote = await elsewhere(
            delta("a"),
            MessageDelta(run_id="r1", text="p", visibility=PRIVATE),
            delta("b"),
        )
        async with EventBus() as bus:
            source = Source([remote[0], remote[2]])  # Redis holds the public ones
            add_source(bus, source)
            await source.ingest(bus, remote[1])  # the history, the private one
            sub = bus.subscribe(run_id="r1", replay=True, visibility=PRIVATE)
            async with sub:
                assert texts(drain(sub)) == ["a", "p", "b"]
                assert sub.statistics().delivered == 1

    async def test_a_local_event_after_the_sources_terminal_is_counted_dropped(
        self,
    ) -> None:
        """The run ended elsewhere; this bus, not knowing it, accepts one more
        event of it after the subscription was entered: it is not handed out
        after the terminal, and it is counted as dropped, not lost silently."""
        remote = await elsewhere(RunStarted(run_id="r1"), RunFinished(run_id="r1"))
        async with EventBus() as bus:
            add_source(bus, Source(remote))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                bus.emit(delta("late"))
                with anyio.fail_after(5):
                    got = [e.kind async for e in sub]
                assert got == ["run.started", "run.finished"]
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped, stats.buffered) == (0, 1, 0)

    async def test_nothing_in_the_source_is_plain_replay(self) -> None:
        async with EventBus() as bus:
            add_source(bus, Source())
            bus.emit(delta("a"))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                bus.emit(delta("b"))
                assert texts(drain(sub)) == ["a", "b"]


class TestCancellationAndFailure:
    async def test_cancelled_while_reading_the_source_leaves_nothing(self) -> None:
        source = Source()
        source.gate = anyio.Event()
        async with EventBus() as bus:
            add_source(bus, source)
            sub = bus.subscribe(run_id="r1", replay=True)
            with anyio.CancelScope() as scope:

                async def cancel_when_reading() -> None:
                    await all_tasks_blocked()
                    assert source.asked
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when_reading)
                    async with sub:
                        pytest.fail("entered although cancelled")
            assert scope.cancelled_caught
            assert bus.statistics().subscriptions == ()
            with pytest.raises(anyio.ClosedResourceError):
                sub.receive_nowait()

    async def test_a_failing_source_closes_the_subscription(self) -> None:
        source = Source()
        source.error = ConnectionError("redis is down")
        async with EventBus() as bus:
            add_source(bus, source)
            sub = bus.subscribe(run_id="r1", replay=True)
            with pytest.raises(ConnectionError, match="redis is down"):
                async with sub:
                    pytest.fail("entered although the source failed")
            assert bus.statistics().subscriptions == ()
            with pytest.raises(anyio.ClosedResourceError):
                await sub.receive()


class TestReceiving:
    async def test_receive_nowait_and_close(self) -> None:
        remote = await elsewhere(delta("a"), delta("b"))
        async with EventBus() as bus:
            add_source(bus, Source(remote))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                assert texts([sub.receive_nowait()]) == ["a"]
                assert texts([sub.receive_nowait()]) == ["b"]
                with pytest.raises(anyio.WouldBlock):
                    sub.receive_nowait()
                sub.close()
                with pytest.raises(anyio.ClosedResourceError):
                    sub.receive_nowait()
                with pytest.raises(anyio.ClosedResourceError):
                    await sub.receive()

    async def test_visibility_is_the_sources_business_and_kept(self) -> None:
        remote = await elsewhere(
            delta("public"),
            MessageDelta(run_id="r1", text="internal", visibility=Visibility.INTERNAL),
        )
        async with EventBus() as bus:
            add_source(bus, Source(remote))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                assert texts(drain(sub)) == ["public"]


async def receive(
    sub: Subscription[Event], count: int, mode: str, max_items: int
) -> list[Event]:
    """*count* events from *sub*, received the way *mode* says."""
    got: list[Event] = []
    while len(got) < count:
        if mode == "receive_batch":
            batch = await sub.receive_batch(max_items)
            assert 1 <= len(batch) <= max_items
            got += batch
        elif mode == "async for":
            got.append(await sub.__anext__())
        else:
            got.append(sub.receive_nowait())
    return got


MODES = ["receive_nowait", "receive", "async for", "receive_batch", "batches"]


async def take(sub: Subscription[Event], mode: str, count: int | None) -> list[Event]:
    """*count* events from *sub* (``None``: up to its end; ``receive_nowait``:
    what is ready), received the way *mode* says, with ``max_items=2``."""
    got: list[Event] = []
    if mode == "receive_nowait":
        while count is None or len(got) < count:
            try:
                got.append(sub.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return got
    batches = sub.batches(2)
    with anyio.fail_after(5):
        while count is None or len(got) < count:
            try:
                if mode == "receive":
                    got.append(await sub.receive())
                elif mode == "async for":
                    got.append(await anext(sub))
                elif mode == "receive_batch":
                    got += await sub.receive_batch(2)
                else:
                    got += await anext(batches)
            except (anyio.EndOfStream, StopAsyncIteration):
                break
    return got


class TestEveryReceiveMethod:
    """The merged replay is the subscription's reader, the one hook of every
    receive: a way of receiving that took from the buffer past it would lose
    what only the source holds (as an ``async for`` that skipped an override
    once did) or hand out twice what both hold."""

    @pytest.mark.parametrize("mode", MODES)
    async def test_the_same_sequence_when_the_run_ends_here(self, mode: str) -> None:
        """The source holds the run's start; the local history one of its
        events and one of its own; live, a copy of an event the source gave
        (skipped), new events, and the end."""
        remote = await elsewhere(
            RunStarted(run_id="r1"), *map(delta, "abc"), delta("d")
        )
        async with EventBus() as bus:
            source = Source(remote[:4])
            add_source(bus, source)
            await source.ingest(bus, remote[2])  # "b": both hold it
            bus.emit(delta("local"))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                await source.ingest(bus, remote[3])  # "c" again: skipped
                got = await take(sub, mode, 4)
                await source.ingest(bus, remote[4])  # "d": only live
                bus.emit(delta("live"))
                bus.emit(RunFinished(run_id="r1"))
                got += await take(sub, mode, None)
                assert [e.kind for e in got[:1] + got[-1:]] == [
                    "run.started",
                    "run.finished",
                ]
                assert texts(got) == ["a", "b", "c", "local", "d", "live"]
                assert [e.span_id for e in got[:4]] == [e.span_id for e in remote[:4]]
                with pytest.raises(anyio.EndOfStream):
                    sub.receive_nowait()
                with pytest.raises(anyio.EndOfStream):
                    await sub.receive()
                # Local ones: b, local, the copy of c, d, live, the end.
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped, stats.buffered) == (6, 0, 0)

    @pytest.mark.parametrize("mode", MODES)
    async def test_the_same_sequence_when_the_source_saw_the_end(
        self, mode: str
    ) -> None:
        """The run ended elsewhere: what only the source holds, the end, and
        then nothing (a copy of a merged event that arrives live is skipped,
        an event after the end counted as dropped)."""
        remote = await elsewhere(
            RunStarted(run_id="r1"), delta("a"), delta("b"), RunFinished(run_id="r1")
        )
        async with EventBus() as bus:
            source = Source(remote)
            add_source(bus, source)
            await source.ingest(bus, remote[1])  # "a": both hold it
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                got = await take(sub, mode, 1)
                await source.ingest(bus, remote[2])  # "b" again: skipped
                bus.emit(delta("late"))  # after the end: dropped
                got += await take(sub, mode, None)
                assert got == [remote[0], bus.replay(run_id="r1")[0], *remote[2:]]
                with pytest.raises(anyio.EndOfStream):
                    await sub.receive()
                assert bus.statistics().subscriptions == ()
                stats = sub.statistics()
                assert (stats.delivered, stats.dropped, stats.buffered) == (2, 1, 0)


class TestGapless:
    @given(
        shapes=st.lists(st.sampled_from(["new", "evolved", "again"]), max_size=10),
        finished=st.booleans(),
        cuts=st.lists(st.integers(0, 12), min_size=3, max_size=3),
        early=st.integers(0, 12),
        mode=st.sampled_from(["receive_nowait", "receive_batch", "async for"]),
        max_items=st.integers(1, 4),
    )
    async def test_every_event_once_in_order(
        self,
        shapes: list[str],
        finished: bool,
        cuts: list[int],
        early: int,
        mode: str,
        max_items: int,
    ) -> None:
        """A run of *n* events: Redis holds the first *a* of them (what was
        written when it was read), the local bus a stretch ``[b, c)`` with
        ``b <= a`` (it joined the run late), and the rest arrives live after
        entering (*early* of it before the first receive). Every event is
        handed out once, in the run's order, and the subscription ends after
        the terminal event (if there is one). The deltas are new objects,
        evolved copies of the one before (same ``span_id``), or the one before
        emitted again: distinct events all the same."""
        run: list[Event] = [RunStarted(run_id="r1")]
        for i, shape in enumerate(shapes):
            last = run[-1]
            if shape == "new" or not isinstance(last, MessageDelta):
                run.append(delta(str(i)))
            else:
                run.append(last if shape == "again" else evolve(last, text=str(i)))
        if finished:
            run.append(RunFinished(run_id="r1"))
        remote = await elsewhere(*run)
        n = len(remote)
        a, b, c = (min(cut, n) for cut in cuts)
        a, b = max(a, b), min(a, b)  # b <= a: together they reach back to 0
        c = max(b, c)
        async with EventBus() as bus:
            source = Source(remote[:a])
            add_source(bus, source)
            for event in remote[b:c]:
                await source.ingest(bus, event)
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                live = remote[c:]
                for event in live[:early]:
                    await source.ingest(bus, event)
                got = drain(sub) if mode == "receive_nowait" else []
                for event in live[early:]:
                    await source.ingest(bus, event)
                with anyio.fail_after(5):
                    got += await receive(sub, n - len(got), mode, max_items)
                assert [(e.seq, e.ts, e.span_id) for e in got] == [
                    (e.seq, e.ts, e.span_id) for e in remote
                ]
                if finished:
                    with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                        await sub.receive()
                else:
                    with pytest.raises(anyio.WouldBlock):
                        sub.receive_nowait()
                # Every event of the local bus it matched was handed out once
                # (the copies of merged ones are counted as they are skipped);
                # one that ended at the source's terminal matched fewer.
                stats = sub.statistics()
                assert stats.dropped == stats.buffered == 0
                assert stats.delivered <= c - b + len(live)
                if not finished:
                    assert stats.delivered == c - b + len(live)


class TestOtherThreads:
    async def test_closing_from_another_thread_raises_and_changes_nothing(
        self,
    ) -> None:
        remote = await elsewhere(delta("a"), delta("b"), RunFinished(run_id="r1"))
        async with EventBus() as bus:
            add_source(bus, Source(remote))
            async with bus.subscribe(run_id="r1", replay=True) as sub:
                with pytest.raises(RuntimeError, match="event loop the bus runs on"):
                    await anyio.to_thread.run_sync(sub.close)
                with anyio.fail_after(5):
                    got = [e async for e in sub]
                assert texts(got) == ["a", "b"]
                assert got[-1].kind == "run.finished"


class TestAReceiverWaitingWhileEntering:
    @pytest.mark.parametrize("source_holds", [True, False])
    async def test_is_woken_when_the_sources_were_read(
        self, source_holds: bool
    ) -> None:
        """A task that holds the subscription and waits in receive() while
        another task enters it (and reads the source) gets the first event once
        the source was read: the merged one, or the local history when the
        source holds nothing of the run; nothing live need arrive to wake it."""
        source = Source(await elsewhere(delta("remote"))) if source_holds else Source()
        source.gate = anyio.Event()
        got: list[Event] = []
        async with EventBus() as bus:
            add_source(bus, source)
            if not source_holds:
                bus.emit(delta("local"))
            sub = bus.subscribe(run_id="r1", replay=True)
            entered = anyio.Event()

            async def enter() -> None:
                async with sub:
                    await entered.wait()

            async def receive() -> None:
                got.append(await sub.receive())

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(enter)
                    await all_tasks_blocked()  # reading the source
                    tg.start_soon(receive)
                    await all_tasks_blocked()  # waiting in receive()
                    source.gate.set()
                    await all_tasks_blocked()
                    entered.set()
        assert texts(got) == (["remote"] if source_holds else ["local"])
