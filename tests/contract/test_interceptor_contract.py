"""The interceptor contract, run against the sync and the aio flavour alike (DESIGN.md §4).

Every behaviour both flavours promise is here, once; tests/grpc and tests/aio keep only what
exists in one flavour (futures and with_call, read() and per-kind interceptor objects).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, CallNotPermittedError, State
from meshbreaker._names import GRPC_CODE_NAMES
from meshbreaker.breaker import Outcome
from meshbreaker.errors import ThrottledError
from meshbreaker.events import CallResult
from meshbreaker.testing import FakeClock
from tests.contract.drivers import Driver, Seen
from tests.grpc.broken_registries import BROKEN_REGISTRIES
from tests.grpc.bytes_server import (
    CLIENT_STREAM,
    CONFIG,
    INITIAL,
    OTHER,
    PATIENT,
    SERVER_STREAM,
    TRAILER,
    UNARY,
    BytesServer,
)

# The documented defaults, spelled out: a test that read them from the config could not fail.
FAILURE_CODES = {
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "UNKNOWN",
    "DATA_LOSS",
    "RESOURCE_EXHAUSTED",
}
STATE = "x-meshbreaker-state"
FALLBACK = "x-meshbreaker-fallback"


async def trip(driver: Driver, method: str = UNARY) -> None:
    """Open the breaker of `method` (CONFIG: two failures in a row)."""
    for _ in range(2):
        if method == SERVER_STREAM:
            seen = await driver.server_stream(b"fail-after:0:UNAVAILABLE")
        elif method == CLIENT_STREAM:
            seen = await driver.client_stream([b"fail:UNAVAILABLE"])
        else:
            seen = await driver.unary(b"fail:UNAVAILABLE", method)
        assert seen.code is grpc.StatusCode.UNAVAILABLE


async def test_a_closed_breaker_is_invisible_to_the_caller(
    driver: Driver, registry: BreakerRegistry
) -> None:
    driver.connect(registry)
    ok = await driver.unary(b"hello")
    assert (ok.value, ok.code, ok.error) == (b"hello", grpc.StatusCode.OK, None)
    assert INITIAL in ok.initial and TRAILER in ok.trailing
    failed = await driver.unary(b"fail:NOT_FOUND")
    assert (failed.code, failed.details) == (grpc.StatusCode.NOT_FOUND, "boom NOT_FOUND")
    assert TRAILER in failed.trailing and not isinstance(failed.error, CallNotPermittedError)
    assert (await driver.server_stream(b"n:3")).value == [b"m0", b"m1", b"m2"]
    assert (await driver.client_stream([b"a", b"b"])).value == b"count:2"
    assert (await driver.bidi([b"x", b"y"])).value == [b"x", b"y"]
    broken = await driver.server_stream(b"fail-after:2:INTERNAL")
    assert (broken.code, broken.details) == (grpc.StatusCode.INTERNAL, "boom INTERNAL")


@pytest.mark.parametrize("code", sorted(GRPC_CODE_NAMES - {"OK", "CANCELLED"}))
async def test_every_status_code_is_classified(driver: Driver, code: str, clock: FakeClock) -> None:
    registry = BreakerRegistry(PATIENT, clock=clock)
    driver.connect(registry)
    seen = await driver.unary(b"fail:" + code.encode())
    assert seen.code is grpc.StatusCode[code]
    snapshot = registry.get(UNARY).snapshot()
    expected = (1, 0) if code in FAILURE_CODES else (0, 1)
    assert (snapshot.failed, snapshot.successful) == expected


async def test_codes_from_the_interceptor_override_the_config(
    driver: Driver, registry: BreakerRegistry
) -> None:
    driver.connect(registry, failure_codes=["NOT_FOUND"], ignored_codes=[grpc.StatusCode.INTERNAL])
    await driver.unary(b"fail:NOT_FOUND")
    await driver.unary(b"fail:INTERNAL")
    await driver.unary(b"fail:UNAVAILABLE")
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.failed, snapshot.ignored, snapshot.successful) == (1, 1, 1)


def _ignoring_ok(where: str, clock: FakeClock) -> tuple[BreakerRegistry, dict[str, Any]]:
    """A registry, and the interceptor's code options, that ignore OK `where` it is said."""
    config = PATIENT.replace(ignored_codes=frozenset({"OK"})) if where == "config" else PATIENT
    codes: dict[str, Any] = {"ignored_codes": ["OK"]} if where == "interceptor" else {}
    return BreakerRegistry(config, clock=clock), codes


@pytest.mark.parametrize("where", ["interceptor", "config"])
async def test_an_ignored_ok_counts_neither_way(
    any_driver: Driver, clock: FakeClock, where: str
) -> None:
    # OK is classified apart from the other codes on the hot path: it must still read both sets.
    registry, codes = _ignoring_ok(where, clock)
    any_driver.connect(registry, **codes)
    assert (await any_driver.unary(b"a")).value == b"a"
    assert (await any_driver.client_stream([b"b"])).value == b"count:1"
    await any_driver.unary(b"fail:UNAVAILABLE")
    for method, failed in ((UNARY, 1), (CLIENT_STREAM, 0)):
        snapshot = registry.get(method).snapshot()
        assert (snapshot.failed, snapshot.ignored, snapshot.successful) == (failed, 1, 0)


@pytest.mark.parametrize("where", ["interceptor", "config"])
async def test_an_ignored_ok_tells_result_listeners_how_long_it_ran(
    any_driver: Driver, clock: FakeClock, server: BytesServer, where: str
) -> None:
    registry, codes = _ignoring_ok(where, clock)
    results: list[CallResult] = []
    registry.get(UNARY).on_call_result(results.append)
    any_driver.connect(registry, **codes)
    assert (await any_driver.unary(b"tick")).value == b"tick"  # the server advances the clock
    assert [(result.outcome, result.duration) for result in results] == [
        (Outcome.IGNORED, server.tick)
    ]


@pytest.mark.parametrize("side", ["failure_codes", "ignored_codes"])
async def test_one_code_set_from_the_interceptor_takes_its_codes_from_the_other(
    driver: Driver, registry: BreakerRegistry, side: str
) -> None:
    # One set given: it replaces the config's set of its kind, and its codes leave the other.
    code = "UNAVAILABLE" if side == "ignored_codes" else "CANCELLED"
    codes: dict[str, Any] = {side: [code]}
    driver.connect(registry, **codes)
    await driver.unary(f"fail:{code}".encode())
    await driver.unary(b"fail:INTERNAL")  # a failure by the config's failure codes only
    snapshot = registry.get(UNARY).snapshot()
    expected = (1, 1, 0) if side == "ignored_codes" else (1, 0, 1)
    assert (snapshot.failed, snapshot.ignored, snapshot.successful) == expected


async def test_an_open_breaker_rejects_every_kind_without_the_server(
    driver: Driver, registry: BreakerRegistry, server: BytesServer
) -> None:
    driver.connect(registry)
    await trip(driver)
    await trip(driver, SERVER_STREAM)
    await trip(driver, CLIENT_STREAM)
    before = server.total()
    for seen in (
        await driver.unary(b"hello"),
        await driver.server_stream(b"n:3"),
        await driver.client_stream([b"a"]),
    ):
        assert isinstance(seen.error, CallNotPermittedError)
        assert isinstance(seen.error, grpc.RpcError)
        assert seen.error.state is State.OPEN
        assert seen.code is grpc.StatusCode.UNAVAILABLE
        assert seen.details is not None and "is OPEN; next probe in" in seen.details
        assert (STATE, "OPEN") in seen.trailing and seen.initial == ()
    assert server.total() == before
    assert registry.get(UNARY).snapshot().rejected == 1


async def test_a_forced_open_breaker_names_the_override(
    driver: Driver, registry: BreakerRegistry
) -> None:
    driver.connect(registry)
    registry.set_override(UNARY, State.FORCED_OPEN)
    seen = await driver.unary(b"hello")
    assert seen.details is not None and "FORCED_OPEN override is cleared" in seen.details
    assert (STATE, "FORCED_OPEN") in seen.trailing


async def test_an_expired_deadline_is_a_failure_and_deadlines_pass_unchanged(
    driver: Driver, registry: BreakerRegistry, server: BytesServer
) -> None:
    driver.connect(registry)
    expired = await driver.unary(b"deadline", timeout=0.1)
    assert expired.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert registry.get(UNARY).snapshot().failed == 1
    # Whether the expired call reached the server depends on the machine's load; these do.
    assert (await driver.unary(b"x", timeout=30.0)).value == b"x"
    assert (await driver.unary(b"y")).value == b"y"
    with_deadline, without = server.time_remaining[-2:]
    # Passed on as it was (gRPC may round it up a little), not dropped and not replaced.
    assert with_deadline is not None and 0.0 < with_deadline < 60.0
    assert without is not None and without > 1e9  # none added


async def test_a_failing_method_opens_only_its_own_breaker(
    driver: Driver, registry: BreakerRegistry
) -> None:
    driver.connect(registry)
    await trip(driver, OTHER)
    assert (await driver.unary(b"fine")).value == b"fine"
    assert registry.get(UNARY).state is State.CLOSED
    assert registry.get(OTHER).state is State.OPEN


async def test_a_target_prefixes_breaker_names_and_service_policies_still_match(
    driver: Driver, registry: BreakerRegistry
) -> None:
    registry.set_policy("test.Svc", CONFIG.replace(consecutive_failures=1))
    driver.connect(registry, target="accounts")
    await driver.unary(b"fail:UNAVAILABLE")
    assert "accounts" + UNARY in registry and UNARY not in registry
    assert registry.get("accounts" + UNARY).state is State.OPEN


async def test_a_stream_failing_mid_stream_counts_one_failure(
    driver: Driver, registry: BreakerRegistry
) -> None:
    driver.connect(registry)
    seen = await driver.server_stream(b"fail-after:2:UNAVAILABLE")
    assert seen.code is grpc.StatusCode.UNAVAILABLE
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.failed, snapshot.successful, snapshot.total) == (1, 0, 1)


def _cached(request: Any, error: BaseException) -> bytes:
    return b"cached"


async def test_a_fallback_answers_a_rejected_call(
    driver: Driver, registry: BreakerRegistry, server: BytesServer
) -> None:
    errors: list[BaseException] = []

    def fallback(request: Any, error: BaseException) -> bytes:
        errors.append(error)
        return b"cached " + bytes(request)

    driver.connect(registry, fallbacks={UNARY: fallback})
    await trip(driver)
    before = server.total()
    seen = await driver.unary(b"q")
    assert seen == Seen(
        b"cached q",
        grpc.StatusCode.OK,
        "meshbreaker: fallback used (rejected)",
        (),
        ((STATE, "OPEN"), (FALLBACK, "rejected")),
    )
    assert server.total() == before
    assert isinstance(errors[0], CallNotPermittedError) and isinstance(errors[0], grpc.RpcError)


async def test_a_fallback_on_failure_keeps_what_the_server_sent(
    driver: Driver, clock: FakeClock
) -> None:
    driver.connect(
        BreakerRegistry(PATIENT, clock=clock),
        fallbacks={UNARY: _cached},
        fallback_on_failure=True,
    )
    seen = await driver.unary(b"fail:INTERNAL")
    assert seen == Seen(
        b"cached",
        grpc.StatusCode.OK,
        "meshbreaker: fallback used (failure)",
        (INITIAL,),
        (TRAILER, (STATE, "CLOSED"), (FALLBACK, "failure")),
    )
    not_a_failure = await driver.unary(b"fail:NOT_FOUND")
    assert not_a_failure.code is grpc.StatusCode.NOT_FOUND  # the server answered: no fallback


async def test_a_fallback_that_raises_is_what_the_caller_gets(
    driver: Driver, registry: BreakerRegistry
) -> None:
    def broken(request: Any, error: BaseException) -> bytes:
        raise LookupError("no cached answer")

    driver.connect(registry, fallbacks={UNARY: broken})
    await trip(driver)
    with pytest.raises(LookupError, match="no cached answer"):
        await driver.unary(b"q")


async def test_a_full_bulkhead_rejects_with_resource_exhausted(
    driver: Driver, clock: FakeClock
) -> None:
    registry = BreakerRegistry(CONFIG.replace(max_concurrent_calls=1), clock=clock)
    driver.connect(registry)
    registry.get(UNARY).acquire()  # the one slot, held
    seen = await driver.unary(b"hello")
    assert seen.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert seen.details is not None and "bulkhead" in seen.details


async def test_slow_calls_are_measured_by_the_breaker_clock(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    registry = BreakerRegistry(CONFIG.replace(slow_call_duration=5.0), clock=clock)
    driver.connect(registry)
    await driver.unary(b"tick")  # the server advances the fake clock by 10 s
    await driver.server_stream(b"tick-first")
    assert registry.get(UNARY).snapshot().slow == 1
    assert registry.get(SERVER_STREAM).snapshot().slow == 1


@pytest.mark.parametrize("broken", BROKEN_REGISTRIES, ids=lambda kind: kind.__name__)
async def test_meshbreakers_own_failures_never_change_the_rpc(
    any_driver: Driver, broken: type[BreakerRegistry]
) -> None:
    any_driver.connect(broken(BreakerConfig()))
    ok = await any_driver.unary(b"hello")
    assert (ok.value, ok.code) == (b"hello", grpc.StatusCode.OK)
    failed = await any_driver.unary(b"fail:INTERNAL")
    assert (failed.code, failed.details) == (grpc.StatusCode.INTERNAL, "boom INTERNAL")
    assert (await any_driver.server_stream(b"n:2")).value == [b"m0", b"m1"]


def _throttling(clock: FakeClock) -> BreakerRegistry:
    """Throttling on (k = 1), a breaker that never trips, and draws that refuse whenever p > 0."""
    config = CONFIG.replace(
        consecutive_failures=0, failure_rate_threshold=1.0, minimum_calls=1000, throttle_k=1.0
    )
    return BreakerRegistry(config, clock=clock, rng=lambda: 0.0)


@pytest.mark.parametrize("method", [UNARY, SERVER_STREAM])
async def test_a_throttled_call_is_a_local_unavailable_marked_throttled(
    driver: Driver, clock: FakeClock, server: BytesServer, method: str
) -> None:
    registry = _throttling(clock)
    driver.connect(registry)
    if method == SERVER_STREAM:
        failed = await driver.server_stream(b"fail-after:0:UNAVAILABLE")
    else:
        failed = await driver.unary(b"fail:UNAVAILABLE")
    assert (
        failed.code is grpc.StatusCode.UNAVAILABLE and (STATE, "THROTTLED") not in failed.trailing
    )
    before = server.total()
    seen = (
        await driver.server_stream(b"n:1") if method == SERVER_STREAM else await driver.unary(b"q")
    )
    assert (seen.code, seen.trailing) == (grpc.StatusCode.UNAVAILABLE, ((STATE, "THROTTLED"),))
    assert seen.details is not None and "adaptive throttling" in seen.details
    assert isinstance(seen.error, ThrottledError) and isinstance(seen.error, grpc.RpcError)
    assert server.total() == before
    snapshot = registry.get(method).snapshot()
    assert (snapshot.throttled, snapshot.rejected, snapshot.failed) == (1, 0, 1)


async def test_a_fallback_answers_a_throttled_call(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(_throttling(clock), fallbacks={UNARY: _cached})
    await driver.unary(b"fail:UNAVAILABLE")
    seen = await driver.unary(b"q")
    assert (seen.value, seen.code, seen.trailing) == (
        b"cached",
        grpc.StatusCode.OK,
        ((STATE, "CLOSED"), (FALLBACK, "throttled")),
    )
