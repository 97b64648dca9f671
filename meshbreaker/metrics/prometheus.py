"""Prometheus metrics for a BreakerRegistry, read from the breakers at scrape time.

The breakers already keep every counter, so `PrometheusExporter` (a custom collector) turns
snapshots into metric families only when Prometheus scrapes: the call path pays nothing for them.
The call-duration histogram is the one per-call cost; `durations=False` leaves it out.
`breaker_families` builds the families from rows of label values and numbers; the control plane
(meshbreaker.control.metrics) uses it too, for the breakers its agents report.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, cast

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
    """One breaker as the families see it: label values, state, numbers, transitions, durations.

    `state_counts`, when set, makes the row stand for several breakers (a control plane's series
    summed over a service's instances): meshbreaker_state is then how many are in each state.
    """

    labels: Sequence[str]
    state: State
    numbers: SnapshotNumbers
    transitions: Mapping[tuple[State, State], int]
    histogram: HistogramSnapshot | None
    state_counts: Mapping[State, int] | None = None


def breaker_labels(name: str) -> tuple[str, str, str, str]:
    """The BREAKER_LABELS values for breaker `name` (target/service/method empty if not gRPC)."""
    return (name, *split_breaker_name(name))


# The families of breaker_families, in order; a row's samples name them by index (FAMILY_*).
FAMILY_STATE, FAMILY_CALLS, FAMILY_SLOW, FAMILY_DURATION = 0, 1, 2, 3
FAMILY_FAILURE_RATE, FAMILY_SLOW_RATE, FAMILY_TRANSITIONS, FAMILY_OPENED = 4, 5, 6, 7
FAMILY_WINDOW_CALLS, FAMILY_MEAN, FAMILY_THROTTLE, FAMILY_CONCURRENCY = 8, 9, 10, 11
_STATES = tuple(State)
# The labels a family adds after a row's own.
FAMILY_EXTRA_LABELS: Mapping[int, tuple[str, ...]] = {
    FAMILY_STATE: ("state",),
    FAMILY_CALLS: ("outcome",),
    FAMILY_TRANSITIONS: ("from", "to"),
}


def empty_breaker_families(label_names: Sequence[str]) -> list[Metric]:
    """The meshbreaker_* families without samples, indexed by FAMILY_*."""
    names = list(label_names)
    return [
        GaugeMetricFamily(
            "meshbreaker_state",
            "1 for the state the breaker is in, 0 for the others",
            labels=[*names, *FAMILY_EXTRA_LABELS[FAMILY_STATE]],
        ),
        CounterMetricFamily(
            "meshbreaker_calls",
            "Calls by outcome: successful, failed, ignored (ran, not counted), not_permitted"
            " (rejected, never ran), throttled (refused by adaptive throttling, never ran),"
            " shadow_rejected (shadow mode would have rejected them; they ran and are also"
            " counted by how they ended)",
            labels=[*names, *FAMILY_EXTRA_LABELS[FAMILY_CALLS]],
        ),
        CounterMetricFamily(
            "meshbreaker_slow_calls",
            "Successful calls that took at least slow_call_duration",
            labels=names,
        ),
        HistogramMetricFamily(
            "meshbreaker_call_duration_seconds",
            "Duration of calls that ran and were not ignored",
            labels=names,
        ),
        GaugeMetricFamily(
            "meshbreaker_failure_rate", "Failure rate over the window (0..1)", labels=names
        ),
        GaugeMetricFamily(
            "meshbreaker_slow_call_rate", "Slow-call rate over the window (0..1)", labels=names
        ),
        CounterMetricFamily(
            "meshbreaker_state_transitions",
            "State transitions by (from, to)",
            labels=[*names, *FAMILY_EXTRA_LABELS[FAMILY_TRANSITIONS]],
        ),
        CounterMetricFamily("meshbreaker_times_opened", "Transitions into OPEN", labels=names),
        GaugeMetricFamily("meshbreaker_window_calls", "Calls in the window", labels=names),
        GaugeMetricFamily(
            "meshbreaker_mean_duration_seconds", "Mean call duration in the window", labels=names
        ),
        GaugeMetricFamily(
            "meshbreaker_throttle_probability",
            "The chance adaptive throttling refuses a call now (0 when off)",
            labels=names,
        ),
        GaugeMetricFamily(
            "meshbreaker_concurrency_limit",
            "Calls in flight allowed now: the adaptive limit, or the fixed bulkhead (absent: none)",
            labels=names,
        ),
    ]


def breaker_samples(row: BreakerRow) -> Iterator[tuple[int, tuple[str, ...], float]]:
    """(FAMILY_* index, label values after the row's own, value) of a row, histogram aside."""
    numbers = row.numbers
    counts = row.state_counts
    for candidate in _STATES:
        if counts is None:
            value = 1.0 if row.state is candidate else 0.0
        else:
            value = float(counts.get(candidate, 0))
        yield FAMILY_STATE, (candidate.value,), value
    yield FAMILY_CALLS, ("successful",), numbers.successful
    yield FAMILY_CALLS, ("failed",), numbers.failed
    yield FAMILY_CALLS, ("ignored",), numbers.ignored
    yield FAMILY_CALLS, ("not_permitted",), numbers.rejected
    yield FAMILY_CALLS, ("shadow_rejected",), numbers.shadow_rejected
    yield FAMILY_CALLS, ("throttled",), numbers.throttled
    yield FAMILY_THROTTLE, (), numbers.throttle_probability
    limit = numbers.concurrency_limit
    if limit:  # None (a snapshot) or 0 (a report) when there is no bulkhead
        yield FAMILY_CONCURRENCY, (), limit
    yield FAMILY_SLOW, (), numbers.slow
    yield FAMILY_FAILURE_RATE, (), numbers.failure_rate
    yield FAMILY_SLOW_RATE, (), numbers.slow_call_rate
    for (old, new), count in sorted(row.transitions.items()):
        yield FAMILY_TRANSITIONS, (old.value, new.value), count
    yield FAMILY_OPENED, (), numbers.times_opened
    yield FAMILY_WINDOW_CALLS, (), numbers.window_calls
    yield FAMILY_MEAN, (), numbers.mean_duration


def histogram_buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    """Cumulative (le, count) buckets as Prometheus writes them."""
    return [(_le(bound), count) for bound, count in histogram.cumulative()]


class _ValueFamily(Protocol):
    """A gauge or counter family: one value per label set."""

    def add_metric(self, labels: Sequence[str], value: float) -> None: ...


def breaker_families(
    label_names: Sequence[str], rows: Iterable[BreakerRow], *, durations: bool
) -> list[Metric]:
    """The meshbreaker_* families for `rows`; the duration histogram only when `durations`.

    Transitions are exported for the (from, to) pairs that happened; a row without a histogram
    has no duration samples.
    """
    families = empty_breaker_families(label_names)
    for row in rows:
        labels = list(row.labels)
        for family, extra, value in breaker_samples(row):
            cast(_ValueFamily, families[family]).add_metric([*labels, *extra], value)
        if row.histogram is not None:
            duration = families[FAMILY_DURATION]
            assert isinstance(duration, HistogramMetricFamily)
            duration.add_metric(labels, histogram_buckets(row.histogram), row.histogram.sum)
    if not durations:
        del families[FAMILY_DURATION]
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
