"""Adaptive concurrency: the gradient formula exactly, and the breaker's bulkhead following it."""

from __future__ import annotations

import math

import pytest

from meshbreaker import BreakerConfig, BulkheadFullError, CircuitBreaker
from meshbreaker._types import ConcurrencyLimit
from meshbreaker.concurrency import PROBE_EVERY, AdaptiveLimit
from meshbreaker.errors import ConfigError
from meshbreaker.testing import FakeClock


def smoothed(limit: float, gradient: float) -> float:
    """One step of the documented rule: 0.8 * limit + 0.2 * (limit * gradient + sqrt(limit))."""
    return 0.8 * limit + 0.2 * (limit * gradient + math.sqrt(limit))


def test_the_limit_grows_while_latency_stays_at_its_minimum() -> None:
    limiter = AdaptiveLimit(100)
    assert limiter.current == 20
    expected = 20.0
    for _ in range(3):
        limiter.update(0.010, False, 20)
        expected = smoothed(expected, 1.0)
    assert limiter.limit == pytest.approx(expected)
    assert limiter.current == int(expected) == 22


def test_the_limit_follows_the_ratio_of_minimum_to_recent_latency() -> None:
    limiter = AdaptiveLimit(100)
    limiter.update(0.010, False, 20)
    expected, recent = smoothed(20.0, 1.0), 0.010
    for _ in range(5):
        limiter.update(0.050, False, 20)
        recent += 0.1 * (0.050 - recent)  # the recent latency: an exponential average
        expected = smoothed(expected, max(0.5, min(1.0, 1.5 * 0.010 / recent)))
    assert limiter.recent_latency == pytest.approx(recent)
    assert limiter.limit == pytest.approx(expected)
    assert 0.75 > 1.5 * 0.010 / recent > 0.5  # the gradient was between its bounds
    before = limiter.limit
    for _ in range(30):
        limiter.update(1.0, False, 20)  # the gradient never goes below 0.5 per sample
    assert limiter.limit >= before * 0.5**30
    assert limiter.min_latency == 0.010


def test_one_slow_call_does_not_cut_the_limit() -> None:
    limiter = AdaptiveLimit(100)
    for _ in range(10):
        limiter.update(0.010, False, 20)
    before = limiter.limit
    limiter.update(0.020, False, 20)  # recent = 0.011: still within 1.5 x the minimum
    assert limiter.limit > before


def test_failures_cut_the_limit_once_per_half_a_limit_of_calls() -> None:
    limiter = AdaptiveLimit(100)
    limiter.update(0.01, True, 20)
    assert limiter.limit == pytest.approx(18.0)
    for _ in range(8):
        limiter.update(0.01, True, 20)  # the same episode: no further cut
    assert limiter.limit == pytest.approx(18.0)
    limiter.update(0.01, True, 20)  # 9 = 18 / 2 calls later
    assert limiter.limit == pytest.approx(18.0 * 0.9)
    for _ in range(500):
        limiter.update(0.01, True, 1)
    assert limiter.current == 1


def test_no_growth_while_the_caller_keeps_concurrency_low() -> None:
    limiter = AdaptiveLimit(100)
    for _ in range(50):
        limiter.update(0.01, False, 3)  # 3 < 20 / 2: the caller limits, not the backend
    assert limiter.limit == 20.0


def test_the_cap_and_the_probe() -> None:
    limiter = AdaptiveLimit(25)
    for _ in range(100):
        limiter.update(0.01, False, 25)
    assert limiter.current == 25
    for _ in range(PROBE_EVERY):
        limiter.update(0.05, False, 25)  # the backend got slower for good
    assert limiter.min_latency == 0.05  # measured again: the limit is not starved
    before = limiter.limit
    limiter.update(0.05, False, 25)
    assert limiter.limit >= before


def test_the_breaker_refuses_past_the_adaptive_limit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "svc",
        BreakerConfig(
            concurrency_limit="adaptive",  # type: ignore[arg-type]
            max_concurrent_calls=50,
            consecutive_failures=0,
            minimum_calls=1000,
        ),
        clock=clock,
    )
    assert breaker.snapshot().concurrency_limit == 20
    permits = [breaker.acquire() for _ in range(20)]
    with pytest.raises(BulkheadFullError):
        breaker.acquire()
    for permit in permits[:10]:
        permit.failure(0.01)  # 20 -> 18, then 9 calls later 16.2
    assert breaker.snapshot().concurrency_limit == 16
    for permit in permits[10:]:
        permit.ignore()
    assert breaker.snapshot().concurrency_limit == 16  # ignored calls are no evidence
    held = [breaker.acquire() for _ in range(16)]
    with pytest.raises(BulkheadFullError):
        breaker.acquire()
    expected = 20 * 0.9**2
    for in_flight, permit in zip(range(16, 0, -1), held, strict=True):
        permit.success(0.01)
        if in_flight >= expected / 2:  # below that, the caller limited concurrency
            expected = smoothed(expected, 1.0)
    assert breaker.snapshot().concurrency_limit == int(expected) == 21


def test_a_fixed_bulkhead_reports_its_limit_and_none_means_none() -> None:
    assert (
        CircuitBreaker("a", BreakerConfig(max_concurrent_calls=4)).snapshot().concurrency_limit == 4
    )
    assert CircuitBreaker("b").snapshot().concurrency_limit is None


def test_a_new_cap_keeps_what_the_limit_learned() -> None:
    config = BreakerConfig(concurrency_limit=ConcurrencyLimit.ADAPTIVE)
    breaker = CircuitBreaker("svc", config)
    breaker.update_config(config.replace(max_concurrent_calls=5))
    assert breaker.snapshot().concurrency_limit == 5
    breaker.update_config(config.replace(concurrency_limit=ConcurrencyLimit.FIXED))
    assert breaker.snapshot().concurrency_limit is None


def test_bad_concurrency_limit_names_the_field() -> None:
    with pytest.raises(ConfigError) as error:
        BreakerConfig(concurrency_limit="elastic")  # type: ignore[arg-type]
    assert error.value.field == "concurrency_limit"
