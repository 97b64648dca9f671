"""What is raised below the breaker, by the channel or an interceptor under it (DESIGN.md §4).

An exception that is not a gRPC status (a lower interceptor's bug, a closed channel) is the
caller's own: it reaches the caller unchanged, exactly where grpc puts it for an intercepted
channel, and the breaker neither counts it nor retries it nor covers it with a fallback.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshbreaker import BreakerRegistry
from meshbreaker.retry import RetryPolicy
from meshbreaker.testing import FakeClock
from tests.contract.drivers import Driver, RaisingBelow, Seen
from tests.grpc.bytes_server import (
    BIDI,
    CLIENT_STREAM,
    PATIENT,
    SERVER_STREAM,
    UNARY,
    BytesServer,
)

KINDS = {
    UNARY: "unary",
    SERVER_STREAM: "server_stream",
    CLIENT_STREAM: "client_stream",
    BIDI: "bidi",
}


async def call(driver: Driver, method: str) -> Seen:
    """One call of `method`'s kind through `driver`."""
    if method == UNARY:
        return await driver.unary(b"hello")
    if method == SERVER_STREAM:
        return await driver.server_stream(b"n:2")
    if method == CLIENT_STREAM:
        return await driver.client_stream([b"a"])
    return await driver.bidi([b"a"])


def counts(registry: BreakerRegistry, method: str) -> tuple[int, int, int, int]:
    snapshot = registry.get(method).snapshot()
    return snapshot.failed, snapshot.successful, snapshot.ignored, snapshot.rejected


@pytest.mark.parametrize("slots", [1, None], ids=["one-slot", "admitted-freely"])
@pytest.mark.parametrize("method", sorted(KINDS), ids=KINDS.get)
async def test_it_reaches_the_caller_unchanged_and_the_breaker_counts_nothing(
    any_driver: Driver, clock: FakeClock, server: BytesServer, method: str, slots: int | None
) -> None:
    # One slot: a permit kept by the first call would refuse the second with RESOURCE_EXHAUSTED.
    # No bulkhead: a call admitted with no Permit (admit_free) is released all the same.
    registry = BreakerRegistry(PATIENT.replace(max_concurrent_calls=slots), clock=clock)
    below = RaisingBelow(LookupError("raised below the breaker"))
    any_driver.connect(registry, below=below)
    for _ in range(2):
        with pytest.raises(LookupError) as raised:
            await call(any_driver, method)
        assert raised.value is below.error
    assert counts(registry, method) == (0, 0, 2, 0)
    assert below.calls == 2 and server.total() == 0


# INTERNAL, the code an intercepted channel gives it, would be retried were it a status.
RETRIED = PATIENT.replace(
    retry=RetryPolicy(
        max_attempts=3,
        initial_backoff=0.001,
        max_backoff=0.001,
        retryable_codes=frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE"}),
    ),
    idempotent=True,
)


async def test_it_is_never_retried(any_driver: Driver, clock: FakeClock) -> None:
    registry = BreakerRegistry(RETRIED, clock=clock)
    below = RaisingBelow(LookupError("raised below the breaker"))
    any_driver.connect(registry, below=below)
    for method in (UNARY, SERVER_STREAM):
        with pytest.raises(LookupError):
            await call(any_driver, method)
    assert below.calls == 2
    assert counts(registry, UNARY) == counts(registry, SERVER_STREAM) == (0, 0, 1, 0)


async def test_raised_by_a_retry_it_ends_the_call_and_the_retry_gives_its_permit_back(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    # One slot: a permit kept by the retry would refuse the next call with RESOURCE_EXHAUSTED.
    registry = BreakerRegistry(RETRIED.replace(max_concurrent_calls=1), clock=clock)
    below = RaisingBelow(LookupError("raised making the retry"), passing=1)
    driver.connect(registry, below=below)
    with pytest.raises(LookupError) as raised:
        await driver.server_stream(b"flaky:1:UNAVAILABLE")  # the first attempt reaches it
    assert raised.value is below.error
    assert counts(registry, SERVER_STREAM) == (1, 0, 1, 0)  # the first failed, the retry freed
    assert below.calls == 2 and server.count(SERVER_STREAM) == 1


def _cached(request: Any, error: BaseException) -> bytes:
    return b"cached"


async def test_no_fallback_covers_it(any_driver: Driver, clock: FakeClock) -> None:
    registry = BreakerRegistry(PATIENT, clock=clock)
    below = RaisingBelow(LookupError("raised below the breaker"))
    any_driver.connect(registry, below=below, fallbacks={UNARY: _cached}, fallback_on_failure=True)
    with pytest.raises(LookupError):
        await any_driver.unary(b"hello")
    assert counts(registry, UNARY) == (0, 0, 1, 0)
