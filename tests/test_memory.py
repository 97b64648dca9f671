"""Memory follows what a breaker records, not what its config allows (DESIGN.md §3)."""

from __future__ import annotations

import gc
import tracemalloc

from meshbreaker import BreakerConfig, BreakerRegistry, WindowType
from meshbreaker.testing import FakeClock


def _work() -> None:
    """A call that succeeds at once."""


def bytes_per_breaker(config: BreakerConfig, breakers: int = 200, calls: int = 1) -> float:
    registry = BreakerRegistry(config, clock=FakeClock())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(breakers):
            breaker = registry.get(f"/pkg.Service/Method{index}")
            for _ in range(calls):
                breaker.call(_work)
            breaker.acquire().failure()  # a window entry that is not a quick success
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / breakers
    finally:
        tracemalloc.stop()


def test_the_largest_count_window_costs_nothing_until_it_is_used() -> None:
    largest = BreakerConfig(window_type=WindowType.COUNT, window_size=1_000_000)
    assert bytes_per_breaker(largest) <= 4 * 1024


def test_the_largest_time_window_costs_nothing_until_it_is_used() -> None:
    assert bytes_per_breaker(BreakerConfig(window_size=3600)) <= 4 * 1024


def test_a_count_window_grows_with_its_calls() -> None:
    config = BreakerConfig(
        window_type=WindowType.COUNT, window_size=1_000_000, consecutive_failures=0
    )
    few = bytes_per_breaker(config, breakers=20, calls=10)
    many = bytes_per_breaker(config, breakers=20, calls=5000)
    assert many > few + 5000 * 8  # at least a double per recorded call
    assert many < few + 5000 * 12  # and not much more
