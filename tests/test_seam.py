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


def bus_private_names() -> set[str]:
    """The names of ``EventBus``'s private attributes and methods."""
    tree = ast.parse((PACKAGE / "_bus.py").read_text())
    (cls,) = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EventBus"
    ]
    names = {
        n.name
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.name.startswith("_")
        and not n.name.endswith("__")
    }
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node.attr.startswith("_")
        ):
            names.add(node.attr)
    return names


def reaches_into_a_bus(path: Path, private: set[str]) -> list[str]:
    """``expr._name`` in *path* where ``_name`` is private to ``EventBus`` and
    *expr* names a bus (``bus``, ``self._bus``, ``event_bus`` ...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute) or node.attr not in private:
            continue
        owner = node.value
        name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        if name.lower().lstrip("_").endswith("bus"):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_knows_the_bus_private_names() -> None:
    private = bus_private_names()
    assert {"_history", "_index", "_check_open", "_ingest"} <= private


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(PACKAGE.glob("*.py")) if p.name != "_bus.py"]
    + sorted(TESTS.glob("*.py")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_no_module_outside_the_bus_touches_its_private_attributes(
    path: Path,
) -> None:
    assert reaches_into_a_bus(path, bus_private_names()) == []


def test_the_check_finds_a_reach_into_a_bus(tmp_path: Path) -> None:
    source = tmp_path / "reach.py"
    source.write_text("def f(bus, self):\n    bus._history\n    self._bus._index\n")
    assert len(reaches_into_a_bus(source, bus_private_names())) == 2


async def test_bus_seam_is_the_bus_seam() -> None:
    async with EventBus() as bus:
        seam = bus_seam(bus)
        assert isinstance(seam, BusSeam)
        assert bus_seam(bus) is seam
        seam.check_open()
        assert seam.replay_sources() == ()
        assert len(seam.history) == 0
