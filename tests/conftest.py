"""Shared fixtures: every async test runs on asyncio, on asyncio with uvloop
(id ``uvloop``) and on trio.

The ``anyio_backend`` fixture is explicit (and module-scoped, so hypothesis'
``@given`` tests may use it); trio and uvloop are test dependencies, so neither
leg can silently vanish: if one is missing, collection fails.
"""

from __future__ import annotations

import os

import pytest
import trio  # noqa: F401  (a hard dependency of the test suite: see the docstring)
import uvloop  # noqa: F401  (likewise)
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """``"asyncio"``, ``("asyncio", {"use_uvloop": True})`` or ``"trio"``."""
    return request.param
