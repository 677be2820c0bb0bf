"""What the package's Server-Sent-Events endpoints share (:mod:`purpose_bus.web`
and :mod:`purpose_bus.agui`): a response that streams one subscription, and
the parsing of the offsets clients resume from.

Needs the ``web`` extra (Starlette).
"""

from __future__ import annotations

import anyio
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from ._codec import MAX_COUNTER
from ._events import Event
from ._exceptions import BusClosed
from ._subscription import Subscription

__all__ = ["SubscriptionStream", "offset_problem", "parse_offset", "send_body", "short"]

#: At most this many buffered events go into one chunk of a response.
BATCH = 64
HEARTBEAT = b": heartbeat\n\n"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Offsets are at most 19 digits (2**63); longer input is refused unparsed.
_MAX_DIGITS = 19


def short(text: str, limit: int = 40) -> str:
    """*text* quoted for a message, cut to about *limit* characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def parse_offset(text: str) -> int | None:
    """*text*, a cursor a client sent, as an offset (0 … 2**63-1), or
    ``None`` if it is not one (the caller answers 400 with
    :func:`offset_problem`)."""
    if text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS:
        value = int(text)
        if value <= MAX_COUNTER:
            return value
    return None


def offset_problem(text: str, name: str) -> str:
    """The message for a cursor :func:`parse_offset` refused."""
    return f"{name} must be an event offset (an integer >= 0), not {short(text)}"


async def send_body(send: Send, body: bytes) -> None:
    """Send one chunk of a streamed body."""
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()
    scope.cancel()


class SubscriptionStream(Response):
    """A ``text/event-stream`` response that streams one subscription.

    Its subscription is entered before the response starts, so every matching
    event accepted after that reaches the client (or is announced as lost); a
    bus that is closed (or not open yet) gets ``503``. The subscription is
    closed however the response ends: the client going away (which ends the
    stream at once), the subscription ending, or an error. Events go out in
    chunks of what is buffered (up to :data:`BATCH`), with a heartbeat comment
    after *heartbeat* seconds of silence.

    A subclass says how the response starts (:meth:`_respond`, which calls
    :meth:`_stream` to stream), how an event becomes bytes (:meth:`_frame`) and
    when the stream is over before the subscription ends (:meth:`_done`).
    """

    media_type = "text/event-stream"

    def __init__(self, subscription: Subscription[Event], heartbeat: float) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(STREAM_HEADERS)
        self._subscription = subscription
        self._heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self._subscription
        try:
            await subscription.__aenter__()
        except BusClosed:
            response = PlainTextResponse("the bus is closed\n", status_code=503)
            await response(scope, receive, send)
            return
        try:
            await self._respond(scope, receive, send)
        except OSError:  # the client is gone (ASGI 2.4 servers raise on send)
            pass
        finally:
            subscription.close()

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the response (the subscription is entered) and stream it."""
        raise NotImplementedError

    def _frame(self, event: Event) -> bytes:
        """The bytes that carry *event* to the client."""
        raise NotImplementedError

    def _done(self) -> bool:
        """Whether the stream is over although the subscription has not ended."""
        return False

    async def _start(self, scope: Scope, send: Send, first: bytes) -> bool:
        """Send the headers and then *first* as the first chunk; return whether
        to stream on (not for ``HEAD``, which gets the headers only)."""
        await send(
            {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return False
        await send_body(send, first)
        return True

    async def _stream(self, receive: Receive, send: Send) -> None:
        """Stream events and heartbeats until the subscription ends (or
        :meth:`_done`), or the client goes away; then end the body."""
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(
                _cancel_on_disconnect, receive, task_group.cancel_scope
            )
            await self._pump(send)
            await send({"type": "http.response.body", "body": b""})
            task_group.cancel_scope.cancel()

    async def _pump(self, send: Send) -> None:
        subscription = self._subscription
        while not self._done():
            event: Event | None = None
            with anyio.move_on_after(self._heartbeat):
                try:
                    event = await subscription.receive()
                except anyio.EndOfStream:
                    return
            if event is None:  # a cancelled receive leaves no event behind
                await send_body(send, HEARTBEAT)
                continue
            chunks = [self._frame(event)]
            while len(chunks) < BATCH and not self._done():
                try:
                    chunks.append(self._frame(subscription.receive_nowait()))
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await send_body(send, b"".join(chunks))
