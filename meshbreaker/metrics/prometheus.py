"""A Prometheus collector that reads a BreakerRegistry's snapshots at scrape time.

Nothing is added to the hot path: the breakers already keep every counter, so the
collector turns snapshots into metric families only when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from meshbreaker.config import State
from meshbreaker.registry import BreakerRegistry

_OUTCOMES = ("successful", "failed", "ignored", "rejected", "shadow_rejected")


class BreakerCollector(Collector):
    """Exposes every breaker of a registry as meshbreaker_* metric families."""

    def __init__(self, registry: BreakerRegistry, *, namespace: str = "meshbreaker") -> None:
        self._registry = registry
        self._prefix = namespace

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from fresh snapshots."""
        prefix = self._prefix
        state = GaugeMetricFamily(
            f"{prefix}_breaker_state",
            "1 for the state the breaker is in, 0 for the others",
            labels=["breaker", "state"],
        )
        calls = CounterMetricFamily(
            f"{prefix}_calls",
            "Calls by how they ended (rejected calls never ran)",
            labels=["breaker", "outcome"],
        )
        slow = CounterMetricFamily(
            f"{prefix}_slow_calls",
            "Successful calls slower than slow_call_duration",
            labels=["breaker"],
        )
        opened = CounterMetricFamily(
            f"{prefix}_times_opened", "Transitions into OPEN", labels=["breaker"]
        )
        failure_rate = GaugeMetricFamily(
            f"{prefix}_failure_rate", "Failure rate over the window (0..1)", labels=["breaker"]
        )
        slow_rate = GaugeMetricFamily(
            f"{prefix}_slow_call_rate", "Slow-call rate over the window (0..1)", labels=["breaker"]
        )
        window_calls = GaugeMetricFamily(
            f"{prefix}_window_calls", "Calls in the window", labels=["breaker"]
        )
        mean = GaugeMetricFamily(
            f"{prefix}_mean_duration_seconds",
            "Mean call duration in the window",
            labels=["breaker"],
        )
        for snapshot in self._registry.snapshots():
            name = snapshot.name
            for candidate in State:
                state.add_metric(
                    [name, candidate.value], 1.0 if snapshot.state is candidate else 0.0
                )
            for outcome in _OUTCOMES:
                calls.add_metric([name, outcome], getattr(snapshot, outcome))
            slow.add_metric([name], snapshot.slow)
            opened.add_metric([name], snapshot.times_opened)
            failure_rate.add_metric([name], snapshot.failure_rate)
            slow_rate.add_metric([name], snapshot.slow_call_rate)
            window_calls.add_metric([name], snapshot.window_calls)
            mean.add_metric([name], snapshot.mean_duration)
        yield from (state, calls, slow, opened, failure_rate, slow_rate, window_calls, mean)


def register(
    registry: BreakerRegistry, prometheus_registry: CollectorRegistry = REGISTRY
) -> BreakerCollector:
    """Register a BreakerCollector for `registry` with Prometheus and return it."""
    collector = BreakerCollector(registry)
    prometheus_registry.register(collector)
    return collector
