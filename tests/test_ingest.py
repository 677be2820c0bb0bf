"""The internal hooks bridges use, through the seam: ``ingest`` and ``add_tap``."""

from __future__ import annotations

import logging

import anyio
import pytest
from helpers import all_tasks_blocked, drain

from purpose_bus import (
    EventBus,
    Log,
    MessageDelta,
    Overflow,
    RunFinished,
    decode,
    encode,
)
from purpose_bus._bus import bus_seam
from purpose_bus._events import Event, stamped


def remote(seq: int, **kwargs: object) -> Event:
    event = MessageDelta(run_id="r", lane_id="a", text="x", ts=12.5, **kwargs)  # type: ignore[arg-type]
    return stamped(event, seq, 900 + seq)


class TestIngest:
    async def test_keeps_run_lane_seq_and_ts_and_stamps_a_local_offset(self) -> None:
        async with EventBus() as bus, bus.subscribe() as sub:
            bus.emit(Log(run_id="other", message="m"))
            accepted = await bus_seam(bus).ingest(remote(7), source="bridge")
            assert accepted is not None
            assert (accepted.run_id, accepted.lane_id, accepted.seq) == ("r", "a", 7)
            assert accepted.ts == 12.5
            assert accepted.offset == 2
            assert sub.receive_nowait().run_id == "other"
            assert sub.receive_nowait() == accepted

    async def test_local_events_continue_after_the_remote_seq(self) -> None:
        async with EventBus() as bus:
            await bus_seam(bus).ingest(remote(7), source="bridge")
            local = await bus.publish(MessageDelta(run_id="r", lane_id="a", text="y"))
            assert local is not None
            assert local.seq == 8

    async def test_a_remote_seq_in_the_top_half_leaves_the_local_one(self) -> None:
        """A forged seq near 2**63-1 must not leave local events of the lane
        a seq no codec writes (then a run's end would never be exported)."""
        async with EventBus() as bus:
            await bus_seam(bus).ingest(remote(2**63 - 1), source="bridge")
            local = await bus.publish(MessageDelta(run_id="r", lane_id="a", text="y"))
            assert local is not None
            assert local.seq == 1
            assert decode(encode(local)) == local

    async def test_guards_apply_and_never_raise(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with EventBus(strict=True) as bus:
            with caplog.at_level(logging.WARNING, "purpose_bus"):
                result = await bus_seam(bus).ingest(
                    remote(1, payload={"Chain_Of_Thought": "..."}), source="bridge"
                )
            assert result is None
            assert bus.statistics().rejected == 1
            assert bus.replay() == []

    async def test_a_remote_terminal_event_ends_the_run(self) -> None:
        async with EventBus() as bus, bus.subscribe(run_id="r") as sub:
            terminal = stamped(RunFinished(run_id="r"), 3, 3)
            await bus_seam(bus).ingest(terminal, source="bridge")
            assert await bus_seam(bus).ingest(remote(4), source="bridge") is None
            assert [e.kind async for e in sub] == ["run.finished"]

    async def test_waits_for_a_full_block_subscriber(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
            anyio.create_task_group() as tg,
        ):
            await bus_seam(bus).ingest(remote(1), source="bridge")
            tg.start_soon(bus_seam(bus).ingest, remote(2), "bridge")
            await all_tasks_blocked()
            assert bus.statistics().emitted == 1
            assert sub.receive_nowait().seq == 1
            with anyio.fail_after(5):
                assert (await sub.receive()).seq == 2

    async def test_cancelled_while_waiting_it_leaves_no_trace(self) -> None:
        async with (
            EventBus() as bus,
            bus.subscribe(overflow=Overflow.BLOCK, buffer_size=1) as sub,
        ):
            await bus_seam(bus).ingest(remote(1), source="bridge")
            before = bus.statistics()
            async with anyio.create_task_group() as tg:
                tg.start_soon(bus_seam(bus).ingest, remote(2), "bridge")
                await all_tasks_blocked()
                tg.cancel_scope.cancel()
            assert bus.statistics() == before
            assert [e.seq for e in drain(sub)] == [1]


class TestTaps:
    async def test_a_tap_sees_every_accepted_event_and_its_source(self) -> None:
        seen: list[tuple[int, object]] = []
        async with EventBus() as bus:
            remove = bus_seam(bus).add_tap(
                lambda event, source: seen.append((event.offset, source))
            )
            bus.emit(Log(run_id="r", message="m", payload={"cot": 1}))  # rejected
            bus.emit(Log(run_id="r", message="m"))
            await bus_seam(bus).ingest(remote(5), source="bridge")
            remove()
            bus.emit(Log(run_id="r", message="m"))
        assert seen == [(1, None), (2, "bridge")]

    async def test_a_tap_that_raises_is_logged_and_the_bus_keeps_working(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(event: Event, source: object) -> None:
            raise RuntimeError("tap")

        async with EventBus() as bus, bus.subscribe() as sub:
            bus_seam(bus).add_tap(broken)
            with caplog.at_level(logging.ERROR, "purpose_bus"):
                bus.emit(Log(run_id="r", message="m"))
            assert "a tap raised" in caplog.text
            assert sub.receive_nowait().offset == 1
