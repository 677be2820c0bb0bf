"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
#: The blocks that run as they are (the Redis example needs a server: it runs
#: in test_redis.py, against the tests' Redis).
RUNNABLE = [
    block
    for block in BLOCKS
    if "..." not in block.replace('"..."', "") and "purpose_bus.redis" not in block
]


def test_readme_has_runnable_examples() -> None:
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize(
    "code", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))]
)
def test_readme_example_runs(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_readme_example_output() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUNNABLE[0]], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split("\n")[:3] == [
        "1 run.started 1",
        "2 message.delta 2",
        "3 run.finished 3",
    ]


def test_supported_versions_agree() -> None:
    # README, the classifiers and requires-python name the same versions.
    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    prefix = "Programming Language :: Python :: "
    classified = [
        c.removeprefix(prefix)
        for c in project["classifiers"]
        if re.fullmatch(re.escape(prefix) + r"3\.\d+", c)
    ]
    text = " ".join(README.read_text().split())
    match = re.search(r"with CPython ((?:3\.\d+, )*3\.\d+ or 3\.\d+) \(", text)
    assert match is not None
    assert re.findall(r"3\.\d+", match.group(1)) == classified
    assert project["requires-python"] == f">={classified[0]}"
