"""Beyond one process: a bridge between an :class:`~purpose_bus.EventBus` and
Redis Streams, on `coredis <https://coredis.readthedocs.io>`_ (AnyIO-based, so
the bridge runs on asyncio and on trio), for Redis 6.2 or newer. Install the
``redis`` extra::

    async with EventBus() as bus, RedisBridge(bus, "redis://localhost:6379/0"):
        ...  # emit and subscribe as usual; other processes' events arrive too

* **Out.** Every event the local bus accepts with a visibility up to the
  bridge's level (``INTERNAL`` by default: ``PRIVATE`` events never leave the
  process unless the bridge is built with ``visibility=Visibility.PRIVATE``) is
  encoded with :func:`purpose_bus.encode` and appended to Redis by a writer
  task, many events per round trip. Events that came from Redis are never sent
  back out.
* **In.** A reader task follows the feeds and hands the events other processes
  appended to the local bus, which keeps their ``run_id``, ``lane_id``, ``seq``
  and ``ts`` and stamps a local ``offset``; the bus's guards and run lifecycle
  apply. A bridge skips its own entries (no echo).
* **Resume.** After a lost connection both tasks reconnect with backoff: the
  reader continues after the last stream id it processed, and the writer sends
  the batch in flight again, which Redis applies at most once. Nothing is lost
  or duplicated, unless a reader stays away so long that its feed is trimmed
  past it: that loss is counted (``lost``) and logged.
* **Replay across processes.** :meth:`RedisBridge.replay` reads a run back from
  Redis. While the bridge is open, ``bus.subscribe(run_id=..., replay=True)``
  (without ``after``) reaches back into Redis too: entering registers on the
  local bus, then reads the whole run from Redis and merges in what only the
  local history holds of it (each lane in ``seq`` order, the terminal event
  last); it hands those out, then live events, skipping any with a
  ``span_id`` handed out already, and ends after the run's terminal event.
  (:meth:`RedisBridge.subscribe_replay` is a shorthand for it.)

Key layout (``P`` the prefix; ``k`` the run's partition, ``crc32(run_id) mod
partitions``; the braces are Redis Cluster hash tags)::

    {P:k}:feed               stream: partition k's live feed (MAXLEN ~ maxlen)
    {P:k}:run:<run_id>       stream: one run's events, for replay (MAXLEN ~
                             run_maxlen; expires run_ttl s after its last event)
    {P:k}:writer:<origin>    string: the last batch a bridge applied there, so
                             that a batch sent again is skipped (expires in a day)
    {P}:partitions           string: the partition count every bridge must share

A run's stream is in its partition's hash slot, so one Lua script appends a
batch to the feed and to the runs' streams atomically. Every entry has the
fields ``o`` (the origin id of the bridge that wrote it), ``n`` (its number
among that bridge's entries in that feed: 1, 2, 3 ..., for loss and duplicate
detection) and ``e`` (the encoded event). Nothing is ever unpickled: remote
data goes through :func:`purpose_bus.decode`, with its size limit.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import MappingProxyType, TracebackType
from typing import Any

import anyio
import attrs
import coredis
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import NoScriptError, RedisError
from coredis.retry import NoRetryPolicy

from ._bus import EventBus, bus_seam
from ._codec import DEFAULT_MAX_SIZE, decode, encode
from ._events import Event, Visibility
from ._exceptions import BusClosed, DecodeError
from ._filters import KindsArg, StrArg, make_filter
from ._overflow import Overflow
from ._subscription import YIELD_INTERVAL, Subscription
from ._validate import count, seconds

__all__ = ["BridgeStatistics", "RedisBridge", "partition_of"]

logger = logging.getLogger("purpose_bus.redis")

#: Errors after which the bridge reconnects (a lost, refused or silent link).
_CONNECTION_ERRORS = (RedisConnectionError, TimeoutError, OSError)
#: How many entries XREAD and XRANGE fetch per stream and round trip.
_READ_COUNT = 1000
#: How long one XREAD blocks on the server (ms), and the slack allowed on top
#: of a reply's expected time before a silent connection counts as lost (s).
_BLOCK_MS = 2000
_SLACK = 5.0
#: Reconnection backoff: the first delay, doubling up to the last (s).
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
#: A batch Redis refuses (other than for a lost connection) is tried this often.
_REFUSED_ATTEMPTS = 3
#: How long a writer's batch mark lives: a batch sent again later than this
#: after it was applied would be applied twice.
_MARK_TTL = 86_400
#: From this many events, a batch is sent by a task of its own (see _write_loop).
_SPAWN_FROM = 64
#: A write round trip stops taking events once they add up to this many bytes.
_BATCH_BYTES = 4 << 20
#: How many (origin, feed) entry numbers the reader remembers.
_ORIGINS_KEPT = 10_000

# Appends one partition's batch to its feed and to its runs' streams, at most
# once per (origin, partition, batch number): a batch sent again is skipped.
# KEYS: feed, writer mark, run streams ...; ARGV: origin, batch number, maxlen,
# run maxlen, run ttl, mark ttl, the first entry number, then (index into KEYS,
# encoded event) per event.
_APPEND = """
local mark = redis.call('GET', KEYS[2])
if mark and tonumber(mark) >= tonumber(ARGV[2]) then return 0 end
local origin, n = ARGV[1], tonumber(ARGV[7])
for i = 8, #ARGV, 2 do
  local data = ARGV[i + 1]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
             'o', origin, 'n', string.format('%d', n), 'e', data)
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', ARGV[4], '*',
             'o', origin, 'e', data)
  n = n + 1
end
for k = 3, #KEYS do redis.call('EXPIRE', KEYS[k], ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[6])
return (#ARGV - 7) / 2
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()
#: Where the first entry number goes in the script's arguments (ARGV[7]).
_FIRST_NUMBER = 6


def partition_of(run_id: str, partitions: int) -> int:
    """The partition of *run_id*: ``crc32(run_id) mod partitions``, the same in
    every process (unlike :func:`hash`)."""
    return zlib.crc32(run_id.encode("utf-8", "surrogatepass")) % partitions


_number = seconds  # argument checks: see purpose_bus._validate
_count = count


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fields(values: Sequence[Any]) -> tuple[Any, Any, Any]:
    """An entry's ``(o, n, e)`` values (``None`` where missing) from its flat
    field/value list."""
    if len(values) == 6 and (values[0], values[2], values[4]) == (b"o", b"n", b"e"):
        return values[1], values[3], values[5]  # what bridges write
    fields = dict(zip(values[::2], values[1::2], strict=False))
    return fields.get(b"o"), fields.get(b"n"), fields.get(b"e")


@attrs.frozen(kw_only=True)
class BridgeStatistics:
    """A snapshot of a :class:`RedisBridge`'s counters."""

    #: Local events written to Redis.
    exported: int
    #: Local events that will not be written: over ``max_pending`` while Redis
    #: was slow or away, not encodable, refused by Redis, or still unwritten
    #: when the bridge closed.
    export_dropped: int
    #: Local events waiting to be written (in flight included).
    pending: int
    #: Write round trips (each appends many events).
    batches: int
    #: Remote events the local bus accepted.
    imported: int
    #: Remote events the local bus rejected (guards, run lifecycle).
    rejected: int
    #: Remote events above the bridge's visibility level, not let in.
    filtered: int
    #: Entries this bridge wrote itself, read back and skipped (no echo).
    own_skipped: int
    #: Remote entries known to be lost to this bridge: trimmed from a feed
    #: before it read them (it fell more than about ``maxlen`` entries behind),
    #: or never written by the bridge that accepted them.
    lost: int
    #: Entries that could not be used (from a feed or a replay), in total.
    skipped: int
    #: ``skipped`` by reason: ``"malformed"`` (no ``o`` or ``e`` field, or a
    #: bad ``n``), ``"oversized"`` (over ``max_size``), ``"undecodable"``
    #: (:func:`purpose_bus.decode` refused it), ``"refused"`` (an event the bus
    #: does not take from outside, such as an ``EventsDropped`` notice),
    #: ``"duplicate"`` (an entry number seen before).
    skipped_by_reason: Mapping[str, int]
    #: Connections lost and recovered (reader and writer).
    reconnects: int


@attrs.define(eq=False)
class _Batch:
    """One partition's share of a write round trip: the script's keys and
    arguments, with the events' order kept."""

    partition: int
    keys: list[str]
    args: list[str | bytes | int]
    runs: dict[str, int] = attrs.field(factory=dict)  # run id -> index in KEYS
    count: int = 0
    refusals: int = 0


class _Backoff:
    """Exponential backoff with jitter; ``failures`` is reset by the caller."""

    def __init__(self) -> None:
        self.failures = 0
        self.disconnected = False  # a connection was lost (not just refused)

    async def wait(self) -> None:
        self.failures += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self.failures - 1))
        await anyio.sleep(delay * random.uniform(0.5, 1.0))


class RedisBridge:
    """Connects *bus* to the Redis server at *url* (see the module docs); use it
    as ``async with RedisBridge(bus, url) as bridge:`` while the bus is open.

    Entering connects, loads the append script, checks the partition count
    stored under the prefix, notes where every feed ends (events appended after
    ``__aenter__`` returns are received; earlier ones are for :meth:`replay`),
    and starts the reader and the writer in a task group of the bridge's own.
    Local events the bus accepts from then on are exported. A Redis that cannot
    be reached when entering raises; later losses are retried forever, with
    backoff.

    Leaving stops exporting, waits up to *close_timeout* seconds (shielded from
    cancellation) for the events already accepted to be written, then stops the
    tasks and disconnects; events still unwritten are counted as
    ``export_dropped`` and logged. A bridge entered and never left warns with
    :exc:`ResourceWarning`. If the bus closes first, the reader stops.

    Two bridges on one bus would hand each other's remote events to it twice:
    use one bridge per bus and prefix. A bridge never exports the events another
    bridge brought in.

    :param bus: the :class:`~purpose_bus.EventBus` to connect
    :param url: ``redis://``, ``rediss://`` (TLS) or ``unix://``, with user and
        password if needed; passed as is to :meth:`coredis.Redis.from_url`, with
        *client_options* as keyword arguments
    :param prefix: the key prefix; the bridges of one prefix (and database) share
        their events (no braces: they would break the hash tags)
    :param visibility: the most privileged events exported, and imported
    :param maxlen: the approximate bound of each partition's feed: how far a
        reader may fall behind (or stay away) without losing events
    :param run_maxlen: the approximate bound of each run's stream
    :param run_ttl: seconds a run's stream is kept after its last event
    :param partitions: the number of feeds (and hash slots runs are spread
        over); the same for every bridge of the prefix
    :param max_size: the largest encoded event read, in bytes (the codec's limit)
    :param batch_size: the most events written per round trip
    :param linger: seconds the writer waits after the first event of a batch for
        more to join it; 0, the default, sends at once (events accepted while a
        round trip is in flight go in the next one)
    :param max_pending: the most local events waiting to be written; beyond it,
        new non-terminal events are dropped, counted and logged
    :param client_name: the name of the bridge's Redis connections (``CLIENT
        LIST``); default ``purpose_bus:<origin>``
    :param close_timeout: seconds leaving waits for pending events to be written
    :param client_options: more keyword arguments for
        :meth:`coredis.Redis.from_url` (TLS files, timeouts, ...)
    :raises TypeError: for an argument of the wrong type
    :raises ValueError: for an argument out of range, or a prefix with braces
    """

    def __init__(
        self,
        bus: EventBus,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "purpose_bus",
        visibility: Visibility = Visibility.INTERNAL,
        maxlen: int = 10_000,
        run_maxlen: int = 10_000,
        run_ttl: int = 86_400,
        partitions: int = 16,
        max_size: int = DEFAULT_MAX_SIZE,
        batch_size: int = 1000,
        linger: float = 0.0,
        max_pending: int = 100_000,
        client_name: str | None = None,
        close_timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an EventBus, not {type(bus).__name__}")
        if not isinstance(url, str):
            raise TypeError(f"url must be a string, not {type(url).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty, without braces: {prefix!r}")
        self._bus = bus
        self._url = url
        self._prefix = prefix
        self._level = make_filter(visibility=visibility).visibility
        self._maxlen = _count("maxlen", maxlen, 1)
        self._run_maxlen = _count("run_maxlen", run_maxlen, 1)
        self._run_ttl = _count("run_ttl", run_ttl, 1)
        self._partitions = _count("partitions", partitions, 1)
        self._max_size = _count("max_size", max_size, 1)
        self._batch_size = _count("batch_size", batch_size, 1)
        self._linger = float(_number("linger", linger, 0))
        self._max_pending = _count("max_pending", max_pending, 1)
        self._close_timeout = float(_number("close_timeout", close_timeout, 0))
        self._client_options = dict(client_options or {})
        self._origin = uuid.uuid4().hex[:16]
        self._origin_bytes = self._origin.encode()
        self._client_name = client_name or f"purpose_bus:{self._origin}"
        self._feeds = [f"{{{prefix}:{k}}}:feed" for k in range(self._partitions)]
        self._client: coredis.Redis[bytes] | None = None
        self._stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._remove_tap: Callable[[], None] | None = None
        self._entered = self._closed = self._stopped = False
        self._remove_source: Callable[[], None] | None = None
        # The writer: events waiting, the wake-up, and what is settled (written
        # or dropped) of all the events ever accepted for export.
        self._pending: deque[Event] = deque()
        self._idle: anyio.Event | None = None
        self._accepted = 0
        self._settled = 0
        self._settled_event: anyio.Event | None = None
        self._batch_numbers = [0] * self._partitions
        self._entry_numbers = [0] * self._partitions
        # The reader: the last id processed per feed, and the last entry number
        # seen per (origin, feed).
        self._positions: dict[bytes, bytes] = {}
        self._numbers: dict[tuple[bytes, bytes], int] = {}
        # Counters.
        self._exported = self._export_dropped = self._batches = 0
        self._imported = self._rejected = self._filtered = self._own = 0
        self._lost = self._reconnects = 0
        self._skipped: dict[str, int] = {}
        self._logged: set[str] = set()

    # -- what it is -------------------------------------------------------------

    @property
    def origin(self) -> str:
        """This bridge's origin id, in the ``o`` field of the entries it writes."""
        return self._origin

    @property
    def client_name(self) -> str:
        """The name of this bridge's Redis connections."""
        return self._client_name

    @property
    def prefix(self) -> str:
        """The key prefix."""
        return self._prefix

    @property
    def partitions(self) -> int:
        """The number of feeds."""
        return self._partitions

    @property
    def visibility(self) -> Visibility:
        """The most privileged events exported and imported."""
        return self._level

    def feed_key(self, run_id: str) -> str:
        """The feed that carries *run_id*'s events."""
        return self._feeds[partition_of(run_id, self._partitions)]

    def run_key(self, run_id: str) -> str:
        """The stream that keeps *run_id*'s events for replay."""
        partition = partition_of(run_id, self._partitions)
        return f"{{{self._prefix}:{partition}}}:run:{run_id}"

    # -- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> RedisBridge:
        """Connect and start (see the class docstring). Cancelled, it leaves
        nothing running.

        :raises RuntimeError: if the bridge was entered before
        :raises BusClosed: if the bus is not open
        :raises ValueError: if the prefix is used with another partition count
        :raises coredis.exceptions.RedisError: if Redis cannot be reached or
            refuses the bridge (a wrong password, say)
        """
        if self._entered:
            raise RuntimeError("a RedisBridge can be entered only once")
        self._entered = True
        bus_seam(self._bus).check_open()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            client: coredis.Redis[bytes] = coredis.Redis.from_url(
                self._url,
                decode_responses=False,
                client_name=self._client_name,
                retry_policy=NoRetryPolicy(),
                **self._client_options,
            )
            self._client = await stack.enter_async_context(client)
            await self._prepare_server(client)
            self._task_group = await stack.enter_async_context(
                anyio.create_task_group()
            )
            await self._task_group.start(self._write_loop)
            await self._task_group.start(self._read_loop)
            seam = bus_seam(self._bus)
            self._remove_tap = seam.add_tap(self._tap)
            self._remove_source = seam.add_replay_source(self._replay_source)
        except BaseException:
            self._closed = self._stopped = True
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop exporting, let the writer finish what is pending (for up to
        *close_timeout* seconds, shielded from cancellation), then stop the tasks
        and disconnect. Idempotent. A checkpoint."""
        stack, self._stack = self._stack, None
        self._closed = True
        if stack is None:
            await checkpoint()
            return
        if self._remove_tap is not None:
            self._remove_tap()
        if self._remove_source is not None:
            self._remove_source()
        with anyio.move_on_after(self._close_timeout, shield=True):
            await self.flush()
        self._stopped = True
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            # Not shielded: a scope opened here could not enclose the task
            # group's exit. The exits only wait for cancelled tasks.
            await stack.__aexit__(None, None, None)
        finally:
            unwritten = self._accepted - self._settled
            if unwritten:
                why = "they were not written when the bridge closed"
                self._drop(unwritten, "close", why)
            self._pending.clear()
            self._settle(unwritten)
        await checkpoint_if_cancelled()

    def __del__(self) -> None:
        if getattr(self, "_stack", None) is not None:
            warnings.warn(
                "a RedisBridge was never closed: leave its 'async with' block",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    def _require_open(self) -> coredis.Redis[bytes]:
        if self._client is None or self._closed:
            raise RuntimeError("the bridge is not open: use it in 'async with'")
        return self._client

    async def _prepare_server(self, client: coredis.Redis[bytes]) -> None:
        """One round trip: load the script, check the partition count, and note
        the last id of every feed (the reader starts after it)."""
        meta = f"{{{self._prefix}}}:partitions"
        async with client.pipeline(transaction=False) as pipe:
            pipe.script_load(_APPEND)
            pipe.set(meta, self._partitions, condition=coredis.PureToken.NX)
            stored = pipe.get(meta)
            lasts = [pipe.xrevrange(feed, count=1) for feed in self._feeds]
        if (await stored or b"") != str(self._partitions).encode():
            raise ValueError(
                f"prefix {self._prefix!r} is used with {_text(await stored)}"
                f" partitions, not {self._partitions}"
            )
        for feed, last in zip(self._feeds, lasts, strict=True):
            entries = await last
            position = entries[0].identifier if entries else b"0-0"
            self._positions[feed.encode()] = (
                position.encode() if isinstance(position, str) else position
            )

    # -- statistics and logs -------------------------------------------------------

    def statistics(self) -> BridgeStatistics:
        """A snapshot of the bridge's counters."""
        return BridgeStatistics(
            exported=self._exported,
            export_dropped=self._export_dropped,
            pending=self._accepted - self._settled,
            batches=self._batches,
            imported=self._imported,
            rejected=self._rejected,
            filtered=self._filtered,
            own_skipped=self._own,
            lost=self._lost,
            skipped=sum(self._skipped.values()),
            skipped_by_reason=MappingProxyType(dict(self._skipped)),
            reconnects=self._reconnects,
        )

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning(
                message + " (more of this kind are counted, not logged)", *args
            )

    def _skip(self, reason: str, key: bytes | str, entry: object, why: str) -> None:
        self._skipped[reason] = self._skipped.get(reason, 0) + 1
        self._log_once(
            f"skip:{reason}",
            "skipped a %s entry %s in %s: %s",
            reason,
            _text(entry),
            _text(key),
            why,
        )

    def _drop(self, count: int, kind: str, why: str) -> None:
        self._export_dropped += count
        self._log_once(f"drop:{kind}", "dropped %d local event(s): %s", count, why)

    # -- out: local events to Redis ---------------------------------------------

    def _tap(self, event: Event, source: object) -> None:
        """Called by the bus, on the loop, with every event it accepts."""
        if source is not None or event.visibility > self._level:
            return  # from Redis (or another bridge): never sent back; or private
        self._accepted += 1
        if len(self._pending) >= self._max_pending and not event.terminal:
            self._settled += 1
            self._drop(1, "full", f"over max_pending={self._max_pending} waiting")
            return
        self._pending.append(event)
        idle = self._idle
        if idle is not None:
            self._idle = None
            idle.set()

    async def flush(self) -> None:
        """Wait until every event accepted for export before this call has been
        written to Redis (or counted as dropped).

        Always a checkpoint. Waits as long as Redis is away (bound it with
        :func:`anyio.fail_after`); cancellation changes nothing. Returns at once
        once the bridge has closed.
        """
        target = self._accepted
        await checkpoint()
        while self._settled < target and not self._stopped:
            if self._settled_event is None:
                self._settled_event = anyio.Event()
            await self._settled_event.wait()

    def _settle(self, count: int) -> None:
        self._settled += count
        event, self._settled_event = self._settled_event, None
        if event is not None:
            event.set()

    async def _write_loop(self, *, task_status: TaskStatus[None]) -> None:
        """Take pending events, encode them and send them. A big batch goes to a
        sender task, so that the next batch is encoded while it is in flight
        (and sent after it: each feed gets a bridge's batches in order); a small
        one is sent from here, which saves a task switch of latency."""
        assert self._task_group is not None
        in_flight: anyio.Event | None = None
        task_status.started()
        while True:
            while not self._pending:
                self._idle = anyio.Event()
                await self._idle.wait()
            if self._linger:
                await anyio.sleep(self._linger)
            batches, taken = self._prepare()
            if in_flight is not None:
                await in_flight.wait()
            in_flight = anyio.Event()
            if taken < _SPAWN_FROM:  # a trickle: send it now, from here
                await self._send(batches, taken, in_flight)
            else:  # a flood: encode the next batch while this one is in flight
                self._task_group.start_soon(self._send, batches, taken, in_flight)

    def _prepare(self) -> tuple[list[_Batch], int]:
        """Take pending events (up to ``batch_size`` events and about
        ``_BATCH_BYTES`` bytes), encode them and group them by partition,
        keeping their order; return the batches and how many events were taken."""
        batches: dict[int, _Batch] = {}
        partitions = self._partitions
        pending = self._pending
        taken = size = 0
        while pending and taken < self._batch_size and size < _BATCH_BYTES:
            event = pending.popleft()
            taken += 1
            try:
                data = encode(event)
            except (TypeError, ValueError) as exc:
                self._drop(1, "unencodable", f"cannot encode a {event.kind}: {exc}")
                continue
            size += len(data)
            run_id = event.run_id
            partition = partition_of(run_id, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = self._new_batch(partition)
            index = batch.runs.get(run_id)
            if index is None:
                batch.keys.append(f"{{{self._prefix}:{partition}}}:run:{run_id}")
                index = batch.runs[run_id] = len(batch.keys)
            batch.args += (index, data)
            batch.count += 1
        for batch in batches.values():
            batch.args[_FIRST_NUMBER] = self._entry_numbers[batch.partition] + 1
            self._entry_numbers[batch.partition] += batch.count
        return list(batches.values()), taken

    def _new_batch(self, partition: int) -> _Batch:
        self._batch_numbers[partition] += 1
        mark = f"{{{self._prefix}:{partition}}}:writer:{self._origin}"
        args: list[str | bytes | int] = [
            self._origin,
            self._batch_numbers[partition],
            self._maxlen,
            self._run_maxlen,
            self._run_ttl,
            _MARK_TTL,
            0,  # the first entry number, set when the batch is complete
        ]
        return _Batch(partition, [self._feeds[partition], mark], args)

    async def _send(self, batches: list[_Batch], count: int, done: anyio.Event) -> None:
        """Write *batches* in one round trip, sending again what did not
        certainly get through until it does (the script skips a batch applied
        before); then settle the *count* events taken for them. Cancelled (the
        bridge is closing), it leaves them unsettled: :meth:`aclose` counts them."""
        client = self._client
        assert client is not None
        backoff = _Backoff()
        while batches:
            try:
                async with client.pipeline(
                    transaction=False, raise_on_error=False, timeout=_SLACK
                ) as pipe:
                    for batch in batches:
                        pipe.evalsha(_APPEND_SHA, keys=batch.keys, args=batch.args)
                results: Sequence[object] = pipe.results or ()
            except (*_CONNECTION_ERRORS, RedisError) as exc:
                await self._failed("writer", exc, backoff)
                continue
            self._batches += 1
            batches, failure = await self._check(batches, results, client)
            if failure is not None:
                await self._failed("writer", failure, backoff)
            elif backoff.failures:
                self._recovered("writer", backoff)
        self._settle(count)
        done.set()

    async def _check(
        self,
        batches: list[_Batch],
        results: Sequence[object],
        client: coredis.Redis[bytes],
    ) -> tuple[list[_Batch], BaseException | None]:
        """Count what was written; return the batches to send again, and the
        error to back off for (none if the server had only lost the script,
        which is loaded again at once)."""
        again: list[_Batch] = []
        failure: BaseException | None = None
        for batch, result in zip(batches, results, strict=True):
            if not isinstance(result, BaseException):
                self._exported += batch.count
                continue
            if isinstance(result, NoScriptError):  # Redis restarted or flushed
                try:
                    await client.script_load(_APPEND)
                except (*_CONNECTION_ERRORS, RedisError) as exc:
                    failure = exc
                again.append(batch)
                continue
            failure = result
            if not isinstance(result, _CONNECTION_ERRORS):
                batch.refusals += 1
                if batch.refusals >= _REFUSED_ATTEMPTS:
                    self._drop(batch.count, "refused", f"Redis refused them: {result}")
                    continue
            again.append(batch)
        return again, failure

    async def _failed(self, task: str, exc: BaseException, backoff: _Backoff) -> None:
        """Log the first failure of a series, note a lost connection, back off."""
        if not backoff.failures:
            logger.warning(
                "the Redis bridge's %s failed (%s: %s); retrying with backoff",
                task,
                type(exc).__name__,
                exc,
            )
        backoff.disconnected |= isinstance(exc, _CONNECTION_ERRORS)
        await backoff.wait()

    def _recovered(self, task: str, backoff: _Backoff) -> None:
        if backoff.disconnected:
            self._reconnects += 1
        logger.info(
            "the Redis bridge's %s is back after %d attempt(s)", task, backoff.failures
        )
        backoff.failures = 0
        backoff.disconnected = False

    # -- in: other processes' events into the bus --------------------------------

    async def _read_loop(self, *, task_status: TaskStatus[None]) -> None:
        client = self._client
        assert client is not None
        positions = self._positions
        backoff = _Backoff()
        task_status.started()
        while True:
            try:
                with anyio.fail_after(_BLOCK_MS / 1000 + _SLACK):
                    response = await client.xread(
                        positions, count=_READ_COUNT, block=_BLOCK_MS
                    ).raw()
            except (*_CONNECTION_ERRORS, RedisError) as exc:
                await self._failed("reader", exc, backoff)
                continue
            if backoff.failures:
                self._recovered("reader", backoff)
            if not isinstance(response, dict):
                continue  # None: the block timed out
            try:
                await self._take_response(response, positions)
            except BusClosed:
                return  # the bus closed under the bridge: nothing more to do

    async def _take_response(
        self, response: Mapping[Any, Any], positions: dict[bytes, bytes]
    ) -> None:
        taken = 0
        for key, entries in response.items():
            for identifier, values in entries:
                await self._take(key, identifier, values)
                positions[key] = identifier
                taken += 1
                if taken % YIELD_INTERVAL == 0:
                    await checkpoint()

    async def _take(self, key: bytes, identifier: bytes, values: Any) -> None:
        origin, number, data = _fields(values)
        if origin == self._origin_bytes:
            self._own += 1
            return
        if (
            origin is not None
            and number is not None
            and data is not None
            and not self._in_sequence(key, identifier, origin, number)
        ):
            return
        event = self._decode(key, identifier, origin, data)
        if event is None:
            return
        if event.visibility > self._level:
            self._filtered += 1
            return
        try:
            accepted = await bus_seam(self._bus).ingest(event, self)
        except TypeError as exc:
            self._skip("refused", key, identifier, str(exc))
            return
        if accepted is None:
            self._rejected += 1
        else:
            self._imported += 1

    def _in_sequence(self, key: bytes, identifier: bytes, origin: Any, n: Any) -> bool:
        """Check an entry's number against the last one seen from its origin in
        this feed: count a gap as lost; refuse a duplicate."""
        try:
            number = int(n)
        except ValueError:
            self._skip("malformed", key, identifier, f"'n' is not a number: {n!r}")
            return False
        numbers = self._numbers
        last = numbers.get((origin, key))
        if last is not None:
            if number <= last:
                self._skip("duplicate", key, identifier, f"entry {number} seen before")
                return False
            if number > last + 1:
                self._lost += number - last - 1
                self._log_once(
                    "lost",
                    "lost %d entries of bridge %s in %s before %s: trimmed before"
                    " they were read (raise maxlen), or never written",
                    number - last - 1,
                    _text(origin),
                    _text(key),
                    _text(identifier),
                )
        elif len(numbers) >= _ORIGINS_KEPT:
            del numbers[next(iter(numbers))]
        numbers[origin, key] = number
        return True

    def _decode(
        self, key: bytes | str, identifier: object, origin: Any, data: Any
    ) -> Event | None:
        if data is None or origin is None:
            self._skip("malformed", key, identifier, "no 'o' or no 'e' field")
            return None
        if len(data) > self._max_size:
            why = f"{len(data)} bytes, over max_size={self._max_size}"
            self._skip("oversized", key, identifier, why)
            return None
        try:
            return decode(data, max_size=self._max_size)
        except DecodeError as exc:
            self._skip("undecodable", key, identifier, str(exc))
            return None

    # -- replay across processes ----------------------------------------------------

    async def replay(
        self,
        *,
        run_id: str,
        lane_id: StrArg = None,
        kinds: KindsArg = None,
        visibility: Visibility = Visibility.PUBLIC,
        since_seq: int = 0,
    ) -> list[Event]:
        """The events of run *run_id* that Redis keeps (the run's stream: every
        bridge's events, this one's included) and that match the filters (as in
        :meth:`EventBus.replay`), in the order they were appended; never above
        the bridge's visibility level. They come as the bus that first accepted
        them stamped them (``offset`` is that bus's). Entries that cannot be
        decoded are skipped and counted.

        A checkpoint; reads 1,000 entries per round trip. A lost connection is
        retried with backoff (5 attempts, then the error is raised). Cancelled,
        it returns nothing and changes nothing.

        :raises RuntimeError: if the bridge is not open
        :raises coredis.exceptions.ConnectionError: if Redis stays unreachable
        """
        if not isinstance(run_id, str):
            raise TypeError(f"run_id must be a string, not {type(run_id).__name__}")
        flt = make_filter(
            run_id=run_id, lane_id=lane_id, kinds=kinds, visibility=visibility
        )
        flt = attrs.evolve(flt, visibility=min(flt.visibility, self._level))
        since_seq = _count("since_seq", since_seq, 0)
        client = self._require_open()
        key = self.run_key(run_id)
        events: list[Event] = []
        start = b"-"
        while True:
            entries = await self._range(client, key, start)
            for identifier, values in entries:
                origin, _, data = _fields(values)
                event = self._decode(key, identifier, origin, data)
                if event is not None and event.seq > since_seq and flt.matches(event):
                    events.append(event)
            if len(entries) < _READ_COUNT:
                return events
            start = b"(" + entries[-1][0]

    async def _range(
        self, client: coredis.Redis[bytes], key: str, start: bytes
    ) -> list[Any]:
        backoff = _Backoff()
        while True:
            try:
                with anyio.fail_after(_SLACK):
                    reply = await client.xrange(key, start, "+", _READ_COUNT).raw()
                    return reply if isinstance(reply, list) else []
            except (*_CONNECTION_ERRORS, RedisError) as exc:
                if backoff.failures >= 4:
                    raise
                await self._failed("replay", exc, backoff)

    async def _replay_source(self, run_id: str) -> list[Event]:
        """The bus's replay source: the whole run, from Redis (up to the
        bridge's level; the subscription applies its own filters)."""
        return await self.replay(run_id=run_id, visibility=Visibility.PRIVATE)

    def subscribe_replay(
        self,
        *,
        run_id: str,
        lane_id: StrArg = None,
        kinds: KindsArg = None,
        visibility: Visibility = Visibility.PUBLIC,
        buffer_size: int | None = None,
        overflow: Overflow | None = None,
        name: str | None = None,
    ) -> Subscription[Event]:
        """``bus.subscribe(run_id=run_id, replay=True, ...)`` on the bridged
        bus, which, while this bridge is open, reaches back into Redis: the
        run from Redis merged with what only the local history holds of it,
        then live events, with no gap and no duplicate; it ends after the
        run's terminal event (see the module docs).
        The arguments are those of :meth:`EventBus.subscribe`.

        :raises TypeError, ValueError: as :meth:`EventBus.subscribe`
        :raises RuntimeError: if the bridge is not open
        """
        if not isinstance(run_id, str):
            raise TypeError(f"run_id must be a string, not {type(run_id).__name__}")
        self._require_open()
        return self._bus.subscribe(
            run_id=run_id,
            lane_id=lane_id,
            kinds=kinds,
            visibility=visibility,
            buffer_size=buffer_size,
            overflow=overflow,
            replay=True,
            name=name,
        )
