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

import contextlib
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
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import coredis
import pytest
from anyio.abc import Process, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from attrs import evolve
from backends import backend_word, run_source
from coredis.exceptions import RedisError
from hypothesis import given
from hypothesis import strategies as st

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


@asynccontextmanager
async def losing_a_script_reply(url: str) -> AsyncIterator[tuple[str, anyio.Event]]:
    """A TCP proxy to the Redis at *url*; yields its URL and an event set once
    it has lost a reply: on the first connection that sends ``EVALSHA`` (the
    writer's script), it passes the request on, so Redis runs it, then closes
    the connection instead of passing the reply back."""
    parts = urlsplit(url)
    lost = anyio.Event()

    async def relay(client: SocketStream) -> None:
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        async with client, await anyio.connect_tcp(host, port) as server:
            script_sent = anyio.Event()

            async def up() -> None:
                async for data in client:
                    if not lost.is_set() and b"evalsha" in data.lower():
                        script_sent.set()
                    await server.send(data)
                tg.cancel_scope.cancel()

            async def down() -> None:
                async for data in server:
                    if script_sent.is_set() and not lost.is_set():
                        lost.set()
                        break
                    await client.send(data)
                tg.cancel_scope.cancel()

            with contextlib.suppress(anyio.BrokenResourceError):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(up)
                    tg.start_soon(down)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as serving:
        serving.start_soon(listener.serve, relay)
        yield urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}")), lost
        serving.cancel_scope.cancel()


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


def contents(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """What tells apart events with one ``span_id``: kind, lane, seq, text."""
    return [
        (e.kind, e.lane_id, e.seq, getattr(e, "text", getattr(e, "message", None)))
        for e in events
    ]


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
        cls, url: str, prefix: str, anyio_backend: object, directory: Path
    ) -> AsyncIterator[Worker]:
        """A worker on the test's backend (uvloop when the test runs on it)."""
        log = directory / f"worker-{uuid.uuid4().hex[:8]}.log"
        backend = backend_word(anyio_backend)
        command = [sys.executable, str(WORKER), url, prefix, backend]
        with log.open("wb") as stderr:
            async with await anyio.open_process(command, stderr=stderr) as process:
                worker = cls(process, log)
                try:
                    worker.hello = await worker.read()
                    assert worker.hello["backend"] == backend
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
        self, redis_url: str, prefix: str, anyio_backend: object, tmp_path: Path
    ) -> None:
        async with (
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(buffer_size=100_000) as sub,
            Worker.run(redis_url, prefix, anyio_backend, tmp_path) as one,
            Worker.run(redis_url, prefix, anyio_backend, tmp_path) as two,
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
        self, redis_url: str, prefix: str, anyio_backend: object, tmp_path: Path
    ) -> None:
        async with Worker.run(redis_url, prefix, anyio_backend, tmp_path) as one:
            command = {"op": "emit", "run": "done", "lanes": ["a", "b"], "count": 50}
            emitted = await one.request(command | {"start": True, "finish": True})
        async with Worker.run(redis_url, prefix, anyio_backend, tmp_path) as two:
            replayed = await two.request({"op": "replay", "run": "done"})
        assert replayed["replay"] == emitted
        assert replayed["subscribe"] == emitted
        async with node(redis_url, prefix) as (_, bridge):
            assert described(await bridge.replay(run_id="done")) == emitted

    async def test_killed_connections_mid_stream_resume_without_loss_or_duplicate(
        self, redis_url: str, prefix: str, anyio_backend: object, tmp_path: Path
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(run_id="k", buffer_size=100_000) as sub,
            Worker.run(redis_url, prefix, anyio_backend, tmp_path) as worker,
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
        """Redis applies a batch but its reply is lost on the way back: the
        writer cannot tell it from a batch never applied, sends it again, and
        the script skips it (each entry is written once)."""
        async with (
            raw_client(redis_url) as raw,
            losing_a_script_reply(redis_url) as (url, lost),
            node(url, prefix) as (bus, bridge),
            node(redis_url, prefix) as (other, _),
            other.subscribe(run_id="r") as sub,
        ):
            bus.emit(Log(run_id="r", message="1"))
            bus.emit(Log(run_id="r", message="2"))
            with anyio.fail_after(20):
                await bridge.flush()
            assert lost.is_set()  # applied, then its reply lost
            stats = bridge.statistics()
            assert (stats.reconnects, stats.exported) == (1, 2)
            assert await raw.xlen(bridge.feed_key("r")) == 2
            assert await raw.xlen(bridge.run_key("r")) == 2
            bus.emit(Log(run_id="r", message="next"))  # the next batch goes in
            with anyio.fail_after(20):
                await bridge.flush()
                received = await receive(sub, 3)
            assert await raw.xlen(bridge.feed_key("r")) == 3
            assert [e.message for e in received if isinstance(e, Log)] == [
                "1",
                "2",
                "next",
            ]

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
            # Counted at the reader's next comparison with Redis's tally.
            await wait_until(lambda: len(received) + bridge.statistics().lost == 1003)
            stats = bridge.statistics()
            assert 0 < stats.lost < 1000
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
                {"o": "", "e": encode(stamped(RunStarted(run_id="g"), 1, 1))},
                {"o": "intruder", "e": b"not json"},  # undecodable
                {"o": "intruder", "e": b"\xff\xfe"},  # undecodable
                {"o": "intruder", "e": b'{"kind": "no.such.kind"}'},  # undecodable
                {"o": "intruder", "e": big},  # oversized
                {"o": "intruder", "e": encode(stamped(notice, 1, 1))},  # refused
                {"o": "intruder", "e": encode(RunStarted(run_id="g"))},  # unstamped
                {"o": "x" * 65, "e": encode(stamped(RunStarted(run_id="g"), 1, 1))},
            ]
            with caplog.at_level(logging.WARNING, "purpose_bus.redis"):
                for fields in garbage:
                    await raw.xadd(feed, fields)
                end = stamped(RunFinished(run_id="g"), 1, 2)
                await raw.xadd(feed, {"o": "intruder", "e": encode(end)})
                received = [event async for event in sub]
            assert received == [stamped(end, 1, 1)]
            stats = bridge.statistics()
            assert stats.skipped == 10
            assert dict(stats.skipped_by_reason) == {
                "malformed": 4,
                "undecodable": 3,
                "oversized": 1,
                "refused": 1,
                "unstamped": 1,
            }
            skips = [r.getMessage() for r in caplog.records if "skipped a" in r.message]
            assert len(skips) == 5, skips
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

    async def test_copies_are_refused_and_in_band_numbers_mean_nothing(
        self, redis_url: str, prefix: str
    ) -> None:
        """An entry is a copy when its origin and encoded event are those of an
        entry taken before (whatever other fields say); an ``n`` field, which
        older bridges wrote, is ignored: it neither hides nor reveals entries."""
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(run_id="r") as sub,
        ):
            entries: list[dict[str, str | bytes]] = []
            for n, seq in ((1, 1), (2, 2), (5, 5), (5, 6), (1000000, 7), (3, 8)):
                event = stamped(Log(run_id="r", message=str(n)), seq, seq)
                entries.append({"o": "w", "n": str(n), "e": encode(event)})
            for fields in entries:
                await raw.xadd(bridge.feed_key("r"), fields)
            for fields in (entries[1], entries[0] | {"n": "7"}, entries[4]):
                await raw.xadd(bridge.feed_key("r"), fields)  # copies, reordered
            last = stamped(RunFinished(run_id="r"), 9, 9)
            await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": encode(last)})
            with anyio.fail_after(10):
                received = [event async for event in sub]
            assert [e.seq for e in received] == [1, 2, 5, 6, 7, 8, 9]
            stats = bridge.statistics()
            assert stats.lost == 0
            assert dict(stats.skipped_by_reason) == {"duplicate": 3}
            assert stats.imported == 7


class TestIdentity:
    """Which entries are the same event comes from the origin bus and its
    offset (or Redis), never from user data such as ``span_id``."""

    async def test_a_late_joiner_gets_evolved_copies_and_re_emitted_objects(
        self, redis_url: str, prefix: str
    ) -> None:
        """The issue's case: 3 evolved deltas, one ``Log`` object emitted twice,
        one live delta and the terminal; a late joiner on this bus, on a
        second bus that imported them, and on a third that opened after the
        run gets all 7, once each, and its statistics count exactly what it
        handed out of its own bus."""
        first = MessageDelta(run_id="r", text="a")
        log = Log(run_id="r", message="twice")
        async with (
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (two, reader),
        ):
            for event in [first, evolve(first, text="b"), evolve(first, text="c")]:
                one.emit(event)
            one.emit(log)
            one.emit(log)
            await writer.flush()
            await wait_until(lambda: reader.statistics().imported == 5)
            async with (
                one.subscribe(run_id="r", replay=True) as here,
                two.subscribe(run_id="r", replay=True) as there,
            ):
                one.emit(evolve(first, text="live"))
                one.emit(RunFinished(run_id="r"))
                with anyio.fail_after(10):
                    got_here = [event async for event in here]
                    got_there = [event async for event in there]
                expected = one.replay(run_id="r")
                assert len(expected) == 7
                assert got_here == expected
                assert contents(got_there) == contents(expected)
                assert got_there == two.replay(run_id="r")  # this bus's offsets
                for sub in (here, there):
                    stats = sub.statistics()
                    assert (stats.delivered, stats.dropped, stats.buffered) == (7, 0, 0)
            await writer.flush()
        async with node(redis_url, prefix) as (_, bridge):
            async with bridge.subscribe_replay(run_id="r") as sub:
                with anyio.fail_after(10):
                    got = [event async for event in sub]
                stats = sub.statistics()
            assert contents(got) == contents(expected)
            assert (stats.delivered, stats.dropped) == (0, 0)  # none of its own
            assert contents(await bridge.replay(run_id="r")) == contents(expected)

    async def test_replay_keeps_distinct_events_with_one_span_id(
        self, redis_url: str, prefix: str
    ) -> None:
        async with node(redis_url, prefix) as (one, writer):
            log = Log(run_id="r", message="m")
            for _ in range(3):
                one.emit(log)
            await writer.flush()
            assert await writer.replay(run_id="r") == one.replay(run_id="r")
            assert len(await writer.replay(run_id="r")) == 3

    async def test_imported_identities_are_kept_as_long_as_the_history(
        self, redis_url: str, prefix: str
    ) -> None:
        """A bus with a history of 3 imports 6 events: a late joiner there
        gets the 3 it no longer holds from Redis and the 3 it holds once."""
        async with (
            node(redis_url, prefix) as (one, writer),
            EventBus(history_size=3) as two,
            RedisBridge(two, redis_url, prefix=prefix) as reader,
        ):
            for i in range(6):
                one.emit(Log(run_id="r", message="same" if i % 2 else str(i)))
            await writer.flush()
            await wait_until(lambda: reader.statistics().imported == 6)
            async with two.subscribe(run_id="r", replay=True) as sub:
                one.emit(RunFinished(run_id="r"))
                with anyio.fail_after(10):
                    got = [event async for event in sub]
                assert contents(got) == contents(one.replay(run_id="r"))
                # The 3 it held when entering, in their local forms.
                assert [e.offset for e in got[3:6]] == [4, 5, 6]
                assert got[4:] == two.replay(run_id="r")
                assert sub.statistics().delivered == 4  # 3 held, 1 live


class TestHostileEntries:
    """A malformed, forged or out-of-range entry costs only itself: it is
    refused and counted, and no reader skips another entry because of it."""

    async def test_a_forged_huge_counter_hides_nothing(
        self, redis_url: str, prefix: str
    ) -> None:
        """The issue's case: one XADD with a real bridge's origin id and
        ``n=1000000``; the bridge's later entries all arrive, nothing is
        counted lost."""
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (two, reader),
            two.subscribe(run_id="r") as sub,
        ):
            one.emit(Log(run_id="r", message="0"))
            assert len(await receive(sub, 1)) == 1
            copy = encode(one.replay(run_id="r")[0])
            forged = stamped(Log(run_id="r", message="forged"), 2, 10**6)
            for data in (copy, encode(forged)):
                fields: dict[str, str | bytes] = {"o": writer.origin, "e": data}
                await raw.xadd(writer.feed_key("r"), fields | {"n": "1000000"})
            for i in range(1, 6):
                one.emit(Log(run_id="r", message=str(i)))
            one.emit(RunFinished(run_id="r"))
            with anyio.fail_after(10):
                rest = [event async for event in sub]
            assert [getattr(e, "message", e.kind) for e in rest] == [
                "forged",  # an event like any other: writers can add events
                *map(str, range(1, 6)),
                "run.finished",
            ]
            stats = reader.statistics()
            assert dict(stats.skipped_by_reason) == {"duplicate": 1}
            assert (stats.imported, stats.lost) == (8, 0)

    async def test_an_out_of_range_seq_is_refused_and_moves_nothing(
        self, redis_url: str, prefix: str
    ) -> None:
        """The issue's case: ``seq=10**23`` is refused and counted, and the
        local seq of that run and lane is not moved by it."""
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
        ):
            good = encode(stamped(Log(run_id="r", message="m"), 1, 1))
            huge = good.replace(b'"seq":1', b'"seq":' + str(10**23).encode())
            for data in (huge, good):
                await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": data})
            await wait_until(lambda: bridge.statistics().imported == 1)
            assert dict(bridge.statistics().skipped_by_reason) == {"undecodable": 1}
            local = await bus.publish(Log(run_id="r", message="local"))
            assert local is not None
            assert local.seq == 2

    @pytest.mark.parametrize(
        ("seq", "offset"), [(0, 5), (5, 0)], ids=["seq 0", "offset 0"]
    )
    async def test_an_unstamped_event_is_refused(
        self, redis_url: str, prefix: str, seq: int, offset: int
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(run_id="r") as sub,
        ):
            for event in (
                stamped(Log(run_id="r", message="m"), seq, offset),
                stamped(RunFinished(run_id="r"), 1, 1),
            ):
                await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": encode(event)})
            with anyio.fail_after(10):
                assert [e.kind async for e in sub] == ["run.finished"]
            assert dict(bridge.statistics().skipped_by_reason) == {"unstamped": 1}

    async def test_an_entry_in_the_wrong_feed_or_stream_is_misplaced(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
            bus.subscribe(run_id="r") as sub,
        ):
            other = next(
                f"x{i}"
                for i in range(100)
                if bridge.feed_key(f"x{i}") != bridge.feed_key("r")
            )
            stray = encode(stamped(Log(run_id=other, message="m"), 1, 1))
            await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": stray})
            await raw.xadd(bridge.run_key("r"), {"o": "w", "e": stray})
            end = encode(stamped(RunFinished(run_id="r"), 1, 2))
            await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": end})
            await raw.xadd(bridge.run_key("r"), {"o": "w", "e": end})
            with anyio.fail_after(10):
                assert [e.kind async for e in sub] == ["run.finished"]
            assert [e.kind for e in await bridge.replay(run_id="r")] == ["run.finished"]
            assert dict(bridge.statistics().skipped_by_reason) == {"misplaced": 2}

    async def test_a_copy_is_known_while_its_original_is_among_the_last_taken(
        self, redis_url: str, prefix: str
    ) -> None:
        """The reader remembers the identities of the last 100,000 entries it
        took: a copy of one of them is refused; a copy of an older one is an
        event like any other (as a forged one would be)."""
        kept = 100_000
        async with (
            raw_client(redis_url) as raw,
            EventBus(buffer_size=1, history_size=0) as bus,
            RedisBridge(bus, redis_url, prefix=prefix) as bridge,
        ):
            feed = bridge.feed_key("r")
            entries: list[dict[str, str | bytes]] = [
                {"o": "w", "e": encode(stamped(Log(run_id="r", message=""), i, i))}
                for i in range(1, kept + 2)
            ]
            for start in range(0, len(entries), 5000):
                async with raw.pipeline(transaction=False) as pipe:
                    for fields in entries[start : start + 5000]:
                        pipe.xadd(feed, fields)
            await wait_until(lambda: bridge.statistics().imported == kept + 1, 60)
            await raw.xadd(feed, entries[1])  # the oldest still remembered
            await raw.xadd(feed, entries[0])  # forgotten: taken again
            await wait_until(lambda: bridge.statistics().imported == kept + 2)
            assert dict(bridge.statistics().skipped_by_reason) == {"duplicate": 1}

    async def test_copies_in_a_runs_stream_are_replayed_once(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (_, reader),
        ):
            for i in range(3):
                one.emit(Log(run_id="r", message=str(i)))
            await writer.flush()
            for event in reversed(one.replay(run_id="r")):  # copies, reordered
                fields: dict[str, str | bytes] = {"o": writer.origin}
                await raw.xadd(writer.run_key("r"), fields | {"e": encode(event)})
            assert await reader.replay(run_id="r") == one.replay(run_id="r")
            assert dict(reader.statistics().skipped_by_reason) == {"duplicate": 3}

    async def test_ten_thousand_forged_entries_cost_only_themselves(
        self, redis_url: str, prefix: str
    ) -> None:
        """A flood of forged entries (junk, copies of a real bridge's entries,
        events under its origin for other runs, entries claiming the reader's
        own origin) among a real bridge's: the real ones all arrive in order,
        and every entry is accounted for."""
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (two, reader),
            two.subscribe(run_id="r", buffer_size=100_000) as sub,
        ):
            one.emit(RunStarted(run_id="r"))
            await writer.flush()
            copy = encode(one.replay(run_id="r")[0])
            feed = writer.feed_key("r")
            forged: list[dict[str, str | bytes]] = []
            for i in range(10_000):
                kind = i % 5
                if kind == 0:
                    forged.append({"o": writer.origin, "n": str(10**9 + i), "e": copy})
                elif kind == 1:
                    forged.append({"o": writer.origin, "e": f"junk {i}"})
                elif kind == 2:  # another run of the same partition
                    event = stamped(Log(run_id="r", message="forged"), 10**6 + i, i + 1)
                    event = evolve(event, run_id="r", lane_id="forged")
                    forged.append({"o": writer.origin, "e": encode(event)})
                elif kind == 3:
                    forged.append({"o": reader.origin, "e": copy})
                else:
                    forged.append({str(i): "x"})
            genuine: list[Event] = []
            async with anyio.create_task_group() as tg:

                async def emit_meanwhile() -> None:
                    for i in range(200):
                        published = await one.publish(Log(run_id="r", message=str(i)))
                        assert published is not None
                        genuine.append(published)
                    await writer.flush()

                tg.start_soon(emit_meanwhile)
                for start in range(0, len(forged), 1000):
                    async with raw.pipeline(transaction=False) as pipe:
                        for fields in forged[start : start + 1000]:
                            pipe.xadd(feed, fields)
            ended = await one.publish(RunFinished(run_id="r"))
            assert ended is not None
            with anyio.fail_after(30):
                received = [event async for event in sub]
            real = [e for e in received if e.lane_id != "forged"]
            assert contents(real) == contents(
                [one.replay(run_id="r")[0], *genuine, ended]
            )
            assert len(received) - len(real) == 2000
            stats = reader.statistics()
            assert dict(stats.skipped_by_reason) == {
                "duplicate": 2000,
                "undecodable": 2000,
                "malformed": 2000,
            }
            assert stats.own_skipped == 2000
            assert stats.imported == len(received) == 202 + 2000
            assert stats.lost == 0


class TestWhatAWriterCanDo:
    """The limits README's "Security" states: a writer can add events to any
    run; what follows from them is counted, never silent."""

    async def test_a_forged_terminal_ends_the_run_and_what_follows_is_counted(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, producer),
            node(redis_url, prefix) as (two, reader),
            two.subscribe(run_id="r") as sub,
        ):
            end = stamped(RunFinished(run_id="r"), 1, 1)
            await raw.xadd(reader.feed_key("r"), {"o": "w", "e": encode(end)})
            with anyio.fail_after(10):
                assert [e.kind async for e in sub] == ["run.finished"]
            await wait_until(lambda: producer.statistics().imported == 1)
            one.emit(Log(run_id="r", message="after the forged end"))
            assert one.statistics().rejected == 1  # the run is over here too

    async def test_a_forged_entry_with_a_real_origin_and_offset_hides_nothing(
        self, redis_url: str, prefix: str
    ) -> None:
        """A forger who knows the origin id and the offset a bridge's next
        event will have writes an entry claiming them first: both arrive (the
        reader cannot tell which is real, and refusing one would let a forger
        suppress the real one)."""
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (two, reader),
            two.subscribe(run_id="r") as sub,
        ):
            claim = stamped(Log(run_id="r", message="forged"), 1, 1)
            await raw.xadd(
                writer.feed_key("r"), {"o": writer.origin, "e": encode(claim)}
            )
            assert [e.message for e in await receive(sub, 1)] == ["forged"]  # type: ignore[attr-defined]
            one.emit(Log(run_id="r", message="real"))  # offset 1, seq 1 there too
            one.emit(RunFinished(run_id="r"))
            with anyio.fail_after(10):
                rest = [event async for event in sub]
            assert [(e.kind, e.seq) for e in rest] == [("log", 1), ("run.finished", 2)]
            assert one.replay(run_id="r")[0].offset == 1
            assert reader.statistics().skipped == 0

    async def test_a_stream_id_set_to_the_maximum_stops_writes_counted(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
        ):
            top = "18446744073709551615-18446744073709551615"
            await raw.xadd(bridge.feed_key("r"), {"x": "y"}, identifier=top)
            bus.emit(Log(run_id="r", message="m"))
            with anyio.fail_after(20):
                await bridge.flush()
            stats = bridge.statistics()
            assert (stats.exported, stats.export_dropped) == (0, 1)

    async def test_a_feed_of_another_type_stops_readers_until_deleted(
        self, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (two, _),
            two.subscribe(run_id="r") as sub,
        ):
            other = next(
                writer.feed_key(f"x{i}")
                for i in range(100)
                if writer.feed_key(f"x{i}") != writer.feed_key("r")
            )
            await raw.set(other, "not a stream")
            one.emit(Log(run_id="r", message="wake"))  # the reader's read ends
            await wait_until(
                lambda: any("reader failed" in r.message for r in caplog.records)
            )
            got: list[Event] = []
            with contextlib.suppress(anyio.WouldBlock):
                got.append(sub.receive_nowait())  # "wake", if it came first
            one.emit(Log(run_id="r", message="stopped"))
            await writer.flush()
            with anyio.move_on_after(1) as waited:  # a bound, not a synchronisation
                await sub.receive()
            assert waited.cancelled_caught
            await raw.delete([other])
            got += await receive(sub, 2 - len(got))
            assert [getattr(e, "message", None) for e in got] == ["wake", "stopped"]

    async def test_a_forged_tally_inflates_lost_and_nothing_else(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (one, writer),
            node(redis_url, prefix) as (two, reader),
            two.subscribe(run_id="r") as sub,
        ):
            one.emit(Log(run_id="r", message="m"))
            await writer.flush()
            assert len(await receive(sub, 1)) == 1
            [entry] = await raw.xrange(writer.feed_key("r"))
            await raw.eval(
                "return redis.call('XSETID', KEYS[1], ARGV[1], 'ENTRIESADDED', 1000)",
                keys=[writer.feed_key("r")],
                args=[entry.identifier],
            )
            await wait_until(lambda: reader.statistics().lost == 999)
            one.emit(RunFinished(run_id="r"))
            with anyio.fail_after(10):
                assert [e.kind async for e in sub] == ["run.finished"]

    async def test_a_forged_huge_seq_leaves_local_events_exportable(
        self, redis_url: str, prefix: str
    ) -> None:
        async with (
            raw_client(redis_url) as raw,
            node(redis_url, prefix) as (bus, bridge),
        ):
            event = stamped(Log(run_id="r", message="m"), 2**63 - 1, 1)
            await raw.xadd(bridge.feed_key("r"), {"o": "w", "e": encode(event)})
            await wait_until(lambda: bridge.statistics().imported == 1)
            bus.emit(Log(run_id="r", message="local"))
            bus.emit(RunFinished(run_id="r"))
            await bridge.flush()
            assert bridge.statistics().export_dropped == 0
            # The forged seq did not move the lane's local one (it is in the
            # top half of the range, which no real lane reaches).
            assert [e.seq for e in bus.replay(run_id="r")] == [2**63 - 1, 1, 2]


#: What a hostile writer adds between a bridge's entries (see _hostile).
_BAD_ACTIONS = st.one_of(
    st.tuples(  # a raw XADD of a random field map
        st.just("raw"),
        st.dictionaries(
            st.sampled_from(["o", "e", "n", "x", ""]) | st.text(max_size=3),
            st.binary(max_size=24) | st.text(max_size=24),
            min_size=1,
            max_size=4,
        ),
    ),
    st.tuples(st.just("copy"), st.integers(0, 30)),  # a genuine entry again
    st.tuples(st.just("counter"), st.integers(0, 2**64)),  # with a forged n
    st.tuples(st.just("range"), st.sampled_from([0, 2**63, 10**23])),  # seq
    st.tuples(st.just("added"), st.integers(1, 2**63 - 1)),  # a new event
)


class TestHostileProperty:
    @given(
        script=st.lists(
            st.one_of(st.sampled_from(["a", "b"]), _BAD_ACTIONS), max_size=24
        )
    )
    async def test_every_genuine_event_once_in_lane_order(
        self, redis_url: str, anyio_backend: str, script: list[Any]
    ) -> None:
        """A bridge's entries (lanes ``a`` and ``b``) interleaved with what a
        hostile writer adds: random field maps, copies of the bridge's entries
        (also out of order, also with a forged ``n``), out-of-range or
        unstamped events, new events under the bridge's origin. The reader
        delivers every genuine event once in order, delivers the added ones
        (events like any other), counts every other entry once, never stalls."""
        prefix = f"pbtest-{uuid.uuid4().hex[:12]}"
        try:
            async with (
                raw_client(redis_url) as raw,
                node(redis_url, prefix) as (one, writer),
                node(redis_url, prefix) as (two, reader),
                two.subscribe(run_id="r", buffer_size=10_000) as sub,
            ):
                genuine, written = await _hostile(raw, one, writer, script)
                with anyio.fail_after(20):
                    received = [event async for event in sub]
                real = [e for e in received if e.lane_id != "forged"]
                assert contents(real) == contents(genuine)
                assert_lane_order(described(real))
                assert len(received) - len(real) == written["added"]
                stats = reader.statistics()
                copies = written["copy"] + written["counter"]
                assert stats.skipped_by_reason.get("duplicate", 0) == copies
                assert stats.imported == len(received)
                # Every entry the reader read is accounted for exactly once.
                entries = len(genuine) + written.total()
                assert (
                    stats.imported
                    + stats.skipped
                    + stats.own_skipped
                    + stats.rejected
                    + stats.filtered
                    == entries
                )
        finally:
            await _delete_keys(redis_url, prefix)


async def _hostile(
    raw: coredis.Redis[str], bus: EventBus, bridge: RedisBridge, script: list[Any]
) -> tuple[list[Event], Counter[str]]:
    """Play *script* (see ``_BAD_ACTIONS``; ``"a"``/``"b"``: the bridge emits
    into that lane of run ``r`` and its entry is written at once), end the run;
    return the genuine events, and how many entries of each kind the hostile
    writer added."""
    feed = bridge.feed_key("r")
    genuine: list[Event] = []
    written: Counter[str] = Counter()
    for action in script:
        if isinstance(action, str):
            event = await bus.publish(Log(run_id="r", lane_id=action, message="m"))
            assert event is not None
            genuine.append(event)
            await bridge.flush()
            continue
        what, value = action
        fields: dict[str, str | bytes] = {"o": bridge.origin}
        if what == "raw":
            fields = value
        elif what in ("copy", "counter"):
            if not genuine:
                continue
            fields["e"] = encode(genuine[value % len(genuine)])
            if what == "counter":
                fields["n"] = str(value)
        elif what == "range":
            good = encode(stamped(Log(run_id="r", message="m"), 1, 1))
            fields["e"] = good.replace(b'"seq":1', b'"seq":%d' % value)
        else:
            event = Log(run_id="r", lane_id="forged", message="m")
            fields["e"] = encode(stamped(event, value, value))
        await raw.xadd(feed, fields)
        written[what] += 1
    end = await bus.publish(RunFinished(run_id="r"))
    assert end is not None
    genuine.append(end)
    await bridge.flush()
    return genuine, written


class TestLateJoinerProperty:
    @given(
        shapes=st.lists(st.sampled_from(["new", "evolved", "again"]), max_size=8),
        joined=st.integers(0, 8),
    )
    async def test_every_event_once_on_every_bus(
        self, redis_url: str, anyio_backend: str, shapes: list[str], joined: int
    ) -> None:
        """A run of new deltas, evolved copies of the one before and the one
        before emitted again; late joiners on the producing bus and on a
        second bus join after *joined* of them: each gets every event once, in
        order, and counts exactly the local events it handed out."""
        prefix = f"pbtest-{uuid.uuid4().hex[:12]}"
        deltas: list[MessageDelta] = []
        for i, shape in enumerate(shapes):
            if shape == "new" or not deltas:
                deltas.append(MessageDelta(run_id="r", text=str(i)))
            else:
                last = deltas[-1]
                deltas.append(last if shape == "again" else evolve(last, text=str(i)))
        run: list[Event] = [*deltas, RunFinished(run_id="r")]
        joined = min(joined, len(run) - 1)
        try:
            async with (
                node(redis_url, prefix) as (one, writer),
                node(redis_url, prefix) as (two, reader),
            ):
                for event in run[:joined]:
                    one.emit(event)
                await writer.flush()
                await wait_until(lambda: reader.statistics().imported == joined)
                async with (
                    one.subscribe(run_id="r", replay=True) as here,
                    two.subscribe(run_id="r", replay=True) as there,
                ):
                    for event in run[joined:]:
                        await one.publish(event)
                    with anyio.fail_after(10):
                        got_here = [event async for event in here]
                        got_there = [event async for event in there]
                    assert got_here == one.replay(run_id="r")
                    assert got_there == two.replay(run_id="r")
                    assert contents(got_there) == contents(got_here)
                    assert len(got_here) == len(run)
                    for sub in (here, there):
                        stats = sub.statistics()
                        assert (stats.delivered, stats.dropped) == (len(run), 0)
        finally:
            await _delete_keys(redis_url, prefix)


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
        async with node(redis_url, prefix, max_size=4 << 20) as (bus, bridge):
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
        assert code.count("anyio.run(main)") == 1
        code = code.replace("anyio.run(main)", run_source(anyio_backend))
        with anyio.fail_after(60):
            result = await anyio.run_process([sys.executable, "-c", code], check=False)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().splitlines() == [
            "['run.started', 'message.delta', 'run.finished']",
            "run.started 1",
            "message.delta 2",
            "run.finished 3",
        ]


class TestOversizedExports:
    async def test_an_event_over_max_size_is_counted_by_its_writer(
        self, redis_url: str, prefix: str
    ) -> None:
        """Readers refuse an entry over ``max_size``; a review found the writer
        sent it anyway and counted it as exported (a terminal that big never
        ended the run elsewhere, and nobody said so on the writer's side)."""
        async with node(redis_url, prefix, max_size=10_000) as (bus, bridge):
            bus.emit(Log(run_id="r", message="x" * 20_000))
            bus.emit(Log(run_id="r", message="fits"))
            await bridge.flush()
            stats = bridge.statistics()
            assert (stats.exported, stats.export_dropped) == (1, 1)
