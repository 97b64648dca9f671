"""Fixtures shared by the whole suite, and the hypothesis profile every property test runs under."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from meshbreaker.breaker import Permit
from meshbreaker.testing import FakeClock
from tests.browser_support import browser  # noqa: F401  (the headless Chromium fixture)

# Hypothesis' deadlines and "too slow" health checks time the machine, not the code: on 2 shared
# cores with a CPU hog beside them they fail tests that are correct. Correctness checks stay on.
settings.register_profile(
    "meshbreaker", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("meshbreaker")


@pytest.fixture(autouse=True)
def _stderr_free_of_earlier_tests(request: pytest.FixtureRequest) -> None:
    """For a test that reads its output: what earlier tests in this worker left is collected first.

    A grpc aio server task an earlier test left unreachable writes a traceback to stderr when the
    garbage collector finalizes it; collected during a command whose one-line error a test reads,
    it became a second line (a clean-clone CI run failed so, in tests/test_cli.py).
    """
    if "capsys" in request.fixturenames:
        capsys = request.getfixturevalue("capsys")
        gc.collect()
        capsys.readouterr()


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock; tests advance it instead of sleeping."""
    return FakeClock()


@pytest.fixture
def permits_made(monkeypatch: pytest.MonkeyPatch) -> list[Permit]:
    """Every Permit made while the test runs, in order (the hot paths' no-Permit tricks)."""
    made: list[Permit] = []
    permit_init = Permit.__init__

    def counted(permit: Permit, *args: Any) -> None:
        made.append(permit)
        permit_init(permit, *args)

    monkeypatch.setattr(Permit, "__init__", counted)
    return made
