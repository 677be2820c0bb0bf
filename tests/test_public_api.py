"""Tests of the public surface: ``purpose_bus.__all__`` and what importing costs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import purpose_bus
from purpose_bus import EventBus, Subscription

#: Names DESIGN.md promises that the package exports (more are added over time;
#: the exact list is checked against the module itself below).
DESIGN_NAMES = {
    "Event",
    "Visibility",
    "RunStarted",
    "RunFinished",
    "RunError",
    "RunCancelled",
    "LaneStarted",
    "LaneFinished",
    "StepStarted",
    "StepFinished",
    "MessageDelta",
    "ToolCall",
    "ToolResult",
    "ReasoningSummary",
    "Log",
    "EventsDropped",
    "event_class",
    "registered_kinds",
    "encode",
    "decode",
    "DEFAULT_MAX_SIZE",
    "PurposeBusError",
    "BusClosed",
    "EventRejected",
    "DecodeError",
}

#: Optional or test-only dependencies that ``import purpose_bus`` must not pull in.
NOT_IMPORTED = ["trio", "coredis", "starlette", "uvloop", "hypothesis", "pytest"]


def _public_attributes() -> set[str]:
    return {
        name
        for name, value in vars(purpose_bus).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }


class TestAll:
    def test_all_is_exactly_the_public_names(self) -> None:
        assert set(purpose_bus.__all__) == _public_attributes()

    def test_all_has_no_duplicates(self) -> None:
        assert len(purpose_bus.__all__) == len(set(purpose_bus.__all__))

    def test_design_names_are_exported(self) -> None:
        assert set(purpose_bus.__all__) >= DESIGN_NAMES

    def test_names_come_from_private_modules(self) -> None:
        for name in purpose_bus.__all__:
            value = getattr(purpose_bus, name)
            if isinstance(value, (type, types.FunctionType)):  # not aliases, constants
                assert value.__module__.startswith("purpose_bus._"), name

    def test_star_import(self) -> None:
        namespace: dict[str, object] = {}
        exec("from purpose_bus import *", namespace)
        assert set(namespace) - {"__builtins__"} == set(purpose_bus.__all__)


class TestImport:
    def test_import_does_not_pull_optional_dependencies(self) -> None:
        code = (
            "import json, sys; import purpose_bus; "
            f"print(json.dumps(sorted(m for m in {NOT_IMPORTED!r} if m in sys.modules)"
            " + sorted(m for m in sys.modules if m.startswith('purpose_bus.')"
            " and m.count('.') == 1 and not m.split('.')[1].startswith('_'))))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        # neither an optional dependency nor a public submodule (redis, web)
        assert json.loads(result.stdout) == []

    def test_import_needs_only_anyio_and_attrs(self) -> None:
        code = (
            "import json, sys; import purpose_bus; "
            "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules}"
            " - set(sys.stdlib_module_names))))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        third_party = {
            name
            for name in json.loads(result.stdout)
            if not name.startswith("_") and name != "purpose_bus"
        }
        assert {"anyio", "attrs"} <= third_party
        # anyio and attrs, and what they import themselves
        allowed = {"anyio", "attr", "attrs", "sniffio", "idna", "typing_extensions"}
        assert third_party <= allowed | {"exceptiongroup"}

    def test_no_pickle_in_the_package(self) -> None:
        package = Path(purpose_bus.__file__).parent
        forbidden = re.compile(r"^\s*(import|from)\s+(c?pickle|marshal|shelve|dill)\b")
        for path in package.rglob("*.py"):
            for line in path.read_text().splitlines():
                assert not forbidden.match(line), f"{path.name}: {line.strip()}"


class TestConstructors:
    def test_a_subscription_comes_from_subscribe_only(self) -> None:
        with pytest.raises(TypeError, match="no public constructor"):
            Subscription()  # type: ignore[call-arg]
        bus = EventBus()
        assert isinstance(bus.subscribe(), Subscription)
