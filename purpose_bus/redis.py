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
  reader continues after the last stream id it processed (ids Redis assigns:
  each entry is read once), and the writer sends the batch in flight again,
  which Redis applies at most once. Nothing is lost or duplicated, unless a
  reader stays away so long that its feed is trimmed past it: that loss is
  counted (``lost``, from Redis 7's tally of entries added to each stream) and
  logged.
* **Replay across processes.** :meth:`RedisBridge.replay` reads a run back from
  Redis. While the bridge is open, ``bus.subscribe(run_id=..., replay=True)``
  (without ``after``) reaches back into Redis too: entering registers on the
  local bus, then reads the whole run from Redis and merges in what only the
  local history holds of it (each lane in ``seq`` order, the terminal event
  last); it hands those out, then live events, skipping any handed out
  already, and ends after the run's terminal event.
  (:meth:`RedisBridge.subscribe_replay` is a shorthand for it.)

**Identity.** Which entries are the same event is decided by coordinates a bus
or Redis assigned, never by user data (``span_id`` is kept by
``attrs.evolve``, and one object may be emitted twice: distinct events). An
entry of another bridge is named by a digest of its ``o`` and ``e`` fields,
that is of the origin bus's id and of the event as that bus stamped it, its
``offset`` included (Python's ``hash``, keyed at random in each process).
The reader files that identity for the local offset the bus gives the event
when it imports it (for as many events as the bus's history holds); this
bridge's own events are named by their local offset. A late joiner's merge
(:class:`~purpose_bus._remote.MergedReader`) compares those identities, so it
hands out every event of the run once, evolved copies and re-emitted objects
included, and counts exactly what it handed out of the local bus.

**Hostile entries.** Anyone who can write the keys can append entries, so the
reader judges every entry on its own and no entry moves any state of the
reader's beyond itself: the position in each feed is the Redis id of the last
entry read, which Redis assigns; no in-band counter is trusted. An entry is
refused and counted (:attr:`BridgeStatistics.skipped_by_reason`) when it lacks
``o`` or ``e``, is over ``max_size``, does not decode (``seq`` and ``offset``
in 1 … 2**63-1 included; 0 is ``"unstamped"``), sits in the feed (or stream)
of another partition (or run) than its ``run_id``'s, or is a copy (the same
``o`` and ``e`` as an entry taken among the last 100,000): the next entry is
taken as if it had not been there. An entry that passes is an event like any
other: a writer can add events (to any run, under any origin id: Redis does
not authenticate writers; use its ACLs), but cannot make a reader skip,
lose or take twice an entry another bridge wrote: entries claiming the same
origin and offset with different contents are both delivered, since
refusing either would let a forger suppress the genuine one.

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
fields ``o`` (the origin id of the bridge that wrote it) and ``e`` (the
encoded event); other fields are ignored. Nothing is ever unpickled: remote
data goes through :func:`purpose_bus.decode`, with its size limit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import uuid
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
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
from ._codec import MAX_DECODE_BYTES, decode, encode
from ._events import Event, Visibility
from ._exceptions import BusClosed, DecodeError
from ._filters import KindsArg, StrArg, make_filter
from ._overflow import Overflow
from ._remote import ReplaySource
from ._subscription import EVENTS_PER_YIELD, Subscription
from ._validate import count, seconds, text

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
#: How many entries the reader remembers, to refuse copies of them.
_SEEN_KEPT = 100_000
#: How many runs' partitions the reader keeps at hand.
_RUNS_KEPT = 10_000
#: The longest ``o`` field accepted (a bridge's origin id is 16 characters).
_ORIGIN_MAX = 64
#: At most this often (s), the reader asks Redis how many entries each feed
#: has had, to count those trimmed before it read them (``lost``); it does
#: when fewer than _WAITING_MAX entries of the feed wait to be read.
_LOSS_CHECK_SECONDS = 1.0
_WAITING_MAX = 1000

# Appends one partition's batch to its feed and to its runs' streams, at most
# once per (origin, partition, batch number): a batch sent again is skipped.
# KEYS: feed, writer mark, run streams ...; ARGV: origin, batch number, maxlen,
# run maxlen, run ttl, mark ttl, then (index into KEYS, encoded event) per event.
_APPEND = """
local mark = redis.call('GET', KEYS[2])
if mark and tonumber(mark) >= tonumber(ARGV[2]) then return 0 end
local origin = ARGV[1]
for i = 7, #ARGV, 2 do
  local data = ARGV[i + 1]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'o', origin, 'e', data)
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', ARGV[4], '*',
             'o', origin, 'e', data)
end
for k = 3, #KEYS do redis.call('EXPIRE', KEYS[k], ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[6])
return (#ARGV - 6) / 2
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()

# Where each feed stands, as Redis counts, in one atomic step: per key, its
# last id, how many entries were ever added to it (Redis 7; false on 6.2), and
# how many of those it still holds after the reader's position ARGV[i] (false
# from _WAITING_MAX on; 0 if ARGV[i] is empty); 0-0, 0, 0 for a stream that
# does not exist. Read only.
_TALLY = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = {'0-0', 0, 0}
  if redis.call('EXISTS', key) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    local last, added, waiting = '0-0', false, 0
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = info[j + 1] end
      if info[j] == 'entries-added' then added = info[j + 1] end
    end
    if ARGV[i] ~= '' and ARGV[i] ~= last then
      waiting = #redis.call('XRANGE', key, '(' .. ARGV[i], '+', 'COUNT', MAX)
      if waiting == MAX then waiting = false end
    end
    out[i] = {last, added, waiting}
  end
end
return out
""".replace("MAX", str(_WAITING_MAX))


def partition_of(run_id: str, partitions: int) -> int:
    """The partition of *run_id*: ``crc32(run_id) mod partitions``, the same in
    every process (unlike :func:`hash`)."""
    return zlib.crc32(run_id.encode("utf-8", "surrogatepass")) % partitions


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fields(values: Sequence[Any]) -> tuple[Any, Any]:
    """An entry's ``(o, e)`` values (``None`` where missing) from its flat
    field/value list; other fields are ignored."""
    if len(values) == 4 and values[0] == b"o" and values[2] == b"e":
        return values[1], values[3]  # what bridges write
    fields = dict(zip(values[::2], values[1::2], strict=False))
    return fields.get(b"o"), fields.get(b"e")


def _own(event: Event) -> tuple[str, int]:
    """The identity of an event this bridge's bus accepted first: its offset
    there (a tuple, so that it never equals another bridge's entry digest)."""
    return ("own", event.offset)


def _rows(reply: object, count: int) -> list[tuple[Any, Any, Any]]:
    """The *count* ``(last id, entries added, entries waiting)`` rows of the
    tally script's reply; :exc:`RedisError` (retried like any) for anything
    else."""
    if (
        not isinstance(reply, list)
        or len(reply) != count
        or not all(isinstance(row, list) and len(row) == 3 for row in reply)
    ):
        raise RedisError(f"unexpected reply to the tally script: {reply!r}")
    return [(row[0], row[1], row[2]) for row in reply]


@attrs.frozen(kw_only=True)
class BridgeStatistics:
    """A snapshot of a :class:`RedisBridge`'s counters."""

    #: Local events written to Redis.
    exported: int
    #: Local events that will not be written: over ``max_pending`` while Redis
    #: was slow or away, not encodable, encoded larger than ``max_size`` (which
    #: readers with the same limit refuse), refused by Redis, or still
    #: unwritten when the bridge closed.
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
    #: before it read them (it fell more than about ``maxlen`` entries
    #: behind). Counted from what Redis 7 tallies per stream (``XINFO
    #: STREAM``'s ``entries-added``, less those still waiting to be read),
    #: checked about once a second whenever fewer than 1,000 wait; not
    #: counted on Redis 6.2.
    lost: int
    #: Entries that could not be used (from a feed or a replay), in total.
    skipped: int
    #: ``skipped`` by reason, each refusing one entry and nothing else:
    #: ``"malformed"`` (no ``e`` field, or no ``o`` of 1 to 64 bytes),
    #: ``"oversized"`` (over ``max_size``), ``"undecodable"``
    #: (:func:`purpose_bus.decode` refused it, an out-of-range ``seq`` or
    #: ``offset`` included), ``"unstamped"`` (``seq`` or ``offset`` 0: no bus
    #: accepted it), ``"misplaced"`` (in the feed or stream of another
    #: partition or run than its ``run_id``'s), ``"refused"`` (an event the
    #: bus does not take from outside, such as an ``EventsDropped`` notice),
    #: ``"duplicate"`` (the same origin and encoded event as an entry taken
    #: before: a copy).
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
        max_size: int = MAX_DECODE_BYTES,
        batch_size: int = 1000,
        linger: float = 0.0,
        max_pending: int = 100_000,
        client_name: str | None = None,
        close_timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an EventBus, not {type(bus).__name__}")
        url = text("url", url)
        if client_name is not None:
            client_name = text("client_name", client_name)
        prefix = text("prefix", prefix)
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty, without braces: {prefix!r}")
        self._bus = bus
        self._url = url
        self._prefix = prefix
        self._level = make_filter(visibility=visibility).visibility
        self._maxlen = count("maxlen", maxlen, 1)
        self._run_maxlen = count("run_maxlen", run_maxlen, 1)
        self._run_ttl = count("run_ttl", run_ttl, 1)
        self._partitions = count("partitions", partitions, 1)
        self._max_size = count("max_size", max_size, 1)
        self._batch_size = count("batch_size", batch_size, 1)
        self._linger = seconds("linger", linger, 0)
        self._max_pending = count("max_pending", max_pending, 1)
        self._close_timeout = seconds("close_timeout", close_timeout, 0)
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
        # The reader: the last id processed per feed; per feed, how many of
        # its entries are accounted for (read, or counted lost; None: Redis
        # does not say, 6.2), and when that was last compared with Redis's
        # tally; the identities of the last entries taken (oldest first).
        self._positions: dict[bytes, bytes] = {}
        self._accounted: dict[bytes, int | None] = {}
        self._tallied = -math.inf
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._partition_of_run: dict[str, int] = {}  # a cache
        self._partition_of_feed = {
            feed.encode(): k for k, feed in enumerate(self._feeds)
        }
        # The identity of each imported event still in the bus's history, by
        # its local offset; the tap files the one being imported.
        self._identities: dict[int, int] = {}
        self._identities_order: deque[int] = deque()
        self._identities_kept = 0
        self._importing: int | None = None
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
            self._remove_source = seam.add_replay_source(
                ReplaySource(self._read_run, self._identity)
            )
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
        where every feed stands (the reader starts after its last id)."""
        meta = f"{{{self._prefix}}}:partitions"
        async with client.pipeline(transaction=False) as pipe:
            pipe.script_load(_APPEND)
            pipe.set(meta, self._partitions, condition=coredis.PureToken.NX)
            stored = pipe.get(meta)
            tally = pipe.eval(_TALLY, keys=self._feeds, args=[""] * len(self._feeds))
        if (await stored or b"") != str(self._partitions).encode():
            raise ValueError(
                f"prefix {self._prefix!r} is used with {_text(await stored)}"
                f" partitions, not {self._partitions}"
            )
        for feed, (last, added, _) in zip(
            self._feeds, _rows(await tally, self._partitions), strict=True
        ):
            key = feed.encode()
            self._positions[key] = last.encode() if isinstance(last, str) else last
            self._accounted[key] = added if isinstance(added, int) else None
        self._tallied = anyio.current_time()
        # no more can be asked for
        self._identities_kept = bus_seam(self._bus).history.size

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
        if source is not None:  # from Redis (or another bridge): never sent back
            if source is self and self._importing is not None:
                self._file_identity(event.offset, self._importing)
            return
        if event.visibility > self._level:
            return
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
            if len(data) > self._max_size:  # every reader would refuse it
                why = f"a {event.kind} of {len(data)} bytes, over max_size"
                self._drop(1, "oversized", why)
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
                if anyio.current_time() - self._tallied >= _LOSS_CHECK_SECONDS:
                    await self._count_lost(client)
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

    async def _count_lost(self, client: coredis.Redis[bytes]) -> None:
        """Compare what the reader accounted for with Redis's tally of each
        feed: the entries added that it neither read nor finds waiting after
        its position were trimmed before it could read them (or deleted)."""
        self._tallied = anyio.current_time()  # failing, it is tried again later
        positions = [self._positions[feed.encode()] for feed in self._feeds]
        with anyio.fail_after(_SLACK):
            reply = await client.eval(_TALLY, keys=self._feeds, args=positions)
        for feed, (_, added, waiting) in zip(
            self._feeds, _rows(reply, self._partitions), strict=True
        ):
            key = feed.encode()
            accounted = self._accounted[key]
            if accounted is None or not isinstance(added, int):
                continue  # Redis 6.2: no tally
            if not isinstance(waiting, int):
                continue  # far behind: counted once it has caught up
            missing = added - waiting - accounted
            if missing > 0:
                self._lost += missing
                self._log_once(
                    "lost",
                    "lost %d entries in %s: trimmed before they were read"
                    " (raise maxlen), or deleted",
                    missing,
                    feed,
                )
            # (also when fewer were added than read: the feed was made anew)
            self._accounted[key] = added - waiting

    async def _take_response(
        self, response: Mapping[Any, Any], positions: dict[bytes, bytes]
    ) -> None:
        taken = 0
        accounted = self._accounted
        for key, entries in response.items():
            for identifier, values in entries:
                await self._take(key, identifier, values)
                positions[key] = identifier
                count = accounted[key]
                if count is not None:
                    accounted[key] = count + 1
                taken += 1
                if taken % EVENTS_PER_YIELD == 0:
                    await checkpoint()

    async def _take(self, key: bytes, identifier: bytes, values: Any) -> None:
        """Take one feed entry: refuse and count it if it is not an event this
        bridge may import (see :class:`BridgeStatistics`), else hand it to the
        bus. Only this entry is concerned, whatever it holds: no state of the
        reader's is moved by what an entry claims."""
        origin, data = _fields(values)
        if origin == self._origin_bytes:
            self._own += 1
            return
        identity = self._identity_of_entry(key, identifier, origin, data)
        if identity is None:
            return
        if identity in self._seen:
            self._skip("duplicate", key, identifier, "a copy of an entry taken before")
            return
        event = self._decode(key, identifier, data)
        if event is None or not self._placed(key, identifier, event):
            return
        if event.visibility > self._level:
            self._filtered += 1
            return
        self._remember(identity)
        self._importing = identity
        try:
            accepted = await bus_seam(self._bus).ingest(event, self)
        except TypeError as exc:
            self._skip("refused", key, identifier, str(exc))
            return
        finally:
            self._importing = None
        if accepted is None:
            self._rejected += 1
        else:
            self._imported += 1

    def _identity_of_entry(
        self, key: bytes | str, identifier: object, origin: Any, data: Any
    ) -> int | None:
        """The identity of another bridge's entry: a digest of its origin and
        encoded event (so of the origin's offset, which is in it); ``None``
        (counted) if it lacks either, or is too large to be read.

        The digest is Python's ``hash``, a SipHash keyed at random in each
        process: 64 bits nobody outside can compute, the same for a feed's and
        a run stream's copy of an entry within the process (all it is used
        for). Two different entries share one by chance about once in 10**14
        entries read against the 100,000 remembered; the later one is then
        counted as a duplicate."""
        if (
            data is None
            or not isinstance(origin, bytes)
            or not 0 < len(origin) <= _ORIGIN_MAX
        ):
            self._skip("malformed", key, identifier, "no 'e', or no 'o' of 1-64 bytes")
            return None
        if len(data) > self._max_size:
            why = f"{len(data)} bytes, over max_size={self._max_size}"
            self._skip("oversized", key, identifier, why)
            return None
        return hash((origin, data))

    def _remember(self, identity: int) -> None:
        seen, order = self._seen, self._seen_order
        seen.add(identity)
        order.append(identity)
        if len(order) > _SEEN_KEPT:
            seen.discard(order.popleft())

    def _file_identity(self, offset: int, identity: int) -> None:
        identities, order = self._identities, self._identities_order
        identities[offset] = identity
        order.append(offset)
        if len(order) > self._identities_kept:
            del identities[order.popleft()]

    def _decode(
        self, key: bytes | str, identifier: object, data: bytes
    ) -> Event | None:
        """Decode an entry's event; ``None`` (counted) if it is not one that
        crossed processes: undecodable, or not stamped by a bus."""
        try:
            event = decode(data, max_size=self._max_size)
        except DecodeError as exc:
            self._skip("undecodable", key, identifier, str(exc))
            return None
        if event.seq < 1 or event.offset < 1:
            why = f"seq {event.seq}, offset {event.offset}: no bus stamped it"
            self._skip("unstamped", key, identifier, why)
            return None
        return event

    def _placed(self, key: bytes | str, identifier: object, event: Event) -> bool:
        """Whether *event* is where its run's entries go (*key* a feed: the feed
        of its run's partition; else its run's stream); else count it."""
        partition = self._partition_of_feed.get(key) if isinstance(key, bytes) else None
        if partition is not None:
            run_id = event.run_id
            of_run = self._partition_of_run.get(run_id)
            if of_run is None:
                of_run = partition_of(run_id, self._partitions)
                if len(self._partition_of_run) >= _RUNS_KEPT:
                    self._partition_of_run.clear()
                self._partition_of_run[run_id] = of_run
            if of_run == partition:
                return True
        elif key == self.run_key(event.run_id):
            return True
        why = f"an event of run {event.run_id!r} in {_text(key)}"
        self._skip("misplaced", key, identifier, why)
        return False

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
        used (see :class:`BridgeStatistics`), copies of an entry read before
        among them, are skipped and counted.

        A checkpoint; reads 1,000 entries per round trip. A lost connection is
        retried with backoff (5 attempts, then the error is raised). Cancelled,
        it returns nothing and changes nothing.

        :raises RuntimeError: if the bridge is not open
        :raises coredis.exceptions.ConnectionError: if Redis stays unreachable
        """
        text("run_id", run_id)
        flt = make_filter(
            run_id=run_id, lane_id=lane_id, kinds=kinds, visibility=visibility
        )
        flt = attrs.evolve(flt, visibility=min(flt.visibility, self._level))
        since_seq = count("since_seq", since_seq, 0)
        self._require_open()
        return [
            event
            for _, event in await self._read_run(run_id)
            if event.seq > since_seq and flt.matches(event)
        ]

    async def _read_run(self, run_id: str) -> list[tuple[Hashable, Event]]:
        """The bus's replay source: every usable entry of the run's stream up
        to the bridge's level, in order, each with its identity: this bridge's
        own events by their offset (as :meth:`_identity` calls them in the
        local history), other bridges' by the digest the reader files too."""
        client = self._require_open()
        key = self.run_key(run_id)
        events: list[tuple[Hashable, Event]] = []
        seen: set[Hashable] = set()
        start = b"-"
        while True:
            entries = await self._range(client, key, start)
            for identifier, values in entries:
                origin, data = _fields(values)
                digest = self._identity_of_entry(key, identifier, origin, data)
                event = None if digest is None else self._decode(key, identifier, data)
                if event is None or not self._placed(key, identifier, event):
                    continue
                identity = _own(event) if origin == self._origin_bytes else digest
                if identity in seen:
                    self._skip("duplicate", key, identifier, "a copy of an entry")
                elif event.visibility <= self._level:
                    seen.add(identity)
                    events.append((identity, event))
            if len(entries) < _READ_COUNT:
                return events
            start = b"(" + entries[-1][0]

    def _identity(self, event: Event) -> Hashable:
        """The identity of an event of the local history (see
        :meth:`_read_run`): the imported ones' as filed, others' their offset."""
        identity = self._identities.get(event.offset)
        return _own(event) if identity is None else identity

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
        text("run_id", run_id)
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
