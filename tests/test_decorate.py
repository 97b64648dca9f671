"""@circuit for sync and async callables, with fallbacks."""

from __future__ import annotations

import asyncio

import pytest

from meshbreaker import BreakerConfig, CallNotPermittedError, CircuitBreaker, State, circuit
from meshbreaker.testing import FakeClock


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("d", BreakerConfig(consecutive_failures=2), clock=clock)


def test_sync_function_guarded_with_fallback_on_rejection(clock: FakeClock) -> None:
    cb = breaker(clock)
    calls: list[int] = []

    @circuit(cb, fallback=lambda exc: ("fallback", type(exc).__name__))
    def fetch(x: int) -> object:
        calls.append(x)
        if x < 0:
            raise ConnectionError("down")
        return x

    assert fetch(3) == 3 and fetch.__name__ == "fetch"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch(-1)  # failures are not masked unless asked
    assert cb.state is State.OPEN
    assert fetch(5) == ("fallback", "CallNotPermittedError")
    assert calls == [3, -1, -1]


def test_fallback_on_failure(clock: FakeClock) -> None:
    cb = breaker(clock)

    @circuit(cb, fallback=lambda exc: "cached", fallback_on_failure=True)
    def fetch() -> str:
        raise TimeoutError

    assert fetch() == "cached"
    assert cb.snapshot().failed == 1


def test_without_fallback_rejection_raises(clock: FakeClock) -> None:
    cb = breaker(clock)
    cb.force_open()

    @circuit(cb)
    def fetch() -> int:
        return 1

    with pytest.raises(CallNotPermittedError):
        fetch()


async def test_async_function_with_async_fallback(clock: FakeClock) -> None:
    cb = breaker(clock)

    async def cached(exc: BaseException) -> str:
        return "cached"

    @circuit(cb, fallback=cached)
    async def fetch(ok: bool) -> str:
        if not ok:
            raise ConnectionError
        return "live"

    assert await fetch(True) == "live"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await fetch(False)
    assert await fetch(True) == "cached"
    assert cb.snapshot().rejected == 1


def test_an_async_call_rejected_with_no_fallback_raises_the_rejection() -> None:
    """@circuit on a coroutine function with no fallback lets the rejection through."""
    cb = CircuitBreaker("dep", clock=FakeClock())

    @circuit(cb)
    async def fetch() -> str:
        return "ok"

    cb.force_open()
    with pytest.raises(CallNotPermittedError):
        asyncio.run(fetch())
