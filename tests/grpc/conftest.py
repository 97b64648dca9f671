"""Fixtures for the sync interceptor tests: a real bytes server and fake-clocked registries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bytes_server import BytesServer

from meshbreaker.config import BreakerConfig, WindowType
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock

# Trips after 2 failures in a row, stays open 30 s, probes with at most 2 calls, one success closes.
CONFIG = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=20,
    minimum_calls=100,
    consecutive_failures=2,
    open_duration=30.0,
    open_duration_max=30.0,
    half_open_max_calls=2,
    half_open_success_threshold=1,
    slow_call_duration=5.0,
)


@pytest.fixture
def server(clock: FakeClock) -> Iterator[BytesServer]:
    """A started BytesServer whose b"tick" requests advance the test's fake clock."""
    bytes_server = BytesServer(clock).start()
    yield bytes_server
    bytes_server.stop()


@pytest.fixture
def registry(clock: FakeClock) -> BreakerRegistry:
    """A registry on the fake clock with CONFIG as its default."""
    return BreakerRegistry(CONFIG, clock=clock)
