"""The bus's internal interface (``BusSeam``) is the only way into a bus: no
module outside ``purpose_bus/_bus.py`` touches a private attribute of an
``EventBus`` (checked on the source, with :mod:`ast`), and the seam does what
its documentation says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import purpose_bus
from purpose_bus import EventBus
from purpose_bus._bus import BusSeam, bus_seam

PACKAGE = Path(purpose_bus.__file__).parent
TESTS = Path(__file__).parent
ROOT = PACKAGE.parent
#: Builtins that reach an attribute named by a string.
BY_NAME = {"getattr", "setattr", "hasattr", "delattr", "attrgetter", "methodcaller"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _class_private_names(cls: ast.ClassDef) -> set[str]:
    """The private names *cls* defines: its methods, its class attributes and
    ``__slots__``, and every ``self._name`` its methods touch."""
    names: set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
                names |= {
                    c.value
                    for c in ast.walk(node)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
    for inner in ast.walk(cls):
        if (
            isinstance(inner, ast.Attribute)
            and isinstance(inner.value, ast.Name)
            and inner.value.id == "self"
        ):
            names.add(inner.attr)
    return {name for name in names if _is_private(name)}


def bus_private_names() -> set[str]:
    """The names of ``EventBus``'s private attributes and methods."""
    tree = ast.parse((PACKAGE / "_bus.py").read_text())
    (cls,) = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EventBus"
    ]
    return _class_private_names(cls)


def reaches_into_a_bus(source: str, private: set[str], where: str = "") -> list[str]:
    """Every place in *source* that may touch a private attribute of a bus:
    ``expr._name`` where ``_name`` is one of *private* and *expr* is anything
    but ``self`` or ``cls`` (what a receiver is, ast cannot tell, so any
    receiver counts), and ``getattr`` / ``setattr`` / ``hasattr`` /
    ``delattr`` (and ``operator.attrgetter`` / ``methodcaller``) given such a
    name as a string literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in BY_NAME and any(
                isinstance(arg, ast.Constant) and arg.value in private
                for arg in node.args
            ):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def checked_files() -> list[Path]:
    """Every Python file of the package but ``_bus.py``, of the tests (with
    their helper processes), the benchmarks and the examples."""
    files = [p for p in PACKAGE.glob("*.py") if p.name != "_bus.py"]
    for folder in (TESTS, ROOT / "benchmarks", ROOT / "examples"):
        files += [p for p in folder.rglob("*.py") if "node_modules" not in p.parts]
    return sorted(files)


def test_the_check_knows_the_bus_private_names() -> None:
    private = bus_private_names()
    assert {"_history", "_index", "_check_open", "_ingest", "_seam"} <= private
    assert not {"__init__", "__aenter__", "emit", "subscribe"} & private


def test_the_check_covers_every_tree() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in checked_files()}
    assert "purpose_bus/redis.py" in names
    assert "purpose_bus/_bus.py" not in names
    assert "tests/redis_procs/worker.py" in names
    assert any(n.startswith("benchmarks/") for n in names)
    assert any(n.startswith("examples/") for n in names)


@pytest.mark.parametrize(
    "path", checked_files(), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_no_module_outside_the_bus_touches_its_private_attributes(
    path: Path,
) -> None:
    where = path.relative_to(ROOT).as_posix()
    assert reaches_into_a_bus(path.read_text(), bus_private_names(), where) == []


@pytest.mark.parametrize(
    "source",
    [
        "bus._history",
        "b._history",
        "self._bus._index",
        "registry.owner._subscriptions",
        "make_bus()._check_open()",
        "buses[0]._state = None",
        "del bus._taps",
        "getattr(bus, '_history')",
        "getattr(b, '_history', None)",
        "setattr(bus, '_strict', True)",
        "hasattr(thing, '_ingest')",
        "delattr(bus, '_taps')",
        "builtins.getattr(bus, '_history')",
        "operator.attrgetter('_history')(bus)",
    ],
)
def test_the_check_finds_a_reach_into_a_bus(source: str) -> None:
    assert len(reaches_into_a_bus(source, bus_private_names())) == 1


@pytest.mark.parametrize(
    "source",
    [
        "self._history",  # inside a class of its own
        "cls._history",
        "bus.history",
        "bus._not_a_bus_name",
        "seam.history",
        "getattr(bus, 'history')",
        "getattr(bus, name)",  # not a literal: nothing to check
        "'_history'",
    ],
)
def test_the_check_lets_the_rest_pass(source: str) -> None:
    assert reaches_into_a_bus(source, bus_private_names()) == []


async def test_bus_seam_is_the_bus_seam() -> None:
    async with EventBus() as bus:
        seam = bus_seam(bus)
        assert isinstance(seam, BusSeam)
        assert bus_seam(bus) is seam
        seam.check_open()
        assert seam.replay_sources() == ()
        assert len(seam.history) == 0
