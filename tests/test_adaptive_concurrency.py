"""Adaptive concurrency: the Vegas rule exactly, one decision per window, the bulkhead following."""

from __future__ import annotations

import pytest

from meshbreaker import BreakerConfig, BulkheadFullError, CircuitBreaker
from meshbreaker._types import ConcurrencyLimit
from meshbreaker.concurrency import PROBE_EVERY, AdaptiveLimit
from meshbreaker.errors import ConfigError
from meshbreaker.testing import FakeClock


class Calls:
    """Calls ending one after another on a fake time line, all started after the last decision."""

    def __init__(self, limiter: AdaptiveLimit) -> None:
        self.limiter = limiter
        self.now = 1000.0

    def window(
        self, latency: float, calls: int, in_flight: int | None = None, failed: int = 0
    ) -> int:
        """`calls` calls of `latency` (the first `failed` failing), all admitted from now on."""
        start = self.now + 0.001  # after the last decision, whatever the rounding
        limit = self.limiter.current
        for index in range(calls):
            self.now = start + latency + index * 1e-6
            limit = self.limiter.update(
                latency, index < failed, calls if in_flight is None else in_flight, self.now
            )
        return limit


def test_the_limit_grows_fast_while_nothing_queues() -> None:
    calls = Calls(AdaptiveLimit(100))
    assert calls.limiter.current == 20
    assert calls.window(0.010, 19, in_flight=20) == 20  # a window: as many calls as were in flight
    assert calls.window(0.010, 1, in_flight=20) == 26  # 20 calls, queue 0: + BETA
    assert calls.window(0.010, 26) == 32
    assert calls.limiter.min_latency == 0.010
    assert calls.limiter.recent_latency == pytest.approx(0.010)


@pytest.mark.parametrize(
    ("recent", "expected"),
    [
        (0.010 / (1 - 2 / 20), 21),  # queue 2: under ALPHA = 3, grow by 1
        (0.010 / (1 - 4 / 20), 20),  # queue 4: between ALPHA and BETA, hold
        (0.010 / (1 - 7 / 20), 19),  # queue 7: over BETA = 6, shrink by 1
        (0.050, 19),  # queue 16: still only 1 a window
    ],
)
def test_the_limit_keeps_the_queue_between_alpha_and_beta(recent: float, expected: int) -> None:
    calls = Calls(AdaptiveLimit(100))
    calls.limiter.min_latency = 0.010
    assert calls.window(recent, 20) == expected
    assert calls.limiter.recent_latency == pytest.approx(recent)


def test_a_queue_of_exactly_beta_holds_the_limit() -> None:
    # Shrink only above BETA · log10(limit). Binary-exact figures: queue = 24 · (1 - 3/4) = 6.
    calls = Calls(AdaptiveLimit(100))
    calls.limiter.limit = 24.0
    calls.limiter.min_latency = 3 / 256
    assert calls.window(1 / 64, 24) == 24


def test_the_steps_scale_with_log10_of_the_limit() -> None:
    calls = Calls(AdaptiveLimit(1000))
    calls.limiter.limit = 150.0
    calls.limiter.min_latency = 0.010
    assert calls.window(0.010 / (1 - 5 / 150), 150) == 152  # queue 5 < 3 * 2: + 2
    assert calls.window(0.010 / (1 - 13 / 152), 152) == 150  # queue 13 > 6 * 2: - 2
    assert calls.window(0.010, 150) == 162  # no queue: + 6 * 2


def test_one_slow_call_does_not_cut_the_limit() -> None:
    calls = Calls(AdaptiveLimit(100))
    calls.window(0.010, 20)
    calls.window(0.010, 25, in_flight=26)
    assert calls.window(0.020, 1, in_flight=26) == 32  # the window's mean is 10.4 ms: queue 0.96
    assert calls.limiter.recent_latency == pytest.approx(0.010 + 0.010 / 26)


def test_a_window_with_failures_cuts_the_limit_once() -> None:
    calls = Calls(AdaptiveLimit(100))
    assert calls.window(0.010, 20, failed=20) == 18  # twenty failures, one window: one cut
    assert calls.limiter.limit == pytest.approx(18.0)
    assert calls.window(0.010, 18, failed=1) == int(18 * 0.9)
    for _ in range(50):
        calls.window(0.010, 10, failed=1)
    assert calls.limiter.current == 1


def test_calls_admitted_before_a_decision_are_not_evidence_for_the_next() -> None:
    calls = Calls(AdaptiveLimit(100))
    calls.window(0.010, 20)
    assert calls.limiter.current == 26
    decided = calls.now
    for _ in range(100):  # slow calls that started before the decision: ignored
        calls.limiter.update(0.5, False, 26, decided + 0.1)
    assert calls.limiter.current == 26
    calls.now = decided + 0.1
    assert calls.window(0.010, 26) == 32  # the first window of calls admitted after it


def test_no_change_while_the_caller_keeps_concurrency_low() -> None:
    calls = Calls(AdaptiveLimit(100))
    calls.limiter.min_latency = 0.010
    for latency in (0.010, 0.050):
        for _ in range(10):
            assert calls.window(latency, 10, in_flight=9) == 20  # 9 < 20 / 2: the caller limits


def test_half_the_limit_in_flight_is_evidence() -> None:
    # Only fewer than limit / 2 in flight says the caller, not the backend, limited concurrency.
    calls = Calls(AdaptiveLimit(100))
    assert calls.window(0.010, 10, in_flight=10) == 26  # 10 = 20 / 2: no queue, + BETA


def test_the_cap_and_the_probe() -> None:
    calls = Calls(AdaptiveLimit(25))
    for _ in range(5):
        calls.window(0.010, 25)
    assert calls.limiter.current == 25
    windows = 5
    while calls.limiter.min_latency == 0.010:
        calls.window(0.050, 25)  # the backend got slower for good: a queue of 0.8 x the limit
        windows += 1
    assert windows * 25 == PROBE_EVERY  # measured afresh from the window that reached it
    assert calls.limiter.min_latency == 0.050
    assert calls.limiter.current == 7 + 6  # down by 1 to 7 (queue 5.6), then no queue: + BETA
    assert calls.window(0.050, 25) == 19


def test_the_probe_count_starts_over_from_zero() -> None:
    calls = Calls(AdaptiveLimit(25))
    calls.window(0.050, PROBE_EVERY)  # one window of PROBE_EVERY calls: a probe
    assert calls.limiter.min_latency == 0.050
    calls.window(0.070, PROBE_EVERY - 10)  # slower, but no probe yet: the minimum stands
    assert calls.limiter.min_latency == 0.050
    calls.window(0.070, 10)  # exactly PROBE_EVERY since the last probe: measured afresh
    assert calls.limiter.min_latency == 0.070


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
    clock.advance(0.01)
    for permit in permits:
        permit.success(0.01)
    assert breaker.snapshot().concurrency_limit == 26  # 20 in flight, no queue: + 6
    clock.advance(0.01)  # calls admitted from here are the next window's
    permits = [breaker.acquire() for _ in range(26)]
    with pytest.raises(BulkheadFullError):
        breaker.acquire()
    clock.advance(0.01)
    for permit in permits[:5]:
        permit.ignore()  # no evidence
    for permit in permits[5:]:
        permit.failure(0.01)
    assert breaker.snapshot().concurrency_limit == int(26 * 0.9)  # one window, one cut


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
    limiter = breaker._limiter
    assert limiter is not None
    assert Calls(limiter).window(0.010, 10, in_flight=5) == 5  # no queue: not past the cap
    breaker.update_config(config.replace(concurrency_limit=ConcurrencyLimit.FIXED))
    assert breaker.snapshot().concurrency_limit is None


def test_bad_concurrency_limit_names_the_field() -> None:
    with pytest.raises(ConfigError) as error:
        BreakerConfig(concurrency_limit="elastic")  # type: ignore[arg-type]
    assert error.value.field == "concurrency_limit"
