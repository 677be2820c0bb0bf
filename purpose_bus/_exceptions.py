"""The exceptions purpose_bus raises, all under one root.

Each one also subclasses the built-in or AnyIO exception it means, so code that
already catches ``ValueError`` or ``anyio.ClosedResourceError`` keeps working.
AnyIO's own stream exceptions (``anyio.WouldBlock``, ``anyio.EndOfStream``) pass
through unchanged and are not wrapped.

Each class says it belongs to ``purpose_bus``, where users import it from, so a
traceback reads ``purpose_bus.BusClosed``, not the private module's name.
"""

from __future__ import annotations

import anyio


class PurposeBusError(Exception):
    """The root of every exception defined by purpose_bus."""

    __module__ = "purpose_bus"


class BusClosed(PurposeBusError, anyio.ClosedResourceError):
    """Raised when emitting on a bus that is not open: before ``async with`` has
    entered it, or after it has closed; also raised in a publisher or a thread
    that was waiting for room when the bus closed."""

    __module__ = "purpose_bus"


class EventRejected(PurposeBusError, ValueError):
    """Raised by a ``strict`` bus when a guard or the run lifecycle check refuses
    an event. The rejected event reached no subscriber, no history and no bridge.

    :ivar reason: the guard's reason, for logs and metrics
    """

    __module__ = "purpose_bus"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(PurposeBusError, ValueError):
    """Raised by :func:`purpose_bus.decode` when its input is not a valid encoded
    event; the message says what was wrong with it."""

    __module__ = "purpose_bus"
