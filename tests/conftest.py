"""Fixtures shared by the whole suite, and the hypothesis profile every property test runs under."""

from __future__ import annotations

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
