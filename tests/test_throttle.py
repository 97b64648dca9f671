"""Adaptive throttling: the SRE formula exactly, its window, and how the breaker applies it."""

from __future__ import annotations

import pytest

from meshbreaker import (
    BreakerConfig,
    CallNotPermittedError,
    CircuitBreaker,
    Mode,
    State,
    WindowType,
)
from meshbreaker.errors import ConfigError, ThrottledError
from meshbreaker.testing import FakeClock
from meshbreaker.throttle import AdaptiveThrottle


class Draws:
    """A random source that answers `value` until told otherwise, and counts its draws.

    1.0 (never below a probability) admits every call; 0.0 refuses whenever it may.
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.count = 0

    def __call__(self) -> float:
        self.count += 1
        return self.value


def make(
    clock: FakeClock, draws: Draws, *, k: float = 2.0, window: float = 120.0, **fields: object
) -> CircuitBreaker:
    # Failures never trip these breakers: what is observed is the throttle alone.
    config = BreakerConfig(
        throttle_k=k,
        throttle_window=window,
        consecutive_failures=0,
        failure_rate_threshold=1.0,
        minimum_calls=1_000_000,
        slow_call_duration=None,
        **fields,  # type: ignore[arg-type]
    )
    return CircuitBreaker("svc", config, clock=clock, rng=draws)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.acquire().failure(0.01)


def succeed(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.acquire().success(0.01)


def test_formula_on_its_own() -> None:
    throttle = AdaptiveThrottle(2.0, 120.0, 1000.0, Draws())
    assert throttle.probability(1000.0) == 0.0
    for _ in range(4):
        throttle.record(True, 1000.0)
    for _ in range(10):
        throttle.record(False, 1000.0)
    # requests 14, accepts 4: (14 - 2*4) / (14 + 1)
    assert throttle.probability(1000.0) == pytest.approx(6 / 15)
    assert not throttle.quiet(1000.0)
    throttle.k = 3.5  # (14 - 14) / 15
    assert throttle.probability(1000.0) == 0.0
    assert throttle.quiet(1000.0)


def test_an_outcome_timed_before_the_head_second_counts_in_it() -> None:
    """A report whose time was read before another's moved the head on never moves it back."""
    throttle = AdaptiveThrottle(1.0, 2.0, 1000.0, Draws())
    throttle.record(False, 1001.5)
    throttle.record(False, 1000.9)  # read before the first, recorded after it (another thread)
    assert throttle.probability(1002.1) == pytest.approx(2 / 3)  # both still in the window


def test_the_throttle_keeps_no_bucket_of_a_second_that_left_its_window() -> None:
    """Memory stays bounded by the window: a gap longer than it drops every old bucket."""
    throttle = AdaptiveThrottle(2.0, 2.0, 1000.0, Draws())
    for second in (1000.0, 1001.0, 1010.0):
        throttle.record(True, second)
    assert list(throttle._buckets) == [1010]
    assert (throttle.requests, throttle.accepts) == (1, 1)


def test_a_refusal_counts_as_a_request_of_its_second_and_leaves_with_it() -> None:
    """admit() counts what it refuses as a request (by default) in the head second's bucket."""
    throttle = AdaptiveThrottle(2.0, 2.0, 1000.0, Draws(0.0))
    for _ in range(3):
        throttle.record(False, 1000.0)
    assert not throttle.admit(1000.5)  # refused with probability 3 / 4
    assert throttle.probability(1000.5) == pytest.approx(4 / 5)
    throttle.record(True, 1001.0)
    throttle.expire(1002.0)  # second 1000 leaves the window with all it counted
    assert (throttle.requests, throttle.accepts) == (1, 1)


def test_a_snapshot_in_a_new_quiet_second_gives_the_lock_free_admission_back() -> None:
    """The refresh a snapshot makes moves the throttle's head on before it asks if it is quiet."""
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws)
    succeed(breaker, 10)
    clock.advance(1.5)  # a new second: quiet until proven so, under the lock
    assert breaker.admit_free(clock()) is None
    breaker.snapshot()
    assert breaker.admit_free(clock()) is not None


def test_exact_probability_and_refusals_count_as_requests() -> None:
    clock, draws = FakeClock(), Draws(0.5)
    breaker = make(clock, draws)
    succeed(breaker, 4)
    fail(breaker, 10)
    assert breaker.snapshot().throttle_probability == pytest.approx(6 / 15)
    assert breaker.acquire() is not None  # 0.5 >= 0.4: admitted
    draws.value = 0.39  # < 0.4: refused, and counted as a request
    with pytest.raises(ThrottledError) as refused:
        breaker.acquire()
    assert isinstance(refused.value, CallNotPermittedError)
    assert refused.value.state is State.CLOSED
    snapshot = breaker.snapshot()
    assert snapshot.throttled == 1
    assert snapshot.rejected == 0  # counted apart from the breaker's rejections
    assert snapshot.throttle_probability == pytest.approx((15 - 8) / 16)


def test_k_sets_how_many_failures_are_tolerated() -> None:
    clock, draws = FakeClock(), Draws()  # any positive probability refuses
    breaker = make(clock, draws, k=1.5)
    succeed(breaker, 10)
    fail(breaker, 5)  # requests 15 <= 1.5 * 10 accepts: quiet
    assert breaker.snapshot().throttle_probability == 0.0
    draws.value = 0.0
    breaker.acquire().ignore()
    fail(breaker, 1)  # 16 > 15
    assert breaker.snapshot().throttle_probability == pytest.approx(1 / 17)
    with pytest.raises(ThrottledError):
        breaker.acquire()


def test_cold_start_burst_is_never_throttled() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    permits = [breaker.acquire() for _ in range(50)]  # in flight: not evidence yet
    assert breaker.snapshot().throttle_probability == 0.0
    for permit in permits:
        permit.success(0.01)
    assert breaker.snapshot().throttled == 0


def test_ignored_outcomes_count_as_nothing() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    fail(breaker, 2)
    for _ in range(20):
        breaker.acquire().ignore()
    assert breaker.snapshot().throttle_probability == pytest.approx(2 / 3)


def test_trailing_window_forgets_whole_seconds() -> None:
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws, window=3.0)
    fail(breaker, 4)  # second 1000
    clock.advance(1.0)
    fail(breaker, 2)  # second 1001
    assert breaker.snapshot().throttle_probability == pytest.approx(6 / 7)
    clock.advance(2.0)  # second 1003: 1000 has left the 3-second window
    assert breaker.snapshot().throttle_probability == pytest.approx(2 / 3)
    clock.advance(1.0)  # second 1004: all gone
    assert breaker.snapshot().throttle_probability == 0.0
    breaker.acquire().success()


def test_expiring_accepts_end_the_lock_free_admission() -> None:
    # The invariant of _free_until: quiet holds only until the head second ends.
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws, window=2.0)
    succeed(breaker, 10)  # second 1000
    clock.advance(1.0)
    fail(breaker, 10)  # second 1001: 20 requests <= 2 * 10 accepts
    draws.value = 0.0
    breaker.acquire().ignore()  # admitted: quiet
    assert breaker.admit_free(clock()) is not None  # so admitted with no Permit too
    clock.advance(1.0)  # second 1002: the accepts expire, nothing else happens
    assert breaker.admit_free(clock()) is None  # a call that may be refused needs acquire()
    with pytest.raises(ThrottledError):
        breaker.call(lambda: None)  # at exactly the second's end: no longer lock-free
    with pytest.raises(ThrottledError):
        breaker.acquire()


def test_an_admission_under_the_lock_gives_the_lock_free_one_back_while_quiet() -> None:
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws)
    succeed(breaker, 10)
    clock.advance(1.5)  # a new second: quiet until proven so, under the lock
    assert breaker.admit_free(clock()) is None
    held = breaker.acquire()  # admitted under the lock: still quiet, so lock-free again at once
    assert breaker.admit_free(clock()) is not None
    held.success(0.01)


def test_quick_successes_count_in_the_second_they_ended() -> None:
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws, window=2.0)
    for _ in range(10):
        breaker.call(lambda: None)  # lock-free successes in second 1000, settled later
    clock.advance(1.5)
    fail(breaker, 10)  # settles them: into second 1000, not 1001
    assert breaker.snapshot().throttle_probability == 0.0
    clock.advance(0.6)  # second 1002: if they had counted in 1001, they would still be here
    assert breaker.snapshot().throttle_probability == pytest.approx(10 / 11)


def test_a_late_outcome_counts_the_quick_successes_before_it_in_their_second() -> None:
    # _count settles before the throttle records: the outcome may move its head second on.
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws, window=2.0)
    late = breaker.acquire()  # admitted lock-free in second 1000, reported late
    for _ in range(10):
        breaker.call(lambda: None)  # lock-free successes in second 1000, not settled yet
    clock.advance(1.5)
    late.failure(0.01)  # the first step under the lock since: theirs is second 1000, its 1001
    clock.advance(0.6)  # second 1002: second 1000 has left the window, 1001 stays
    assert breaker.snapshot().throttle_probability == pytest.approx(1 / 2)


@pytest.mark.parametrize("subscribe", ["on_state_change", "on_call_result", "on_event"])
def test_a_listener_subscribing_counts_the_quick_successes_before_it_in_their_second(
    subscribe: str,
) -> None:
    """Subscribing moves the throttle's head second on: the successes logged before count first."""
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws, window=2.0)
    for _ in range(10):
        breaker.call(lambda: None)  # lock-free successes in second 1000, not settled yet
    clock.advance(1.5)
    getattr(breaker, subscribe)(lambda *args: None)  # the first step under the lock since
    fail(breaker, 1)  # second 1001
    clock.advance(0.6)  # second 1002: second 1000 has left the window, 1001 stays
    assert breaker.snapshot().throttle_probability == pytest.approx(1 / 2)


@pytest.mark.parametrize("subscribe", ["on_state_change", "on_event"])
def test_a_listener_leaving_counts_the_quick_successes_before_it_in_their_second(
    subscribe: str,
) -> None:
    """Unsubscribing moves the throttle's head second on too: the logged successes count first."""
    clock, draws = FakeClock(1000.0), Draws()
    breaker = make(clock, draws, window=2.0)
    unsubscribe = getattr(breaker, subscribe)(lambda *args: None)  # leaves the quick log open
    for _ in range(10):
        breaker.call(lambda: None)  # lock-free successes in second 1000, not settled yet
    clock.advance(1.5)
    unsubscribe()  # the first step under the lock since
    fail(breaker, 1)  # second 1001
    clock.advance(0.6)  # second 1002: second 1000 has left the window, 1001 stays
    assert breaker.snapshot().throttle_probability == pytest.approx(1 / 2)


def test_quick_successes_never_straddle_a_second() -> None:
    # A COUNT window lets lock-free successes log across a second boundary; the throttle must not.
    clock, draws = FakeClock(1000.995), Draws()
    breaker = make(clock, draws, window=2.0, window_type=WindowType.COUNT, window_size=100)
    permits = [breaker.acquire() for _ in range(10)]  # admitted lock-free in second 1000
    clock.advance(0.006)  # 1001.001: the log opened at 1000.995 must have closed at 1001.0
    for permit in permits:
        permit.success()  # so these end under the lock, in second 1001
    clock.advance(0.5)
    fail(breaker, 10)
    clock.advance(0.6)  # second 1002: second 1000 leaves the window, 1001 stays
    assert breaker.snapshot().throttle_probability == 0.0


def test_throttled_calls_do_not_run() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    fail(breaker, 3)
    draws.value = 0.0
    ran: list[int] = []
    with pytest.raises(ThrottledError):
        breaker.call(ran.append, 1)
    assert ran == []


def test_probes_and_forced_closed_are_never_throttled() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    fail(breaker, 20)
    draws.value = 0.0
    breaker.transition_to_half_open()
    breaker.acquire().ignore()  # a probe: the breaker limits probes itself
    breaker.force_closed()
    succeed(breaker, 1)  # an operator let everything through
    breaker.clear_override()
    with pytest.raises(ThrottledError):
        breaker.acquire()


def test_open_breaker_rejections_are_not_requests() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    fail(breaker, 1)
    draws.value = 0.0
    breaker.force_open()
    for _ in range(10):
        with pytest.raises(CallNotPermittedError):
            breaker.acquire()
    breaker.clear_override()  # CLOSED, but the throttle remembers only the one failure
    assert breaker.snapshot().throttle_probability == pytest.approx(1 / 2)


def test_shadow_mode_only_counts_would_be_refusals() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws, mode=Mode.SHADOW)
    fail(breaker, 3)
    draws.value = 0.0
    breaker.acquire().failure(0.01)  # would be throttled: runs, counts at its outcome
    snapshot = breaker.snapshot()
    assert (snapshot.throttled, snapshot.shadow_rejected) == (0, 1)
    assert snapshot.throttle_probability == pytest.approx(4 / 5)


def test_no_draw_while_quiet() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    succeed(breaker, 100)
    fail(breaker, 100)  # 200 requests <= 2 * 100 accepts
    assert draws.count == 0


def test_new_config_keeps_evidence_unless_the_window_changes() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    succeed(breaker, 2)
    fail(breaker, 6)  # 8 requests, 2 accepts
    breaker.update_config(breaker.config.replace(throttle_k=4.0))
    assert breaker.snapshot().throttle_probability == 0.0
    breaker.update_config(breaker.config.replace(throttle_k=1.0))
    assert breaker.snapshot().throttle_probability == pytest.approx(6 / 9)
    breaker.update_config(breaker.config.replace(throttle_window=60.0))
    assert breaker.snapshot().throttle_probability == 0.0
    fail(breaker, 1)
    breaker.update_config(breaker.config.replace(throttle_k=None))
    snapshot = breaker.snapshot()
    assert snapshot.throttle_probability == 0.0
    breaker.acquire().ignore()


def test_reset_forgets_the_throttle_but_keeps_the_count() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws)
    fail(breaker, 3)
    draws.value = 0.0
    with pytest.raises(ThrottledError):
        breaker.acquire()
    breaker.reset()
    snapshot = breaker.snapshot()
    assert (snapshot.throttle_probability, snapshot.throttled) == (0.0, 1)


def test_bulkhead_and_throttle_together() -> None:
    clock, draws = FakeClock(), Draws()
    breaker = make(clock, draws, max_concurrent_calls=1)
    fail(breaker, 3)
    draws.value = 0.0
    with pytest.raises(ThrottledError):
        breaker.acquire()  # refused before it could take the slot
    draws.value = 0.99
    permit = breaker.acquire()
    permit.success(0.01)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"throttle_k": 0.5}, "throttle_k"),
        ({"throttle_k": float("nan")}, "throttle_k"),
        ({"throttle_k": "2"}, "throttle_k"),
        ({"throttle_window": 0.5}, "throttle_window"),
        ({"throttle_window": 7200.0}, "throttle_window"),
    ],
)
def test_bad_throttle_config_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        BreakerConfig(**changes)  # type: ignore[arg-type]
    assert error.value.field == field


def test_throttle_is_off_by_default() -> None:
    config = BreakerConfig()
    assert (config.throttle_k, config.throttle_window) == (None, 120.0)
    quiet = config.replace(consecutive_failures=0, failure_rate_threshold=1.0, minimum_calls=1000)
    breaker = CircuitBreaker("svc", quiet)
    for _ in range(50):
        breaker.acquire().failure(0.01)
    assert breaker.snapshot().throttle_probability == 0.0
