"""purpose_bus: an in-process async pub/sub event bus for agent runtimes, on AnyIO.

Public names are re-exported here from small private modules, one concept each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._bus import EventBus as EventBus
from ._codec import MAX_DECODE_BYTES as MAX_DECODE_BYTES
from ._codec import MAX_NESTING as MAX_NESTING
from ._codec import decode as decode
from ._codec import encode as encode
from ._events import Event as Event
from ._events import EventsDropped as EventsDropped
from ._events import LaneFinished as LaneFinished
from ._events import LaneStarted as LaneStarted
from ._events import Log as Log
from ._events import MessageDelta as MessageDelta
from ._events import ReasoningSummary as ReasoningSummary
from ._events import RunCancelled as RunCancelled
from ._events import RunError as RunError
from ._events import RunFinished as RunFinished
from ._events import RunStarted as RunStarted
from ._events import StepFinished as StepFinished
from ._events import StepStarted as StepStarted
from ._events import ToolCall as ToolCall
from ._events import ToolResult as ToolResult
from ._events import Visibility as Visibility
from ._events import event_class as event_class
from ._events import registered_kinds as registered_kinds
from ._exceptions import BusClosed as BusClosed
from ._exceptions import DecodeError as DecodeError
from ._exceptions import EventRejected as EventRejected
from ._exceptions import PurposeBusError as PurposeBusError
from ._filters import EventFilter as EventFilter
from ._frozen import FrozenDict as FrozenDict
from ._frozen import thaw as thaw
from ._guards import DEFAULT_HIDDEN_KEYS as DEFAULT_HIDDEN_KEYS
from ._guards import Guard as Guard
from ._guards import create_hidden_reasoning_guard as create_hidden_reasoning_guard
from ._guards import reject_hidden_reasoning as reject_hidden_reasoning
from ._merge import parallel_merge as parallel_merge
from ._overflow import Overflow as Overflow
from ._statistics import BusStatistics as BusStatistics
from ._statistics import SubscriptionStatistics as SubscriptionStatistics
from ._subscription import EVENTS_PER_YIELD as EVENTS_PER_YIELD
from ._subscription import Subscription as Subscription

__all__ = [
    "DEFAULT_HIDDEN_KEYS",
    "EVENTS_PER_YIELD",
    "MAX_DECODE_BYTES",
    "MAX_NESTING",
    "BusClosed",
    "BusStatistics",
    "DecodeError",
    "Event",
    "EventBus",
    "EventFilter",
    "EventRejected",
    "EventsDropped",
    "FrozenDict",
    "Guard",
    "LaneFinished",
    "LaneStarted",
    "Log",
    "MessageDelta",
    "Overflow",
    "PurposeBusError",
    "ReasoningSummary",
    "RunCancelled",
    "RunError",
    "RunFinished",
    "RunStarted",
    "StepFinished",
    "StepStarted",
    "Subscription",
    "SubscriptionStatistics",
    "ToolCall",
    "ToolResult",
    "Visibility",
    "create_hidden_reasoning_guard",
    "decode",
    "encode",
    "event_class",
    "parallel_merge",
    "registered_kinds",
    "reject_hidden_reasoning",
    "thaw",
]

# Former names, served with a DeprecationWarning until they are removed (see
# _deprecated). Type checkers see them declared here, never the __getattr__,
# which would make them accept any name at all.
if TYPE_CHECKING:
    from collections.abc import Iterable

    from typing_extensions import deprecated

    DEFAULT_MAX_SIZE: int
    """Deprecated: use :data:`MAX_DECODE_BYTES`."""
    MAX_DEPTH: int
    """Deprecated: use :data:`MAX_NESTING`."""
    YIELD_INTERVAL: int
    """Deprecated: use :data:`EVENTS_PER_YIELD`."""

    @deprecated(
        "purpose_bus.hidden_reasoning_guard is deprecated and will be removed in "
        "purpose_bus 0.2.0: use purpose_bus.create_hidden_reasoning_guard"
    )
    def hidden_reasoning_guard(keys: Iterable[str] = DEFAULT_HIDDEN_KEYS) -> Guard:
        """Deprecated: use :func:`create_hidden_reasoning_guard`."""
else:
    from ._deprecated import former_names

    __getattr__ = former_names(
        __name__,
        "DEFAULT_MAX_SIZE",
        "MAX_DEPTH",
        "YIELD_INTERVAL",
        "hidden_reasoning_guard",
    )
    del former_names
del TYPE_CHECKING
