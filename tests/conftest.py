"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from meshbreaker.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock; tests advance it instead of sleeping."""
    return FakeClock()
