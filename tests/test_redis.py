"""The Redis Streams bridge (:mod:`purpose_bus.redis`) against a real
redis-server, on asyncio and on trio.

Redis is found through ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``);
if nothing answers there, a ``redis-server`` of the tests' own is started on a
free port for the session. Without either the tests are skipped, or fail when
``PURPOSE_BUS_REQUIRE_REDIS=1``. Every test has a key prefix of its own and
deletes its keys.

Other processes are real subprocesses (``tests/redis_procs/worker.py``), on the
test's backend. Nothing sleeps to synchronise: waits are bounded by
``fail_after``; what another process (or Redis) does is observed by polling
with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import coredis
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from coredis.exceptions import RedisError

from purpose_bus import (
    BusClosed,
    Event,
    EventBus,
    EventsDropped,
    Log,
    MessageDelta,
    Overflow,
    RunFinished,
    RunStarted,
    Visibility,
    decode,
    encode,
)
from purpose_bus._events import stamped
from purpose_bus.redis import BridgeStatistics, RedisBridge, partition_of

DEFAULT_URL = "redis://127.0.0.1:6379/0"
WORKER = Path(__file__).parent / "redis_procs" / "worker.py"
REQUIRE = os.environ.get("PURPOSE_BUS_REQUIRE_REDIS") == "1"

_PING = """
import sys, anyio, coredis
async def main():
    async with coredis.Redis.from_url(sys.argv[1]) as client:
        with anyio.fail_after(5):
            await client.ping()
anyio.run(main)
"""


# -- finding Redis -----------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (and PURPOSE_BUS_REQUIRE_REDIS=1)")
    pytest.skip(reason)


def _answers(url: str) -> bool:
    """Whether a Redis answers PING at *url* (through coredis, in a separate
    process, so passwords and TLS in the URL are honoured)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PING, url], capture_output=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pongs(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _redis_server() -> Iterator[str | None]:
    """Start a redis-server of the tests' own on a free port (no persistence);
    yield its URL, or ``None`` if none could be started."""
    server = shutil.which("redis-server")
    if server is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory:
        port = _free_port()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", directory]
        process = subprocess.Popen(
            [server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while not _pongs(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.02)  # polling a server start, bounded by the deadline
            yield f"redis://127.0.0.1:{port}/0" if _pongs(port) else None
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL``'s Redis, or one of the tests' own."""
    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    with _redis_server() as own:
        if own is None:
            _unavailable(f"no Redis answers at {url}, and no redis-server started")
        assert own is not None
        yield own


@pytest.fixture(scope="session")
def own_redis_url(redis_url: str) -> Iterator[str]:
    """For the tests that act on the whole server (``CLIENT PAUSE``, ``SCRIPT
    FLUSH``): a redis-server of the tests' own when one can be started, so as
    not to disturb others using ``REDIS_URL``'s; else that one."""
    with _redis_server() as own:
        yield own or redis_url


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    name = f"pbtest-{uuid.uuid4().hex[:12]}"
    yield name
    await _delete_keys(redis_url, name)


@pytest.fixture
async def own_prefix(own_redis_url: str) -> AsyncIterator[str]:
    """:func:`prefix`, on :func:`own_redis_url`."""
    name = f"pbtest-{uuid.uuid4().hex[:12]}"
    yield name
    await _delete_keys(own_redis_url, name)


async def _delete_keys(url: str, prefix: str) -> None:
    async with coredis.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{{{prefix}*")]
        if keys:
            await client.delete(keys)


# -- helpers -------------------------------------------------------------------------


@asynccontextmanager
async def node(
    url: str, prefix: str, **options: Any
) -> AsyncIterator[tuple[EventBus, RedisBridge]]:
    """A bus with a bridge: one process's view of the bus."""
    async with (
        EventBus(buffer_size=100_000) as bus,
        RedisBridge(bus, url, prefix=prefix, **options) as bridge,
    ):
        yield bus, bridge


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[coredis.Redis[str]]:
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        yield client


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll *predicate* (something another task or process does) until it holds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def receive(sub: Any, count: int, timeout: float = 20) -> list[Event]:
    with anyio.fail_after(timeout):
        return [await sub.receive() for _ in range(count)]


async def kill(raw: coredis.Redis[str], name: str, command: str | None = None) -> int:
    """Kill the connections called *name* (only those running *command*)."""
    killed = 0
    for client in await raw.client_list():
        if client["name"] == name and command in (None, client["cmd"]):
            killed += bool(await raw.client_kill(identifier=int(client["id"])))
    return killed


async def wait_for_command(raw: coredis.Redis[str], name: str, command: str) -> None:
    """Poll Redis until a connection called *name* is running *command*."""

    async def running() -> bool:
        clients = await raw.client_list()
        return any(c["name"] == name and c["cmd"] == command for c in clients)

    with anyio.fail_after(10):
        while not await running():
            await anyio.sleep(0.005)


def described(events: Sequence[Event]) -> list[list[Any]]:
    return [[e.kind, e.lane_id, e.seq, e.span_id] for e in events]


def assert_lane_order(events: Sequence[list[Any]]) -> None:
    """Within each (run, lane) the seqs come 1, 2, 3 ... with nothing twice."""
    by_lane: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for _, lane, seq, _ in events:
        by_lane[lane].append(seq)
    for lane, seqs in by_lane.items():
        assert seqs == sorted(set(seqs)), lane


class Worker:
    """A subprocess with a bridged bus (``tests/redis_procs/worker.py``)."""

    def __init__(self, process: Process, log: Path) -> None:
        assert process.stdout is not None
        self._process = process
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._log = log
        self.hello: dict[str, Any] = {}

    @classmethod
    @asynccontextmanager
    async def run(
        cls, url: str, prefix: str, backend: str, directory: Path
    ) -> AsyncIterator[Worker]:
        log = directory / f"worker-{uuid.uuid4().hex[:8]}.log"
        command = [sys.executable, str(WORKER), url, prefix, backend]
        with log.open("wb") as stderr:
            async with await anyio.open_process(command, stderr=stderr) as process:
                worker = cls(process, log)
                try:
                    worker.hello = await worker.read()
                    yield worker
                    assert await worker.request({"op": "exit"}) == {"closed": True}
                    with anyio.fail_after(10):
                        assert await process.wait() == 0, worker.stderr()
                finally:
                    if process.returncode is None:
                        process.kill()
                        with anyio.CancelScope(shield=True):
                            await process.wait()

    def stderr(self) -> str:
        return self._log.read_text()

    async def read(self) -> Any:
        try:
            with anyio.fail_after(30):
                line = await self._stdout.receive_until(b"\n", 1 << 26)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise AssertionError(f"the worker died:\n{self.stderr()}") from None
        return json.loads(line)

    async def request(self, command: dict[str, Any]) -> Any:
        assert self._process.stdin is not None
        await self._process.stdin.send(json.dumps(command).encode() + b"\n")
        return await self.read()


# -- tests -------------------------------------------------------------------------


class TestAcrossProcesses:
    async def test_two_workers_events_arrive_once_in_lane_order(
        self, redis_url: str, prefix: str, anyio_backend_name: str, tmp_path: Path
    ) -> None:
        async with (
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(buffer_size=100_000) as sub,
            Worker.run(redis_url, prefix, anyio_backend_name, tmp_path) as one,
            Worker.run(redis_url, prefix, anyio_backend_name, tmp_path) as two,
        ):
            answers: dict[str, Any] = {}

            async def emit(worker: Worker, name: str, run: str, lane: str) -> None:
                command = {"op": "emit", "run": run, "count": 300, "lanes": [lane]}
                own = await worker.request(command | {"start": True, "finish": True})
                shared = await worker.request(command | {"run": "shared"})
                answers[name] = own + shared

            async with anyio.create_task_group() as tg:  # both at once
                tg.start_soon(emit, one, "one", "run-1", "a")
                tg.start_soon(emit, two, "two", "run-2", "b")
            expected = answers["one"] + answers["two"]
            received = await receive(sub, len(expected))
            with pytest.raises(anyio.WouldBlock):
                sub.receive_nowait()

            by_run: dict[str, list[list[Any]]] = defaultdict(list)
            for event in received:
                by_run[event.run_id].append(described([event])[0])
            assert by_run["run-1"] == answers["one"][:302]
            assert by_run["run-2"] == answers["two"][:302]
            assert sorted(map(tuple, by_run["shared"])) == sorted(
                map(tuple, answers["one"][302:] + answers["two"][302:])
            )
            assert_lane_order(by_run["shared"])
            stats = bridge.statistics()
            assert stats.imported == len(expected)
            assert stats.lost == stats.skipped == 0
            # Each worker got the other's events once, and its own never back.
            for worker, mine, theirs in ((one, "one", "two"), (two, "two", "one")):
                stats_ = await worker.request(
                    {"op": "wait_imported", "count": len(answers[theirs])}
                )
                assert stats_["imported"] == len(answers[theirs])
                assert stats_["exported"] == len(answers[mine])
                assert stats_["own_skipped"] == len(answers[mine])
                assert stats_["history"]["shared"] == 600
            assert (await one.request({"op": "stats"}))["history"]["run-1"] == 302

    async def test_a_late_joiner_in_a_new_process_replays_a_finished_run(
        self, redis_url: str, prefix: str, anyio_backend_name: str, tmp_path: Path
    ) -> None:
        async with Worker.run(redis_url, prefix, anyio_backend_name, tmp_path) as one:
            command = {"op": "emit", "run": "done", "lanes": ["a", "b"], "count": 50}
            emitted = await one.request(command | {"start": True, "finish": True})
        async with Worker.run(redis_url, prefix, anyio_backend_name, tmp_path) as two:
            replayed = await two.request({"op": "replay", "run": "done"})
        assert replayed["replay"] == emitted
        assert replayed["subscribe"] == emitted
        async with node(redis_url, prefix) as (_, bridge):
            assert described(await bridge.replay(run_id="done")) == emitted

    async def test_killed_connections_mid_stream_resume_without_loss_or_duplicate(
        self, redis_url: str, prefix: str, anyio_backend_name: str, tmp_path: Path
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(run_id="k", buffer_size=100_000) as sub,
            Worker.run(redis_url, prefix, anyio_backend_name, tmp_path) as worker,
        ):
            command = {"op": "emit", "run": "k", "lanes": ["a", "b"]}
            first = await worker.request(command | {"count": 200, "start": True})
            received = await receive(sub, len(first))
            # Both ends lose their connections between two batches: the reader
            # while it is blocked in XREAD, the writer while idle.
            await wait_for_command(raw, bridge.client_name, "xread")
            assert await kill(raw, bridge.client_name) >= 1
            await kill(raw, worker.hello["client_name"])
            second: list[Any] = []

            async def emit_more() -> None:
                second.extend(await worker.request(command | {"count": 1500}))
                second.extend(
                    await worker.request(command | {"count": 0} | {"finish": True})
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(emit_more)
                # ... and again and again while events flow.
                with anyio.fail_after(30):
                    async for event in sub:
                        received.append(event)
                        if len(received) % 500 == 0:
                            await kill(raw, bridge.client_name)
                            await kill(raw, worker.hello["client_name"])
            assert described(received) == first + second
            stats = bridge.statistics()
            assert stats.reconnects >= 1
            assert stats.imported == len(first) + len(second)
            assert stats.lost == stats.skipped == 0
            assert (await worker.request({"op": "stats"}))["exported"] == len(received)


class TestResume:
    async def test_a_batch_in_flight_when_its_connection_dies_is_written_once(
        self, own_redis_url: str, own_prefix: str
    ) -> None:
        redis_url, prefix = own_redis_url, own_prefix  # it acts on the whole server
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, bridge),
            node(redis_url, prefix) as (two, _),
            two.subscribe(run_id="r") as sub,
        ):
            assert await raw.client_pause(3000, coredis.PureToken.WRITE)
            try:  # the writer's script waits in Redis; its connection dies
                for i in range(5):
                    one.emit(MessageDelta(run_id="r", text=str(i)))
                one.emit(RunFinished(run_id="r"))
                await wait_for_command(raw, bridge.client_name, "evalsha")
                assert await kill(raw, bridge.client_name, "evalsha") == 1
            finally:
                await raw.client_unpause()
            with anyio.fail_after(10):
                received = [event async for event in sub]
                await bridge.flush()
            assert described(received) == described(one.replay(run_id="r"))
            assert bridge.statistics().reconnects == 1
            assert await raw.xlen(bridge.run_key("r")) == 6

    async def test_a_batch_sent_again_is_applied_once(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
        ):
            events = [stamped(Log(run_id="r", message=str(i)), i, i) for i in (1, 2)]
            bridge._pending.extend(events)
            batches, taken = bridge._prepare()
            assert taken == 2
            await bridge._send(batches, 0, anyio.Event())
            await bridge._send(batches, 0, anyio.Event())  # as after a lost reply
            assert await raw.xlen(bridge.feed_key("r")) == 2
            assert await raw.xlen(bridge.run_key("r")) == 2
            bus.emit(Log(run_id="r", message="next"))  # the next batch goes in
            await bridge.flush()
            assert await raw.xlen(bridge.feed_key("r")) == 3

    async def test_the_reader_resumes_after_its_blocked_read_is_killed(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, _),
            node(redis_url, prefix) as (two, bridge),
            two.subscribe(run_id="r") as sub,
        ):
            await wait_for_command(raw, bridge.client_name, "xread")
            assert await kill(raw, bridge.client_name, "xread") == 1
            for i in range(10):
                one.emit(MessageDelta(run_id="r", text=str(i)))
            one.emit(RunFinished(run_id="r"))
            with anyio.fail_after(10):
                received = [event async for event in sub]
            assert described(received) == described(one.replay(run_id="r"))
            await wait_until(lambda: bridge.statistics().reconnects == 1)

    async def test_a_reader_left_behind_by_trimming_counts_what_it_lost(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            node(redis_url, prefix, maxlen=10) as (one, writer),
            node(redis_url, prefix) as (two, bridge),
            two.subscribe(run_id="r", overflow=Overflow.BLOCK, buffer_size=1) as sub,
        ):
            one.emit(Log(run_id="r", message="first"))
            one.emit(Log(run_id="r", message="second"))  # its reader waits here
            await wait_until(lambda: two.statistics().emitted == 1)
            for i in range(1000):  # ... while the feed is trimmed past it
                one.emit(Log(run_id="r", message=str(i)))
            one.emit(RunFinished(run_id="r"))
            await writer.flush()
            with anyio.fail_after(10):
                received = [event async for event in sub]
            stats = bridge.statistics()
            assert 0 < stats.lost < 1000
            assert len(received) + stats.lost == 1003
            assert received[-1].kind == "run.finished"

    async def test_scripts_lost_by_the_server_are_loaded_again(
        self, own_redis_url: str, own_prefix: str
    ) -> None:
        redis_url, prefix = own_redis_url, own_prefix  # it acts on the whole server
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
        ):
            await raw.script_flush()
            bus.emit(Log(run_id="r", message="m"))
            with anyio.fail_after(10):
                await bridge.flush()
            assert bridge.statistics().exported == 1
            assert bridge.statistics().reconnects == 0
            assert await raw.xlen(bridge.feed_key("r")) == 1


class TestEcho:
    async def test_a_process_never_receives_its_own_events_back(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            node(redis_url, prefix) as (one, bridge),
            node(redis_url, prefix) as (two, other),
            two.subscribe(run_id="r") as sub,
        ):
            for i in range(20):
                one.emit(Log(run_id="r", message=str(i)))
            one.emit(RunFinished(run_id="r"))
            assert len([event async for event in sub]) == 21
            await wait_until(lambda: bridge.statistics().own_skipped == 21)
            await bridge.flush()
            assert len(one.replay(run_id="r")) == 21
            assert one.statistics().emitted == 21
            stats = bridge.statistics()
            assert (stats.exported, stats.imported) == (21, 0)
            assert other.statistics().imported == 21

    async def test_events_from_redis_are_not_sent_back(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, _),
            node(redis_url, prefix) as (two, bridge),
            two.subscribe(run_id="r") as sub,
        ):
            one.emit(RunFinished(run_id="r"))
            assert len([event async for event in sub]) == 1
            await bridge.flush()
            assert bridge.statistics().exported == 0
            assert await raw.xlen(bridge.feed_key("r")) == 1


class TestVisibility:
    async def test_private_events_never_leave_the_process_by_default(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, bridge),
            node(redis_url, prefix, visibility=Visibility.PRIVATE) as (two, _),
            two.subscribe(run_id="r", visibility=Visibility.PRIVATE) as sub,
        ):
            for level in Visibility:
                one.emit(Log(run_id="r", message=level.name, visibility=level))
            one.emit(RunFinished(run_id="r"))
            received = [event async for event in sub]
            assert [e.visibility for e in received] == [0, 1, 0]
            entries = await raw.xrange(bridge.run_key("r"))
            assert [decode(e.field_values["e"]).visibility for e in entries] == [
                0,
                1,
                0,
            ]
            await bridge.flush()
            assert bridge.statistics().exported == 3

    async def test_a_private_bridge_exports_them_and_an_internal_one_keeps_them_out(
        self, redis_url: str, prefix: str
    ) -> None:
        private = Visibility.PRIVATE
        async with (
            node(redis_url, prefix, visibility=private) as (one, _),
            node(redis_url, prefix, visibility=private) as (two, _),
            node(redis_url, prefix) as (three, internal),
            two.subscribe(run_id="r", visibility=private) as sub2,
            three.subscribe(run_id="r", visibility=private) as sub3,
        ):
            one.emit(Log(run_id="r", message="secret", visibility=private))
            one.emit(RunFinished(run_id="r"))
            assert [e.kind async for e in sub2] == ["log", "run.finished"]
            assert [e.kind async for e in sub3] == ["run.finished"]
            assert internal.statistics().filtered == 1
            assert internal.visibility is Visibility.INTERNAL


class TestBadData:
    async def test_garbage_is_skipped_counted_and_logged_once_per_kind(
        self, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix, max_size=2048) as (bus, bridge),
            bus.subscribe(run_id="g") as sub,
        ):
            feed = bridge.feed_key("g")
            big = encode(stamped(Log(run_id="g", message="x" * 3000), 1, 1))
            notice = EventsDropped(run_id="g", count=1, first_offset=1, last_offset=1)
            garbage: list[dict[str, str | bytes]] = [
                {"x": "y"},  # malformed
                {"e": encode(stamped(RunStarted(run_id="g"), 1, 1))},  # malformed
                {"o": "intruder", "n": "one", "e": b"{}"},  # malformed
                {"o": "intruder", "e": b"not json"},  # undecodable
                {"o": "intruder", "e": b"\xff\xfe"},  # undecodable
                {"o": "intruder", "e": b'{"kind": "no.such.kind"}'},  # undecodable
                {"o": "intruder", "e": big},  # oversized
                {"o": "intruder", "e": encode(notice)},  # refused
            ]
            with caplog.at_level(logging.WARNING, "purpose_bus.redis"):
                for fields in garbage:
                    await raw.xadd(feed, fields)
                end = stamped(RunFinished(run_id="g"), 1, 2)
                await raw.xadd(feed, {"o": "intruder", "e": encode(end)})
                received = [event async for event in sub]
            assert received == [stamped(end, 1, 1)]
            stats = bridge.statistics()
            assert stats.skipped == 8
            assert dict(stats.skipped_by_reason) == {
                "malformed": 3,
                "undecodable": 3,
                "oversized": 1,
                "refused": 1,
            }
            skips = [r.getMessage() for r in caplog.records if "skipped a" in r.message]
            assert len(skips) == 4, skips
            assert stats.imported == 1

    async def test_replay_skips_and_counts_garbage(
        self, redis_url: str, prefix: str
    ) -> None:
        async with raw_client(redis_url) as raw, node(redis_url, prefix) as (_, bridge):
            key = bridge.run_key("g")
            event = stamped(RunStarted(run_id="g"), 1, 1)
            await raw.xadd(key, {"o": "w", "e": b"[1, 2]"})
            await raw.xadd(key, {"o": "w", "e": encode(event)})
            await raw.xadd(key, {"nothing": "here"})
            assert await bridge.replay(run_id="g") == [event]
            assert dict(bridge.statistics().skipped_by_reason) == {
                "undecodable": 1,
                "malformed": 1,
            }

    async def test_the_codec_size_limit_applies_to_remote_events(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            node(redis_url, prefix) as (one, _),
            node(redis_url, prefix, max_size=4096) as (two, small),
            node(redis_url, prefix) as (three, _),
            two.subscribe(run_id="r") as sub2,
            three.subscribe(run_id="r") as sub3,
        ):
            one.emit(Log(run_id="r", message="x" * 8000))
            one.emit(RunFinished(run_id="r"))
            assert [e.kind async for e in sub2] == ["run.finished"]
            assert [e.kind async for e in sub3] == ["log", "run.finished"]
            assert dict(small.statistics().skipped_by_reason) == {"oversized": 1}
            assert len(await small.replay(run_id="r")) == 1

    async def test_entry_numbers_reveal_lost_and_duplicate_entries(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(run_id="r") as sub,
        ):
            for n, seq in ((1, 1), (2, 2), (5, 5), (5, 6), (6, 7)):
                event = stamped(Log(run_id="r", message=str(n)), seq, seq)
                fields: dict[str, str | bytes] = {"o": "w", "n": str(n)}
                fields["e"] = encode(event)
                await raw.xadd(bridge.feed_key("r"), fields)
            received = await receive(sub, 4)
            assert [e.seq for e in received] == [1, 2, 5, 7]
            stats = bridge.statistics()
            assert stats.lost == 2
            assert dict(stats.skipped_by_reason) == {"duplicate": 1}


class TestReplay:
    async def test_replay_reads_a_run_back_with_filters(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            node(redis_url, prefix) as (one, _),
            node(redis_url, prefix) as (_, bridge),
        ):
            one.emit(RunStarted(run_id="r"))
            for i in range(3):
                one.emit(MessageDelta(run_id="r", lane_id="a", text=str(i)))
                one.emit(Log(run_id="r", lane_id="b", message=str(i)))
            one.emit(Log(run_id="other", message="not this run"))
            await wait_until(lambda: bridge.statistics().imported == 8)
            everything = one.replay(run_id="r")
            assert await bridge.replay(run_id="r") == everything
            lane_a = await bridge.replay(run_id="r", lane_id="a")
            assert lane_a == one.replay(run_id="r", lane_id="a")
            later = await bridge.replay(run_id="r", lane_id="b", since_seq=1)
            assert [e.seq for e in later] == [2, 3]
            logs = await bridge.replay(run_id="r", kinds=Log)
            assert [e.lane_id for e in logs] == ["b"] * 3
            assert await bridge.replay(run_id="never") == []

    async def test_replay_reads_long_runs_page_by_page(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (_, bridge),
        ):
            for i in range(2500):
                one.emit(Log(run_id="long", message=str(i)))
            await writer.flush()
            replayed = await bridge.replay(run_id="long")
            assert [e.seq for e in replayed] == list(range(1, 2501))

    async def test_subscribe_with_replay_reaches_back_then_goes_live_without_gap(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix) as (one, writer):
            one.emit(RunStarted(run_id="r"))
            for i in range(30):
                one.emit(MessageDelta(run_id="r", text=str(i)))
            await writer.flush()
            # A joiner whose bridge opens now never saw the events above.
            async with (
                node(redis_url, prefix) as (two, _),
                two.subscribe(run_id="r", replay=True) as sub,
            ):
                assert two.replay(run_id="r") == []
                assert sub.statistics().buffered == 0  # all 31 from Redis
                early = [await sub.receive() for _ in range(10)]
                for i in range(30, 40):
                    one.emit(MessageDelta(run_id="r", text=str(i)))
                one.emit(RunFinished(run_id="r"))
                with anyio.fail_after(10):
                    rest = [event async for event in sub]
                assert sub.statistics().delivered == 11
        assert described(early + rest) == described(one.replay(run_id="r"))

    async def test_subscribe_replay_hands_out_what_history_also_holds_once(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            node(redis_url, prefix) as (one, _),
            node(redis_url, prefix) as (two, bridge),
        ):
            for i in range(20):
                one.emit(MessageDelta(run_id="r", text=str(i)))
            await wait_until(lambda: bridge.statistics().imported == 20)
            async with two.subscribe(run_id="r", replay=True) as sub:
                one.emit(RunFinished(run_id="r"))
                with anyio.fail_after(10):
                    received = [event async for event in sub]
            assert [e.span_id for e in received] == [
                e.span_id for e in two.replay(run_id="r")
            ]

    async def test_subscribe_replay_of_a_finished_run_ends_after_its_terminal(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix) as (one, writer):
            one.emit(RunStarted(run_id="r"))
            one.emit(RunFinished(run_id="r"))
            await writer.flush()
        async with node(redis_url, prefix) as (_, bridge):
            async with bridge.subscribe_replay(run_id="r") as sub:  # the shorthand
                assert [e.kind async for e in sub] == ["run.started", "run.finished"]
                with pytest.raises(anyio.EndOfStream):
                    await sub.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await sub.receive()


class TestLifecycle:
    async def test_events_emitted_just_before_leaving_are_written(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix) as (two, _), two.subscribe() as sub:
            async with node(redis_url, prefix) as (one, bridge):
                for i in range(100):
                    one.emit(Log(run_id="r", message=str(i)))
            assert bridge.statistics().exported == 100
            assert len(await receive(sub, 100)) == 100

    async def test_statistics_count_what_the_bridge_does(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix, max_pending=3) as (bus, bridge):
            for i in range(10):  # no checkpoint: the writer cannot run meanwhile
                bus.emit(Log(run_id="r", message=str(i)))
            bus.emit(RunFinished(run_id="r"))  # terminal: kept even so
            assert bridge.statistics().pending == 4
            await bridge.flush()
            stats = bridge.statistics()
        assert stats == BridgeStatistics(
            exported=4,
            export_dropped=7,
            pending=0,
            batches=1,
            imported=0,
            rejected=0,
            filtered=0,
            own_skipped=stats.own_skipped,
            lost=0,
            skipped=0,
            skipped_by_reason={},
            reconnects=0,
        )

    async def test_what_cannot_be_written_before_the_close_timeout_is_counted(
        self, own_redis_url: str, own_prefix: str
    ) -> None:
        redis_url, prefix = own_redis_url, own_prefix  # it acts on the whole server
        async with raw_client(redis_url) as raw, EventBus() as bus:
            bridge = RedisBridge(bus, redis_url, prefix=prefix, close_timeout=0.1)
            try:
                async with bridge:  # leaving it while Redis holds every write
                    assert await raw.client_pause(3000, coredis.PureToken.WRITE)
                    for i in range(3):
                        bus.emit(Log(run_id="r", message=str(i)))
                    await wait_for_command(raw, bridge.client_name, "evalsha")
                    bus.emit(Log(run_id="r", message="still pending"))
            finally:
                await raw.client_unpause()
        stats = bridge.statistics()
        assert (stats.exported, stats.export_dropped, stats.pending) == (0, 4, 0)

    async def test_an_open_bridge_that_is_never_closed_warns(
        self, redis_url: str, prefix: str
    ) -> None:
        async with EventBus() as bus:
            bridge = RedisBridge(bus, redis_url, prefix=prefix)
            await bridge.__aenter__()
            try:
                with pytest.warns(ResourceWarning, match="never closed"):
                    bridge.__del__()
            finally:
                await bridge.aclose()
            bridge.__del__()  # closed: silent

    async def test_a_write_round_trip_is_bounded_in_bytes(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix) as (bus, bridge):
            for _ in range(3):  # 2 MiB each: two fill a round trip's 4 MiB
                bus.emit(Log(run_id="big", message="x" * (2 << 20)))
            await bridge.flush()
            assert (bridge.statistics().exported, bridge.statistics().batches) == (3, 2)

    async def test_the_bus_rejects_what_its_guards_refuse_from_redis(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
        ):
            event = stamped(Log(run_id="r", message="m", payload={"cot": "x"}), 1, 1)
            await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": encode(event)})
            await wait_until(lambda: bridge.statistics().rejected == 1)
            assert bus.replay() == []

    async def test_the_prefix_keeps_its_partition_count(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix, partitions=4) as (bus, _):
            bridge = RedisBridge(bus, redis_url, prefix=prefix, partitions=8)
            with pytest.raises(ValueError, match="used with 4 partitions"):
                await bridge.__aenter__()
            await bridge.aclose()

    async def test_the_password_in_the_url_reaches_redis(
        self, redis_url: str, prefix: str
    ) -> None:
        parts = urlsplit(redis_url)
        where = f"{parts.hostname}:{parts.port or 6379}"
        netloc = f"someone:wrong-{uuid.uuid4().hex[:6]}@{where}"
        url = urlunsplit(parts._replace(netloc=netloc))
        async with EventBus() as bus:
            with pytest.raises(RedisError):
                async with RedisBridge(bus, url, prefix=prefix):
                    pass

    async def test_a_bridge_needs_an_open_bus_and_is_entered_once(
        self, redis_url: str, prefix: str
    ) -> None:
        with pytest.raises(BusClosed):
            await RedisBridge(EventBus(), redis_url, prefix=prefix).__aenter__()
        async with node(redis_url, prefix) as (_, bridge):
            with pytest.raises(RuntimeError, match="only once"):
                await bridge.__aenter__()
        with pytest.raises(RuntimeError, match="not open"):
            await bridge.replay(run_id="r")
        with pytest.raises(RuntimeError, match="not open"):
            bridge.subscribe_replay(run_id="r")

    async def test_the_bus_closing_first_stops_the_bridge(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix) as (one, _):
            bus = EventBus()
            await bus.__aenter__()
            bridge = RedisBridge(bus, redis_url, prefix=prefix)
            await bridge.__aenter__()
            await bus.aclose()
            one.emit(Log(run_id="r", message="to a closed bus"))
            await bridge.aclose()
            await bus.__aexit__(None, None, None)
            assert bridge.statistics().imported == 0


def test_arguments_are_checked() -> None:
    bus = EventBus()
    with pytest.raises(TypeError):
        RedisBridge("bus", "redis://x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RedisBridge(bus, 6379)  # type: ignore[arg-type]
    for prefix in ("", "a{b", "a}b"):
        with pytest.raises(ValueError, match="prefix"):
            RedisBridge(bus, prefix=prefix)
    with pytest.raises(ValueError, match="maxlen"):
        RedisBridge(bus, maxlen=0)
    with pytest.raises(TypeError, match="partitions"):
        RedisBridge(bus, partitions=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="linger"):
        RedisBridge(bus, linger=-1)
    with pytest.raises(ValueError, match="visibility"):
        RedisBridge(bus, visibility=7)  # type: ignore[arg-type]


def test_keys_put_a_run_and_its_feed_in_one_hash_slot() -> None:
    bridge = RedisBridge(EventBus(), prefix="app", partitions=16)
    run = "run-{42}"
    k = partition_of(run, 16)
    assert bridge.feed_key(run) == f"{{app:{k}}}:feed"
    assert bridge.run_key(run) == f"{{app:{k}}}:run:{run}"
    assert partition_of(run, 16) == partition_of(run, 16) < 16
    assert len({partition_of(f"run-{i}", 16) for i in range(200)}) == 16


class TestReadmeExample:
    async def test_the_readme_example_runs_and_ends(
        self, redis_url: str, prefix: str, anyio_backend: object
    ) -> None:
        """The README's Redis example, as written (on the tests' Redis, with
        the test's prefix, on this backend): it prints what it says and ends."""
        readme = (Path(__file__).parent.parent / "README.md").read_text()
        [code] = [
            block
            for block in re.findall(r"```python\n(.*?)```", readme, re.S)
            if "from purpose_bus.redis import RedisBridge" in block
        ]
        code = code.replace('"redis://localhost:6379/0"', repr(redis_url))
        code = code.replace('prefix="myapp"', f"prefix={prefix!r}")
        name, options = (
            anyio_backend if isinstance(anyio_backend, tuple) else (anyio_backend, {})
        )
        run = f"anyio.run(main, backend={name!r}, backend_options={options!r})"
        code = code.replace("anyio.run(main)", run)
        with anyio.fail_after(60):
            result = await anyio.run_process([sys.executable, "-c", code], check=False)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().splitlines() == [
            "['run.started', 'message.delta', 'run.finished']",
            "run.started 1",
            "message.delta 2",
            "run.finished 3",
        ]
