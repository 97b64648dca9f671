"""Fixtures for the grpc.aio interceptor tests: the bytes server of tests/grpc on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.grpc.bytes_server import CONFIG, BytesServer


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
