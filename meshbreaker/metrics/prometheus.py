"""Prometheus metrics for a BreakerRegistry, read from the breakers at scrape time.

The breakers already keep every counter, so `PrometheusExporter` (a custom collector) turns
snapshots into metric families only when Prometheus scrapes: the call path pays nothing for them.
The call-duration histogram is the one per-call cost; `durations=False` leaves it out.
`breaker_families` builds the families from rows of label values and numbers; the control plane
(meshbreaker.control.metrics) uses it too, for the breakers its agents report.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

try:
    from prometheus_client import start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, CollectorRegistry
    from prometheus_client.utils import floatToGoString
except ImportError as error:
    raise ImportError(
        "meshbreaker.metrics.prometheus needs the prometheus_client package: "
        "pip install 'meshbreaker[prometheus]'"
    ) from error

from meshbreaker._names import split_breaker_name
from meshbreaker.config import State
from meshbreaker.histogram import DEFAULT_BUCKETS, HistogramSnapshot, check_buckets
from meshbreaker.registry import BreakerRegistry

# Bucket bounds as prometheus_client formats `le` (typed here: the library's function is not).
_le: Callable[[float], str] = floatToGoString

# The labels of every in-process family: the breaker name and what it says about the call.
BREAKER_LABELS = ("breaker", "target", "service", "method")


class SnapshotNumbers(Protocol):
    """The counters and window figures a row needs (a BreakerSnapshot or its report message)."""

    @property
    def successful(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def ignored(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def shadow_rejected(self) -> int: ...
    @property
    def throttled(self) -> int: ...
    @property
    def throttle_probability(self) -> float: ...
    @property
    def concurrency_limit(self) -> int | None: ...
    @property
    def slow(self) -> int: ...
    @property
    def failure_rate(self) -> float: ...
    @property
    def slow_call_rate(self) -> float: ...
    @property
    def window_calls(self) -> int: ...
    @property
    def mean_duration(self) -> float: ...
    @property
    def times_opened(self) -> int: ...


class BreakerRow(NamedTuple):
    """One breaker as the families see it: label values, state, numbers, transitions, durations."""

    labels: Sequence[str]
    state: State
    numbers: SnapshotNumbers
    transitions: Mapping[tuple[State, State], int]
    histogram: HistogramSnapshot | None


def breaker_labels(name: str) -> tuple[str, str, str, str]:
    """The BREAKER_LABELS values for breaker `name` (target/service/method empty if not gRPC)."""
    return (name, *split_breaker_name(name))


def breaker_families(
    label_names: Sequence[str], rows: Iterable[BreakerRow], *, durations: bool
) -> list[Metric]:
    """The meshbreaker_* families for `rows`; the duration histogram only when `durations`.

    Transitions are exported for the (from, to) pairs that happened; a row without a histogram
    has no duration samples.
    """
    names = list(label_names)
    state = GaugeMetricFamily(
        "meshbreaker_state",
        "1 for the state the breaker is in, 0 for the others",
        labels=[*names, "state"],
    )
    calls = CounterMetricFamily(
        "meshbreaker_calls",
        "Calls by outcome: successful, failed, ignored (ran, not counted), not_permitted (rejected,"
        " never ran), throttled (refused by adaptive throttling, never ran), shadow_rejected"
        " (shadow mode would have rejected them; they ran and are also"
        " counted by how they ended)",
        labels=[*names, "outcome"],
    )
    slow = CounterMetricFamily(
        "meshbreaker_slow_calls",
        "Successful calls that took at least slow_call_duration",
        labels=names,
    )
    duration = HistogramMetricFamily(
        "meshbreaker_call_duration_seconds",
        "Duration of calls that ran and were not ignored",
        labels=names,
    )
    failure_rate = GaugeMetricFamily(
        "meshbreaker_failure_rate", "Failure rate over the window (0..1)", labels=names
    )
    slow_rate = GaugeMetricFamily(
        "meshbreaker_slow_call_rate", "Slow-call rate over the window (0..1)", labels=names
    )
    transitions = CounterMetricFamily(
        "meshbreaker_state_transitions",
        "State transitions by (from, to)",
        labels=[*names, "from", "to"],
    )
    opened = CounterMetricFamily("meshbreaker_times_opened", "Transitions into OPEN", labels=names)
    window_calls = GaugeMetricFamily(
        "meshbreaker_window_calls", "Calls in the window", labels=names
    )
    mean = GaugeMetricFamily(
        "meshbreaker_mean_duration_seconds", "Mean call duration in the window", labels=names
    )
    throttle = GaugeMetricFamily(
        "meshbreaker_throttle_probability",
        "The chance adaptive throttling refuses a call now (0 when off)",
        labels=names,
    )
    concurrency = GaugeMetricFamily(
        "meshbreaker_concurrency_limit",
        "Calls in flight allowed now: the adaptive limit, or the fixed bulkhead (absent: none)",
        labels=names,
    )
    for row in rows:
        labels = list(row.labels)
        numbers = row.numbers
        for candidate in State:
            state.add_metric([*labels, candidate.value], 1.0 if row.state is candidate else 0.0)
        calls.add_metric([*labels, "successful"], numbers.successful)
        calls.add_metric([*labels, "failed"], numbers.failed)
        calls.add_metric([*labels, "ignored"], numbers.ignored)
        calls.add_metric([*labels, "not_permitted"], numbers.rejected)
        calls.add_metric([*labels, "shadow_rejected"], numbers.shadow_rejected)
        calls.add_metric([*labels, "throttled"], numbers.throttled)
        throttle.add_metric(labels, numbers.throttle_probability)
        limit = numbers.concurrency_limit
        if limit:  # None (a snapshot) or 0 (a report) when there is no bulkhead
            concurrency.add_metric(labels, limit)
        slow.add_metric(labels, numbers.slow)
        if row.histogram is not None:
            histogram = row.histogram
            buckets = [(_le(bound), count) for bound, count in histogram.cumulative()]
            duration.add_metric(labels, buckets, histogram.sum)
        failure_rate.add_metric(labels, numbers.failure_rate)
        slow_rate.add_metric(labels, numbers.slow_call_rate)
        for (old, new), count in sorted(row.transitions.items()):
            transitions.add_metric([*labels, old.value, new.value], count)
        opened.add_metric(labels, numbers.times_opened)
        window_calls.add_metric(labels, numbers.window_calls)
        mean.add_metric(labels, numbers.mean_duration)
    families: list[Metric] = [state, calls, slow]
    if durations:
        families.append(duration)
    families += [failure_rate, slow_rate, transitions, opened, window_calls, mean, throttle]
    families.append(concurrency)
    return families


class PrometheusExporter:
    """Exposes every breaker of a BreakerRegistry, present and future, as meshbreaker_* metrics.

    Registers itself with `prometheus_registry` (default: prometheus_client's REGISTRY).
    `durations=True` makes the registry keep a duration histogram in `buckets` (seconds) and
    exports it; with False the exporter neither starts nor exports one (a histogram another part
    of the process started, e.g. for mesh reports, keeps running). `close()` unregisters.
    """

    def __init__(
        self,
        registry: BreakerRegistry,
        *,
        prometheus_registry: CollectorRegistry | None = None,
        durations: bool = True,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self._registry = registry
        self._durations = durations
        bounds = check_buckets(buckets) if durations else None
        self._prometheus_registry = REGISTRY if prometheus_registry is None else prometheus_registry
        self._prometheus_registry.register(self)  # first: a refusal leaves the registry untouched
        self._registered = True
        if bounds is not None:
            registry.track_durations(bounds)

    def describe(self) -> list[Metric]:
        """The families without samples (for prometheus_client's duplicate-name check)."""
        return breaker_families(BREAKER_LABELS, (), durations=self._durations)

    def collect(self) -> list[Metric]:
        """The families, from each breaker's state now."""
        rows = []
        durations = self._durations
        for breaker in sorted(self._registry, key=lambda breaker: breaker.name):
            observed = breaker.observe()  # one lock: the histogram agrees with the counters
            snapshot = observed.snapshot
            rows.append(
                BreakerRow(
                    breaker_labels(snapshot.name),
                    snapshot.state,
                    snapshot,
                    observed.transitions,
                    observed.durations if durations else None,
                )
            )
        return breaker_families(BREAKER_LABELS, rows, durations=durations)

    def close(self) -> None:
        """Unregister from the Prometheus registry; idempotent."""
        if self._registered:
            self._registered = False
            self._prometheus_registry.unregister(self)


class AgentLink(Protocol):
    """What AgentExporter reads of a MeshAgent (kept structural: metrics never import the mesh)."""

    service: str
    instance_id: str

    @property
    def status(self) -> enum.Enum: ...
    @property
    def applied_revision(self) -> int: ...


class AgentExporter:
    """A MeshAgent's link to the control plane as metrics: its status (one series per possible
    status, 1 for the current one) and the revision of the policies in force.
    """

    def __init__(
        self, agent: AgentLink, *, prometheus_registry: CollectorRegistry | None = None
    ) -> None:
        self._agent = agent
        self._prometheus_registry = REGISTRY if prometheus_registry is None else prometheus_registry
        self._prometheus_registry.register(self)
        self._registered = True

    def describe(self) -> list[Metric]:
        """The families without samples."""
        return self._families(with_samples=False)

    def collect(self) -> list[Metric]:
        """The families, from the agent's state now."""
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> list[Metric]:
        labels = ["service", "instance"]
        status = GaugeMetricFamily(
            "meshbreaker_agent_status",
            "1 for the agent's current link status (connected, denied, unreachable, stale, "
            "connecting), 0 for the others",
            labels=[*labels, "status"],
        )
        revision = GaugeMetricFamily(
            "meshbreaker_agent_applied_revision",
            "Store revision of the policies the agent has in force (0 = none)",
            labels=labels,
        )
        if with_samples:
            agent = self._agent
            current = agent.status
            values = [agent.service, agent.instance_id]
            for member in type(current):
                status.add_metric([*values, str(member.value)], 1.0 if member is current else 0.0)
            revision.add_metric(values, float(agent.applied_revision))
        return [status, revision]

    def close(self) -> None:
        """Unregister from the Prometheus registry; idempotent."""
        if self._registered:
            self._registered = False
            self._prometheus_registry.unregister(self)


class MetricsServer:
    """prometheus_client's HTTP server for one registry, in a daemon thread; `close()` stops it."""

    def __init__(self, port: int, addr: str, registry: CollectorRegistry) -> None:
        self._server, self._thread = start_http_server(port, addr, registry)
        self.host = addr
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (takes up to 0.5 s: the server's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve `registry` on http://addr:port/metrics (port 0 picks one: see `.port`)."""
    return MetricsServer(port, addr, registry)
