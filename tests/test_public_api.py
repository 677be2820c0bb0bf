"""Tests of the public surface: ``purpose_bus.__all__`` and what importing costs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import traceback
import types
import warnings
from collections.abc import Callable
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
    "MAX_DECODE_BYTES",
    "PurposeBusError",
    "BusClosed",
    "EventRejected",
    "DecodeError",
}

#: Former public names: each still works, with a DeprecationWarning, until the
#: release named below, in ``purpose_bus`` and in the private module that
#: defined it (CHANGELOG, Deprecated): old name -> (new name, module).
FORMER_NAMES = {
    "DEFAULT_MAX_SIZE": ("MAX_DECODE_BYTES", "purpose_bus._codec"),
    "MAX_DEPTH": ("MAX_NESTING", "purpose_bus._codec"),
    "YIELD_INTERVAL": ("EVENTS_PER_YIELD", "purpose_bus._subscription"),
    "hidden_reasoning_guard": ("create_hidden_reasoning_guard", "purpose_bus._guards"),
}
REMOVED_IN = "0.2.0"
FORMER = [
    pytest.param(module, old, new, id=f"{module}.{old}")
    for old, (new, private) in FORMER_NAMES.items()
    for module in ("purpose_bus", private)
]
FORMER_MODULES = sorted({"purpose_bus", *(m for _, m in FORMER_NAMES.values())})

#: Optional or test-only dependencies that ``import purpose_bus`` must not pull in.
NOT_IMPORTED = [
    "trio",
    "coredis",
    "starlette",
    "ag_ui",
    "pydantic",
    "uvloop",
    "hypothesis",
    "pytest",
]


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
            if isinstance(value, type) and issubclass(value, BaseException):
                continue  # they name the public module: TestExceptionNames
            if isinstance(value, (type, types.FunctionType)):  # not aliases, constants
                assert value.__module__.startswith("purpose_bus._"), name

    def test_star_import(self) -> None:
        namespace: dict[str, object] = {}
        exec("from purpose_bus import *", namespace)
        assert set(namespace) - {"__builtins__"} == set(purpose_bus.__all__)


class TestFormerNames:
    """A renamed name keeps working under its former name for one minor version:
    the same object, one DeprecationWarning per use naming the new name and the
    release that removes the old one; never exported, never in a star import."""

    @staticmethod
    def _warnings_of(use: Callable[[], object]) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            use()
        return caught

    @staticmethod
    def _assert_one_warning(
        caught: list[warnings.WarningMessage], module: str, old: str, new: str
    ) -> None:
        assert [str(w.message) for w in caught] == [
            f"{module}.{old} is deprecated and will be removed in purpose_bus "
            f"{REMOVED_IN}: use purpose_bus.{new}"
        ]
        assert caught[0].category is DeprecationWarning

    @pytest.mark.parametrize(("module", "old", "new"), FORMER)
    def test_attribute_is_the_new_object_with_one_warning(
        self, module: str, old: str, new: str
    ) -> None:
        namespace = importlib.import_module(module)
        values: list[object] = []
        caught = self._warnings_of(lambda: values.append(getattr(namespace, old)))
        assert len(values) == 1
        assert values[0] is getattr(purpose_bus, new)
        self._assert_one_warning(caught, module, old, new)
        assert caught[0].filename == __file__  # the line that used the name

    @pytest.mark.parametrize(("module", "old", "new"), FORMER)
    def test_from_import_is_the_new_object_with_one_warning(
        self, module: str, old: str, new: str
    ) -> None:
        # For a package, the import system looks the name up twice (hasattr,
        # then the import proper): still one warning.
        namespace: dict[str, object] = {}
        statement = f"from {module} import {old}"
        caught = self._warnings_of(lambda: exec(statement, namespace))
        assert namespace[old] is getattr(purpose_bus, new)
        self._assert_one_warning(caught, module, old, new)

    @pytest.mark.parametrize(("module", "old", "new"), FORMER)
    def test_every_use_warns(self, module: str, old: str, new: str) -> None:
        namespace = importlib.import_module(module)
        caught = self._warnings_of(lambda: [getattr(namespace, old) for _ in "ab"])
        assert len(caught) == 2

    @pytest.mark.parametrize(("module", "old", "new"), FORMER)
    def test_with_warnings_as_errors_a_use_raises(
        self, module: str, old: str, new: str
    ) -> None:
        namespace = importlib.import_module(module)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with pytest.raises(DeprecationWarning, match=f"use purpose_bus.{new}$"):
                getattr(namespace, old)

    @pytest.mark.parametrize("old", FORMER_NAMES)
    def test_not_exported(self, old: str) -> None:
        assert old not in purpose_bus.__all__
        assert old not in vars(purpose_bus)
        assert old not in dir(purpose_bus)

    @pytest.mark.parametrize("module", FORMER_MODULES)
    def test_star_import_does_not_warn(self, module: str) -> None:
        namespace: dict[str, object] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec(f"from {module} import *", namespace)
        assert not set(namespace) & set(FORMER_NAMES)

    @pytest.mark.parametrize("module", FORMER_MODULES)
    def test_an_unknown_name_is_an_attribute_error(self, module: str) -> None:
        namespace = importlib.import_module(module)
        message = f"module '{module}' has no attribute 'no_such_name'"
        with pytest.raises(AttributeError, match=f"^{re.escape(message)}$") as info:
            namespace.no_such_name  # noqa: B018
        assert info.value.name == "no_such_name"
        assert info.value.obj is namespace
        assert not hasattr(namespace, "no_such_name")
        with pytest.raises(ImportError, match="cannot import name 'no_such_name'"):
            exec(f"from {module} import no_such_name", {})


EXCEPTIONS = sorted(
    name
    for name in purpose_bus.__all__
    if isinstance(value := getattr(purpose_bus, name), type)
    and issubclass(value, BaseException)
)


class TestExceptionNames:
    """Tracebacks and reprs name ``purpose_bus``, where users import from."""

    def test_every_exception_is_checked(self) -> None:
        assert EXCEPTIONS == [
            "BusClosed",
            "DecodeError",
            "EventRejected",
            "PurposeBusError",
        ]

    @pytest.mark.parametrize("name", EXCEPTIONS)
    def test_traceback_and_repr_name_the_public_module(self, name: str) -> None:
        cls = getattr(purpose_bus, name)
        assert cls.__module__ == "purpose_bus"
        assert repr(cls) == f"<class 'purpose_bus.{name}'>"
        line = traceback.format_exception_only(cls("what went wrong"))
        assert line == [f"purpose_bus.{name}: what went wrong\n"]

    def test_an_uncaught_exception_names_the_public_module(self) -> None:
        code = "import purpose_bus; raise purpose_bus.BusClosed('the bus is closed')"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last == "purpose_bus.BusClosed: the bus is closed"


def _imported_by_purpose_bus(
    pythonpath: Path | None = None,
) -> tuple[set[str], set[str]]:
    """The top-level non-stdlib modules ``import purpose_bus`` loads in a fresh
    interpreter, and those loaded before the program ran: what site hooks
    (``sitecustomize``, ``usercustomize``, ``.pth`` files such as setuptools'
    ``_distutils_hack``) imported, which are the interpreter's, not ours."""
    code = (
        "import json, sys\n"
        "def top(): return {m.partition('.')[0] for m in sys.modules}"
        " - set(sys.stdlib_module_names)\n"
        "before = top()\n"
        "import purpose_bus\n"
        "print(json.dumps([sorted(top() - before - {'purpose_bus'}), sorted(before)]))"
    )
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [env.get("PYTHONPATH")])]
        )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    imported, before = json.loads(result.stdout)
    return set(imported), set(before)


#: A user's program, type-checked against purpose_bus as installed.
USER_PROGRAM = """\
import anyio

from purpose_bus import EventBus, MessageDelta, RunFinished


async def main() -> None:
    async with EventBus() as bus, bus.subscribe(run_id="r1", kinds=MessageDelta) as sub:
        bus.emit(MessageDelta(run_id="r1", text="hello"))
        bus.emit(RunFinished(run_id="r1"))
        async for event in sub:
            print(event.text.upper())


anyio.run(main)
"""


#: A user's program still on the former names: it type-checks as before.
FORMER_NAMES_PROGRAM = """\
import purpose_bus
from purpose_bus import (
    DEFAULT_MAX_SIZE,
    MAX_DEPTH,
    YIELD_INTERVAL,
    EventBus,
    Guard,
    hidden_reasoning_guard,
)

limits: list[int] = [DEFAULT_MAX_SIZE, MAX_DEPTH, YIELD_INTERVAL]
limits.append(purpose_bus.MAX_DEPTH)
guard: Guard = hidden_reasoning_guard(["diary"])
bus = EventBus(guards=(guard,))
"""


def _mypy(tmp_path: Path, program: str, *options: str) -> str:
    """mypy --strict's report on *program*, run outside the repository."""
    (tmp_path / "app.py").write_text(program)
    command = [sys.executable, "-m", "mypy", "--strict", *options, "app.py"]
    result = subprocess.run(
        [*command, "--cache-dir", os.devnull],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "MYPYPATH"},
    )
    assert not result.stderr, result.stderr
    return result.stdout


class TestTypeCheckers:
    def test_mypy_finds_the_installed_package(self, tmp_path: Path) -> None:
        # Outside the repository, mypy sees only what is installed: with the
        # README's `pip install -e .`, a plain .pth path entry (setuptools'
        # default editable install is an import hook that mypy cannot follow,
        # and reports import-not-found).
        report = _mypy(tmp_path, USER_PROGRAM)
        assert report.startswith("Success: no issues found in 1 source file"), report

    def test_former_names_type_check_and_the_factory_is_marked(
        self, tmp_path: Path
    ) -> None:
        # The constants type-check as ints; the factory is marked deprecated
        # (PEP 702), which mypy reports with its `deprecated` code enabled.
        report = _mypy(
            tmp_path, FORMER_NAMES_PROGRAM, "--enable-error-code", "deprecated"
        )
        errors = [line for line in report.splitlines() if ": error: " in line]
        assert len(errors) == 1, report
        assert "hidden_reasoning_guard is deprecated" in errors[0]
        assert "use purpose_bus.create_hidden_reasoning_guard" in errors[0]
        assert errors[0].endswith("[deprecated]")

    def test_an_unknown_name_is_still_a_type_error(self, tmp_path: Path) -> None:
        # The former names' __getattr__ is hidden from type checkers.
        report = _mypy(tmp_path, "from purpose_bus import MAX_NESTNG\n")
        assert 'Module "purpose_bus" has no attribute "MAX_NESTNG"' in report


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
        imported, hooks = _imported_by_purpose_bus()
        assert {"anyio", "attrs"} <= imported
        # anyio and attrs, and what they import themselves
        allowed = {"anyio", "attr", "attrs", "sniffio", "idna", "typing_extensions"}
        assert imported <= allowed | {"exceptiongroup"}, f"site hooks: {hooks}"

    def test_site_hooks_are_not_counted(self, tmp_path: Path) -> None:
        # A sitecustomize (Debian's Python ships one) that imports a module of
        # its own: loaded before the program runs, so not purpose_bus's import.
        (tmp_path / "sitecustomize.py").write_text("import hook_helper\n")
        (tmp_path / "hook_helper.py").write_text("")
        imported, hooks = _imported_by_purpose_bus(pythonpath=tmp_path)
        assert {"sitecustomize", "hook_helper"} <= hooks
        assert imported == _imported_by_purpose_bus()[0]

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
