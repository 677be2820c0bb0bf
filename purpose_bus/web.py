"""A live view of a bus in the browser: an ASGI application (Starlette) that
streams events as Server-Sent Events, and a single-file viewer page.

Needs the ``web`` extra (``pip install 'purpose_bus[web]'``). Serve the
application on the event loop the bus runs on, with any ASGI server, or with
:func:`serve` (hypercorn, on asyncio or trio)::

    async with EventBus() as bus:
        await serve(create_app(bus), host="127.0.0.1", port=8000)

Routes, relative to where the application is mounted:

``GET /``
    The viewer: plain HTML, CSS and JavaScript in one file shipped with the
    package (no build step, nothing loaded from elsewhere). It lists the runs,
    shows the selected run's lanes as columns of events as they arrive, marks
    gaps and terminal states, and resumes after a lost connection. The query
    parameters ``run_id``, ``lane_id`` and ``kinds`` of the page's own address
    are passed on to ``GET /events``.

``GET /events``
    A ``text/event-stream`` of the events the caller may see: one message per
    event, with ``id:`` its offset, ``event:`` its kind and ``data:`` the JSON of
    :func:`purpose_bus.encode` (one line). See :func:`create_app` for the query
    parameters, resuming, gaps, heartbeats, the end of the stream and visibility.

``GET /kinds``
    The registered event kinds, as a JSON object ``{kind: {"terminal": bool}}``
    (the viewer listens for these kinds: an ``EventSource`` only hands a named
    event to a listener registered for its name).
"""

from __future__ import annotations

import copy
import inspect
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, cast

import anyio
import attrs
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._bus import EventBus
from ._codec import encode
from ._events import Event, EventsDropped, Visibility, registered_kinds
from ._hosts import HostCheck, allowed_set
from ._overflow import Overflow
from ._sse import SubscriptionStream, offset_problem, parse_offset, short
from ._subscription import Subscription
from ._validate import count, seconds

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = ["Authorize", "create_app", "format_event", "serve"]

logger = logging.getLogger("purpose_bus.web")

#: ``authorize(request)``: the most privileged :class:`~purpose_bus.Visibility`
#: the request may see, returned directly or awaited. It may raise
#: ``starlette.exceptions.HTTPException`` (say, a 401 or a 403) to refuse it.
Authorize = Callable[[Request], Visibility | Awaitable[Visibility]]

#: The query parameters of ``GET /events``.
_PARAMETERS = ("run_id", "lane_id", "kinds", "after")
#: The page runs its own inline script and style, and talks only to its origin.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src data:"
    ),
    "X-Content-Type-Options": "nosniff",
}


def create_app(
    bus: EventBus,
    *,
    authorize: Authorize | None = None,
    heartbeat: float = 15.0,
    retry: float = 1.0,
    buffer_size: int | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> Starlette:
    """Return an ASGI application (a :class:`starlette.applications.Starlette`)
    that serves a live view of *bus*: the routes are listed in :mod:`the module
    docstring <purpose_bus.web>`. Serve it on the event loop the bus runs on.

    ``GET /events`` takes the query parameters ``run_id``, ``lane_id`` and
    ``kinds`` (filters as in :meth:`EventBus.subscribe`; repeat a parameter for
    several values; ``kinds`` also takes a comma-separated list of registered
    kinds) and ``after`` (an offset). Each request is one subscription:

    - It resumes after the offset in the ``Last-Event-ID`` header (which a
      browser's ``EventSource`` sends when it reconnects), else after ``?after=``
      (``after=0`` for everything history still holds), else it starts live.
      Offsets history no longer holds are announced as a gap.
    - Lost events are announced: an :class:`~purpose_bus.EventsDropped` notice
      is sent as an ``events.dropped`` message without an ``id:`` line (a notice
      has offset 0, which would reset the browser's cursor).
    - The stream starts with a ``retry:`` line (the browser's reconnection
      delay) and sends a ``: heartbeat`` comment after *heartbeat* seconds
      without a message.
    - It ends when the bus closes, and when it is scoped to exactly one
      ``run_id`` and that run's terminal event has been sent. A request that
      would end at once, having nothing to send (a finished run resumed after
      its terminal event), gets ``204 No Content``, which tells an
      ``EventSource`` to stop reconnecting; a request to a bus that is closed
      (or not open yet) gets ``503``.
    - Its subscription is released as soon as the client disconnects.
    - Each subscription drops its oldest events when its buffer (*buffer_size*,
      default the bus's) is full, whatever the bus's default policy: a slow
      browser never blocks a producer.

    A request sees ``PUBLIC`` events only, unless *authorize* grants it more.
    A bad query value (or ``Last-Event-ID``) gets ``400`` with a message
    naming the parameter.

    Every request's ``Host`` header is checked against *allowed_hosts* (a guard
    against DNS rebinding): by default the loopback names (``localhost``,
    ``127.0.0.1``, ``::1``) and the address the server is bound to; a missing
    or other ``Host`` gets ``400``. No CORS headers are sent.

    :param authorize: see :data:`Authorize`; without it every request sees
        ``PUBLIC`` events only
    :param heartbeat: seconds of silence before a heartbeat comment (> 0)
    :param retry: the reconnection delay advised to browsers, seconds (>= 0)
    :param buffer_size: the bound of each stream's subscription (>= 1)
    :param allowed_hosts: the host names (or addresses, without a port) the
        application answers to, for a deployment under a real name; ``["*"]``
        answers any (only behind a proxy that checks ``Host`` itself)
    :raises TypeError: for a value of the wrong type
    :raises ValueError: for a value out of range
    """
    heartbeat = seconds("heartbeat", heartbeat, 0, strict=True)
    retry = seconds("retry", retry, 0)
    if buffer_size is not None:
        buffer_size = count("buffer_size", buffer_size, 1)
    hosts = allowed_set(allowed_hosts)
    streams = _Streams(
        bus=bus,
        authorize=authorize,
        heartbeat=float(heartbeat),
        retry=round(retry * 1000),
        buffer_size=buffer_size,
    )
    page = _viewer_page()

    async def viewer(request: Request) -> Response:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    async def kinds(request: Request) -> Response:
        return JSONResponse(
            {
                kind: {"terminal": bool(cls.terminal)}
                for kind, cls in sorted(registered_kinds().items())
            },
            headers={"Cache-Control": "no-cache"},
        )

    return Starlette(
        routes=[
            Route("/", viewer, methods=["GET"]),
            Route("/events", streams.events, methods=["GET"]),
            Route("/kinds", kinds, methods=["GET"]),
        ],
        middleware=[Middleware(HostCheck, allowed_hosts=hosts)],
    )


def _viewer_page() -> str:
    return resources.files(__package__).joinpath("_viewer.html").read_text("utf-8")


# -- the stream ---------------------------------------------------------------


def format_event(event: Event) -> bytes:
    """One Server-Sent-Events message for *event*: ``id:`` its offset (left out
    for an :class:`~purpose_bus.EventsDropped` notice), ``event:`` its kind,
    ``data:`` the one-line JSON of :func:`purpose_bus.encode`.

    :raises ValueError: if the kind holds a line break
    :raises TypeError: (or ``ValueError``) if :func:`purpose_bus.encode` does
    """
    kind = event.kind
    if "\n" in kind or "\r" in kind:
        raise ValueError(f"event kind {kind!r} holds a line break")
    data = encode(event)  # JSON escapes line breaks: always one line
    head = b"" if isinstance(event, EventsDropped) else b"id: %d\n" % event.offset
    return b"%sevent: %s\ndata: %s\n\n" % (head, kind.encode(), data)


def _frame(event: Event) -> bytes:
    try:
        return format_event(event)
    except (TypeError, ValueError) as exc:
        # Admission makes this unreachable for events made the ordinary way;
        # if it happens anyway, the client is told, never left to guess: a
        # notice for the one event, then its id alone, which moves the
        # browser's cursor past it.
        logger.warning("cannot stream event %d (%s): %s", event.offset, event.kind, exc)
        notice = EventsDropped(
            run_id=event.run_id,
            lane_id=event.lane_id,
            count=1,
            first_offset=event.offset,
            last_offset=event.offset,
        )
        return format_event(notice) + b"id: %d\n\n" % event.offset


class _BadQuery(ValueError):
    """A query value (or header) of ``GET /events`` that cannot be used."""


@attrs.frozen
class _Query:
    run_ids: frozenset[str] | None
    lane_ids: frozenset[str] | None
    kinds: frozenset[str] | None
    after: int | None


def _parse_query(request: Request) -> _Query:
    params = request.query_params
    for name in params:
        if name not in _PARAMETERS:
            raise _BadQuery(
                f"unknown query parameter {short(name)}; use {', '.join(_PARAMETERS)}"
            )
    return _Query(
        run_ids=_strings(params.getlist("run_id"), "run_id"),
        lane_ids=_strings(params.getlist("lane_id"), "lane_id"),
        kinds=_kinds(params.getlist("kinds")),
        after=_cursor(request),
    )


def _strings(values: list[str], name: str) -> frozenset[str] | None:
    if not values:
        return None
    if "" in values:
        raise _BadQuery(f"{name} must not be empty")
    return frozenset(values)


def _kinds(values: list[str]) -> frozenset[str] | None:
    kinds = _strings([kind for value in values for kind in value.split(",")], "kinds")
    known = registered_kinds()
    for kind in sorted(kinds or ()):
        if kind not in known:
            raise _BadQuery(
                f"kinds: unknown kind {short(kind)}; known kinds: "
                + ", ".join(sorted(known))
            )
    return kinds


def _cursor(request: Request) -> int | None:
    """The offset to resume after: ``Last-Event-ID`` wins over ``?after=`` (the
    browser sends the header when it reconnects to the same address)."""
    header = request.headers.get("last-event-id", "")
    if header:
        return _offset(header, "Last-Event-ID")
    values = request.query_params.getlist("after")
    if len(values) > 1:
        raise _BadQuery("after must be given at most once")
    return _offset(values[0], "after") if values else None


def _offset(text: str, name: str) -> int:
    value = parse_offset(text)
    if value is None:
        raise _BadQuery(offset_problem(text, name))
    return value


@attrs.frozen
class _Streams:
    """``GET /events``: checks the request, then streams a subscription."""

    bus: EventBus
    authorize: Authorize | None
    heartbeat: float
    retry: int  # milliseconds
    buffer_size: int | None

    async def events(self, request: Request) -> Response:
        level = await self._level(request)
        try:
            query = _parse_query(request)
        except _BadQuery as exc:
            return PlainTextResponse(f"bad request: {exc}\n", status_code=400)
        client = request.client
        name = f"web {client.host}:{client.port}" if client else "web"
        subscription = self.bus.subscribe(
            run_id=query.run_ids,
            lane_id=query.lane_ids,
            kinds=query.kinds,
            visibility=level,
            after=query.after,
            buffer_size=self.buffer_size,
            overflow=Overflow.DROP_OLDEST,
            gap_events=True,
            name=name,
        )
        return _EventStream(subscription, self.heartbeat, self.retry)

    async def _level(self, request: Request) -> Visibility:
        if self.authorize is None:
            return Visibility.PUBLIC
        level = self.authorize(request)
        if inspect.isawaitable(level):
            level = await level
        if not isinstance(level, Visibility):
            raise TypeError(f"authorize must return a Visibility, not {level!r}")
        return level


class _EventStream(SubscriptionStream):
    """The response of ``GET /events``: a subscription, streamed (see
    :class:`~purpose_bus._sse.SubscriptionStream`): one message per event."""

    def __init__(
        self, subscription: Subscription[Event], heartbeat: float, retry: int
    ) -> None:
        super().__init__(subscription, heartbeat)
        self._retry = retry

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = [_frame(self._subscription.receive_nowait())]
        except anyio.WouldBlock:
            first = []
        except anyio.EndOfStream:  # nothing to send, ever: don't reconnect
            await Response(status_code=204)(scope, receive, send)
            return
        if await self._start(
            scope, send, b"retry: %d\n\n%s" % (self._retry, b"".join(first))
        ):
            await self._stream(receive, send)

    def _frame(self, event: Event) -> bytes:
        return _frame(event)


# -- serving ------------------------------------------------------------------


async def serve(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    config: Config | None = None,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI application *app* with hypercorn, on the running backend
    (asyncio or trio), on *host* and *port* (0 picks a free port).

    With ``await task_group.start(serve, ...)`` it reports the address it
    listens on, ``(host, port)``; clients can connect from then on. It runs
    until *shutdown_trigger* (an async callable) returns, or until it is
    cancelled; either way hypercorn shuts down gracefully first: it stops
    accepting connections and gives open responses *config*'s
    ``graceful_timeout`` (3 s by default) to finish. Event streams end only when
    the bus closes or their run ends: close the bus first and nothing waits.
    Cancelled, it raises the cancellation once the server is down.

    :param config: a ``hypercorn.config.Config`` for everything else (a copy is
        used, with ``bind`` set to the listening socket)
    :raises OSError: if it cannot listen on *host* and *port*
    """
    from hypercorn.config import Config

    config = Config() if config is None else copy.copy(config)
    listener = _listen(host, port)
    address = cast(tuple[str, int], listener.getsockname()[:2])
    # hypercorn takes the socket over by its file descriptor, and closes it.
    config.bind = [f"fd://{listener.detach()}"]
    task_status.started(address)
    hypercorn_serve = _hypercorn_serve()
    stop = anyio.Event()

    async def trigger() -> None:
        async with anyio.create_task_group() as task_group:

            async def wait(until: Callable[[], Awaitable[object]]) -> None:
                await until()
                task_group.cancel_scope.cancel()

            task_group.start_soon(wait, stop.wait)
            if shutdown_trigger is not None:
                task_group.start_soon(wait, shutdown_trigger)

    async def stop_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(stop_when_cancelled)
        # The server is shielded: a cancellation from outside sets stop instead,
        # and hypercorn shuts down gracefully.
        with anyio.CancelScope(shield=True):
            await hypercorn_serve(app, config, shutdown_trigger=trigger)
        task_group.cancel_scope.cancel()


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(100)
    except BaseException:
        listener.close()
        raise
    return listener


def _hypercorn_serve() -> Callable[..., Awaitable[None]]:
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        from hypercorn.trio import serve as trio_serve

        return cast(Callable[..., Awaitable[None]], trio_serve)
    from hypercorn.asyncio import serve as asyncio_serve

    return cast(Callable[..., Awaitable[None]], asyncio_serve)
