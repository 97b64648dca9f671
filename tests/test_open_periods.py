"""Open periods: backoff with jitter under a hard cap, live config changes, half_open_max_wait."""

from __future__ import annotations

from typing import Any

import pytest

from meshbreaker import BreakerConfig, CallNotPermittedError, CircuitBreaker, State, WindowType
from meshbreaker._backoff import OpenBackoff
from meshbreaker.testing import FakeClock


def make(clock: FakeClock, rng: Any = None, **changes: Any) -> CircuitBreaker:
    config = BreakerConfig(consecutive_failures=1, **changes)
    if rng is None:
        return CircuitBreaker("dep", config, clock=clock)
    return CircuitBreaker("dep", config, clock=clock, rng=rng)


def open_period(cb: CircuitBreaker) -> float:
    snapshot = cb.snapshot()
    assert snapshot.state is State.OPEN and snapshot.open_until is not None
    return snapshot.open_until - snapshot.state_since


def test_open_duration_max_is_a_hard_cap_under_jitter(clock: FakeClock) -> None:
    # The highest spread every time: jitter applied after the cap would exceed it by 50 %.
    cb = make(
        clock,
        rng=lambda: 0.999,
        open_duration=10.0,
        open_duration_max=30.0,
        backoff_multiplier=2.0,
        open_jitter=0.5,
    )
    cb.acquire().failure()
    periods = []
    for _ in range(6):
        periods.append(open_period(cb))
        clock.advance(periods[-1])
        cb.acquire().failure()  # the probe fails: open again, longer
    assert periods[0] == pytest.approx(14.99)
    assert max(periods) == 30.0
    assert all(period <= 30.0 for period in periods)


def test_jitter_still_spreads_below_the_cap(clock: FakeClock) -> None:
    backoff = OpenBackoff(base=10.0, multiplier=2.0, cap=30.0, jitter=0.5)
    assert backoff.duration(5, 0.0) == pytest.approx(15.0)  # capped growth, spread downward
    assert backoff.duration(5, 0.999) == 30.0
    assert backoff.duration(10_000, 0.5) == 30.0  # no overflow however long it keeps failing


def test_a_shorter_open_duration_reaches_a_breaker_already_open(clock: FakeClock) -> None:
    cb = make(clock, open_duration=60.0, open_duration_max=60.0)
    cb.acquire().failure()
    clock.advance(1.0)
    cb.update_config(cb.config.replace(open_duration=2.0, open_duration_max=2.0))
    assert open_period(cb) == 2.0
    clock.advance(1.0)  # two seconds after it opened
    assert cb.state is State.HALF_OPEN


def test_a_longer_open_duration_reaches_a_breaker_already_open(clock: FakeClock) -> None:
    cb = make(clock, open_duration=5.0, open_duration_max=5.0)
    cb.acquire().failure()
    cb.update_config(cb.config.replace(open_duration=20.0, open_duration_max=20.0))
    clock.advance(10.0)
    with pytest.raises(CallNotPermittedError) as info:
        cb.acquire()
    assert info.value.retry_after == pytest.approx(10.0)


def test_a_new_config_keeps_the_backoff_step_of_an_open_breaker(clock: FakeClock) -> None:
    cb = make(clock, open_duration=10.0, open_duration_max=100.0)
    cb.acquire().failure()
    clock.advance(10.0)
    cb.acquire().failure()  # second opening in a row: 20 s
    assert open_period(cb) == 20.0
    cb.update_config(cb.config.replace(open_duration=1.0))
    assert open_period(cb) == 2.0


def test_an_unreported_probe_cannot_hold_half_open_forever(clock: FakeClock) -> None:
    cb = make(
        clock,
        open_duration=10.0,
        open_duration_max=40.0,
        half_open_max_calls=1,
        half_open_max_wait=5.0,
    )
    cb.acquire().failure()
    clock.advance(10.0)
    lost = cb.acquire()  # the probe's task is lost: it never reports
    assert cb.try_acquire() is None
    clock.advance(5.0)
    assert cb.state is State.OPEN  # back to OPEN, with backoff
    assert open_period(cb) == 20.0
    clock.advance(20.0)
    probe = cb.acquire()  # the stale permit no longer holds the only probe slot
    lost.success()  # a late report of the stale permit moves nothing
    assert cb.state is State.HALF_OPEN
    probe.success()
    cb.acquire().success()
    cb.acquire().success()
    assert cb.state is State.CLOSED


def test_half_open_max_wait_is_checked_on_admission(clock: FakeClock) -> None:
    cb = make(clock, open_duration=10.0, half_open_max_calls=1, half_open_max_wait=5.0)
    cb.acquire().failure()
    clock.advance(10.0)
    cb.acquire()
    clock.advance(5.0)
    with pytest.raises(CallNotPermittedError) as info:
        cb.acquire()
    assert info.value.state is State.OPEN
    # Opened by this very admission (under the lock): it still says when to come back.
    assert info.value.retry_after == open_period(cb) > 0


def test_half_open_max_wait_zero_waits_forever(clock: FakeClock) -> None:
    cb = make(clock, open_duration=10.0, half_open_max_calls=1, half_open_max_wait=0.0)
    cb.acquire().failure()
    clock.advance(10.0)
    cb.acquire()
    clock.advance(10_000.0)
    assert cb.state is State.HALF_OPEN


def test_half_open_max_wait_is_validated() -> None:
    assert BreakerConfig().half_open_max_wait == 60.0
    with pytest.raises(ValueError, match="half_open_max_wait: must be >= 0"):
        BreakerConfig(half_open_max_wait=-1.0)


def test_minimum_calls_is_capped_by_a_count_window(clock: FakeClock) -> None:
    config = BreakerConfig(
        window_type=WindowType.COUNT, window_size=5, consecutive_failures=0, minimum_calls=10
    )
    assert config.effective_minimum_calls == 5
    cb = CircuitBreaker("dep", config, clock=clock)
    for _ in range(4):
        cb.acquire().failure()
    assert cb.state is State.CLOSED
    assert cb.snapshot().minimum_calls == 5
    cb.acquire().failure()
    assert cb.state is State.OPEN


def test_minimum_calls_is_not_capped_by_a_time_window() -> None:
    config = BreakerConfig(window_type=WindowType.TIME, window_size=5, minimum_calls=10)
    assert config.effective_minimum_calls == 10
