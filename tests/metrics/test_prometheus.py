"""The Prometheus collector exposes what the snapshots say, at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from meshbreaker import BreakerConfig, BreakerRegistry
from meshbreaker.metrics.prometheus import register
from meshbreaker.testing import FakeClock

METHOD = "/bank.v1.AccountService/GetBalance"


def test_metrics_follow_the_breakers(clock: FakeClock) -> None:
    breakers = BreakerRegistry(default=BreakerConfig(consecutive_failures=2), clock=clock)
    prometheus = CollectorRegistry()
    register(breakers, prometheus)
    cb = breakers.get(METHOD)
    cb.acquire().success(0.25)
    cb.acquire().failure()

    def sample(name: str, **labels: str) -> float | None:
        return prometheus.get_sample_value(name, {"breaker": METHOD, **labels})

    assert sample("meshbreaker_breaker_state", state="CLOSED") == 1.0
    assert sample("meshbreaker_calls_total", outcome="successful") == 1.0
    assert sample("meshbreaker_calls_total", outcome="failed") == 1.0
    assert sample("meshbreaker_failure_rate") == 0.5
    assert sample("meshbreaker_mean_duration_seconds") is not None
    cb.acquire().failure()
    for _ in range(3):
        cb.try_acquire()
    assert sample("meshbreaker_breaker_state", state="OPEN") == 1.0
    assert sample("meshbreaker_breaker_state", state="CLOSED") == 0.0
    assert sample("meshbreaker_calls_total", outcome="rejected") == 3.0
    assert sample("meshbreaker_times_opened_total") == 1.0
    assert b"meshbreaker_window_calls" in generate_latest(prometheus)
