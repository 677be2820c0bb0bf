"""Former names: a renamed public name keeps working under its old name for one
minor version, with a :exc:`DeprecationWarning` on every access.

A module serves its former names from a module-level ``__getattr__`` (PEP 562),
so they are not in its namespace or its ``__all__``: ``from purpose_bus import
*`` and ``dir()`` show only the current names, and only code that still uses an
old name is warned.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from types import FrameType

__all__ = ["REMOVED_IN", "RENAMED", "former_names"]

#: The release in which the former names go away.
REMOVED_IN = "0.2.0"

#: Every former public name and the name that replaced it.
RENAMED = {
    "DEFAULT_MAX_SIZE": "MAX_DECODE_BYTES",
    "MAX_DEPTH": "MAX_NESTING",
    "YIELD_INTERVAL": "EVENTS_PER_YIELD",
    "hidden_reasoning_guard": "create_hidden_reasoning_guard",
}


def former_names(module: str, *names: str) -> Callable[[str], object]:
    """Return a module ``__getattr__`` for *module* that serves each of *names*
    (keys of :data:`RENAMED`) as the object its new name holds in *module*,
    warning on each access with a :exc:`DeprecationWarning` that names the new
    name and :data:`REMOVED_IN`; any other name raises :exc:`AttributeError`
    as a module without a ``__getattr__`` would."""
    renamed = {name: RENAMED[name] for name in names}
    namespace = vars(sys.modules[module])

    def __getattr__(name: str) -> object:
        new = renamed.get(name)
        if new is None:
            raise AttributeError(
                f"module {module!r} has no attribute {name!r}",
                name=name,
                obj=sys.modules[module],
            )
        if not _import_probe(sys._getframe(1)):
            warnings.warn(
                f"{module}.{name} is deprecated and will be removed in purpose_bus "
                f"{REMOVED_IN}: use purpose_bus.{new}",
                DeprecationWarning,
                stacklevel=2,
            )
        return namespace[new]

    return __getattr__


def _import_probe(caller: FrameType) -> bool:
    """Whether *caller* is the import system checking that a name exists before
    ``from package import name`` takes it (``importlib._bootstrap``'s
    ``hasattr`` in ``_handle_fromlist``): the taking warns, so one import
    warns once."""
    return (
        caller.f_code.co_name == "_handle_fromlist"
        and caller.f_globals.get("__name__") == "importlib._bootstrap"
    )
