"""The test's backend, handed to a child process: a test on uvloop starts its
children on uvloop too, not on plain asyncio.

A backend goes to a child as one word, ``"asyncio"``, ``"uvloop"`` or
``"trio"`` (as ``conftest.py``'s ids name them); the child runs its main
function with :func:`run`, and may report :func:`running_backend` so a test
can check what it got."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

BACKENDS = ("asyncio", "uvloop", "trio")


def backend_word(anyio_backend: object) -> str:
    """The word for the ``anyio_backend`` fixture's value."""
    if isinstance(anyio_backend, tuple):
        name, options = anyio_backend
        return "uvloop" if name == "asyncio" and options.get("use_uvloop") else name
    assert isinstance(anyio_backend, str)
    return anyio_backend


def run_arguments(word: str) -> dict[str, Any]:
    """The keyword arguments of :func:`anyio.run` for *word*."""
    if word not in BACKENDS:
        raise ValueError(f"unknown backend {word!r}; use one of {BACKENDS}")
    if word == "uvloop":
        return {"backend": "asyncio", "backend_options": {"use_uvloop": True}}
    return {"backend": word}


def run(main: Callable[..., Awaitable[object]], *args: object, word: str) -> None:
    """``anyio.run(main, *args)`` on the backend *word* names."""
    anyio.run(main, *args, **run_arguments(word))


def running_backend() -> str:
    """The word for the backend the calling task runs on."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    uvloop = sys.modules.get("uvloop")
    return (
        "uvloop" if uvloop is not None and isinstance(loop, uvloop.Loop) else "asyncio"
    )


def run_source(anyio_backend: object) -> str:
    """``anyio.run(main, ...)`` as source text, on the test's backend: for a
    README example run as a script."""
    arguments = run_arguments(backend_word(anyio_backend))
    given = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
    return f"anyio.run(main, {given})"
