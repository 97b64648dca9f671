"""Duration histograms and transition counts: what the metrics exporters read at scrape time."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshbreaker import (
    BreakerConfig,
    BreakerRegistry,
    CallNotPermittedError,
    CircuitBreaker,
    ConfigError,
    State,
)
from meshbreaker.histogram import DEFAULT_BUCKETS, DurationHistogram, check_buckets
from meshbreaker.testing import FakeClock


def _ticking(clock: FakeClock, seconds: float) -> Callable[[], None]:
    def fn() -> None:
        clock.advance(seconds)

    return fn


@pytest.mark.parametrize(
    ("buckets", "wrong"),
    [
        ((), "at least one"),
        ("0.1", "sequence"),
        (0.1, "sequence"),
        ((0.1, 0.1), "strictly increasing"),
        ((0.2, 0.1), "strictly increasing"),
        ((0.0, 1.0), "> 0"),
        ((-1.0,), "> 0"),
        ((1.0, math.inf), "finite"),
        ((math.nan,), "finite"),
        ((True,), "numbers"),
        (("1",), "numbers"),
        (tuple(range(1, 102)), "at most 100"),
    ],
)
def test_bad_buckets_name_the_field(buckets: object, wrong: str) -> None:
    with pytest.raises(ConfigError, match=wrong) as raised:
        check_buckets(buckets)
    assert raised.value.field == "buckets"


def test_a_hundred_bounds_are_the_most_accepted() -> None:
    """MAX_BUCKETS is inclusive: 100 bounds make a histogram, 101 do not (above)."""
    histogram = DurationHistogram(tuple(range(1, 101)))
    histogram.observe(100.5)
    assert len(histogram.bounds) == 100 and histogram.snapshot().counts[-1] == 1


def test_bounds_are_inclusive_like_prometheus_le() -> None:
    histogram = DurationHistogram((0.1, 1.0))
    for duration in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(duration)
    snapshot = histogram.snapshot()
    assert snapshot.counts == (2, 2, 1)
    assert snapshot.count == 5
    assert snapshot.sum == pytest.approx(4.65)
    assert snapshot.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]


def test_breaker_histogram_is_off_by_default_and_counts_calls_that_ran(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", BreakerConfig(consecutive_failures=2), clock=clock)
    assert cb.duration_histogram() is None
    cb.track_durations((0.01, 0.1, 1.0))
    cb.call(_ticking(clock, 0.005))  # the quick path
    cb.call(_ticking(clock, 0.05))
    cb.acquire().success(2.0)  # slower than every bound
    cb.acquire().ignore()  # ignored calls say nothing about durations
    with pytest.raises(ZeroDivisionError):
        cb.call(lambda: 1 / 0)
    cb.acquire().failure(0.5)  # second failure in a row: trips
    assert cb.state is State.OPEN
    with pytest.raises(CallNotPermittedError):
        cb.call(_ticking(clock, 0.05))  # rejected: never ran
    snapshot = cb.duration_histogram()
    assert snapshot is not None
    assert snapshot.counts == (2, 1, 1, 1)  # 0.005 and the failure at 0; 0.05; 0.5; 2.0
    assert snapshot.sum == pytest.approx(0.005 + 0.05 + 0.5 + 2.0)


def test_same_bounds_keep_counts_other_bounds_restart_none_drops(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", clock=clock)
    cb.track_durations()
    cb.acquire().success(0.001)
    cb.track_durations(DEFAULT_BUCKETS)
    kept = cb.duration_histogram()
    assert kept is not None and kept.count == 1
    cb.track_durations((1.0,))
    restarted = cb.duration_histogram()
    assert restarted is not None and restarted.count == 0
    cb.track_durations(None)
    assert cb.duration_histogram() is None


def test_successes_from_before_tracking_began_are_left_out(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", clock=clock)
    for _ in range(3):
        cb.acquire().success(0.001)  # logged lock-free, not yet counted when tracking begins
    cb.track_durations()
    cb.acquire().success(0.002)
    snapshot = cb.duration_histogram()
    assert snapshot is not None and snapshot.count == 1
    assert cb.snapshot().successful == 4


def test_registry_tracks_durations_in_present_and_future_breakers(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    before = registry.get("/a.S/M")
    with pytest.raises(ConfigError):
        registry.track_durations((2.0, 1.0))
    assert before.duration_histogram() is None  # nothing half-applied
    registry.track_durations((0.5,))
    after = registry.get("/a.S/N")
    assert registry.duration_buckets == (0.5,)
    for breaker in (before, after):
        breaker.acquire().success(0.1)
        histogram = breaker.duration_histogram()
        assert histogram is not None and histogram.counts == (1, 0)
    registry.track_durations(None)
    assert registry.get("/a.S/O").duration_histogram() is None
    assert before.duration_histogram() is None


def test_transition_counts_follow_every_transition(clock: FakeClock) -> None:
    config = BreakerConfig(
        consecutive_failures=1,
        open_duration=1.0,
        open_duration_max=1.0,
        half_open_max_calls=1,
        half_open_success_threshold=1,
    )
    cb = CircuitBreaker("dep", config, clock=clock)
    assert cb.transition_counts() == {}
    cb.acquire().failure()  # CLOSED -> OPEN
    clock.advance(1.0)
    cb.acquire().failure()  # OPEN -> HALF_OPEN -> OPEN
    clock.advance(1.0)
    cb.acquire().success()  # OPEN -> HALF_OPEN -> CLOSED
    cb.force_open()
    cb.clear_override()
    assert cb.transition_counts() == {
        (State.CLOSED, State.OPEN): 1,
        (State.OPEN, State.HALF_OPEN): 2,
        (State.HALF_OPEN, State.OPEN): 1,
        (State.HALF_OPEN, State.CLOSED): 1,
        (State.CLOSED, State.FORCED_OPEN): 1,
        (State.FORCED_OPEN, State.CLOSED): 1,
    }
    cb.reset()  # already CLOSED: not a transition
    assert sum(cb.transition_counts().values()) == 7


@given(
    durations=st.lists(
        st.one_of(st.sampled_from([0.0, 0.01, 0.1, 1.0, 1e9]), st.floats(0.0, 2.0)), max_size=50
    )
)
def test_a_batch_counts_as_the_same_durations_one_by_one(durations: list[float]) -> None:
    one_by_one, batch = DurationHistogram((0.01, 0.1, 1.0)), DurationHistogram((0.01, 0.1, 1.0))
    for duration in durations:
        one_by_one.observe(duration)
    batch.observe_all(durations)
    assert batch.snapshot().counts == one_by_one.snapshot().counts
    assert batch.snapshot().sum == pytest.approx(one_by_one.snapshot().sum)
