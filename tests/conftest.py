"""Shared fixtures: every async test runs on asyncio and on trio.

The ``anyio_backend`` fixture is explicit (and module-scoped, so hypothesis'
``@given`` tests may use it); trio is a test dependency, so the trio leg can never
silently vanish: if trio is missing, collection fails.
"""

from __future__ import annotations

import os

import pytest
import trio  # noqa: F401  (a hard dependency of the test suite: see the docstring)
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
        pytest.param("trio", id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
