"""Fixtures for the integration tests: a faulty HTTP server and breaker clients, sync and async."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from meshbreaker.config import BreakerConfig, WindowType
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.integrations.clients import AsyncCaller, Caller, SyncCaller
from tests.integrations.http_server import FaultyServer

# Three failures in a row open a breaker for 10 s; one good probe closes it. Rates never trip.
CONFIG = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=100,
    minimum_calls=100,
    failure_rate_threshold=1.0,
    consecutive_failures=3,
    open_duration=10.0,
    open_duration_max=10.0,
    half_open_max_calls=1,
    half_open_success_threshold=1,
)

MakeCaller = Callable[..., Caller]


@pytest.fixture
def http_server() -> Iterator[FaultyServer]:
    server = FaultyServer().start()
    yield server
    server.stop()


@pytest.fixture
def registry(clock: FakeClock) -> BreakerRegistry:
    return BreakerRegistry(CONFIG, clock=clock)


@pytest.fixture(params=["sync", "async"])
def make_caller(request: pytest.FixtureRequest) -> Iterator[MakeCaller]:
    """Build a client over a breaker transport: `make_caller(registry, limits=None, **options)`."""
    kind = SyncCaller if request.param == "sync" else AsyncCaller
    made: list[Caller] = []

    def make(
        registry: BreakerRegistry, limits: httpx.Limits | None = None, **options: Any
    ) -> Caller:
        caller = kind(registry, limits, **options)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        caller.close()
