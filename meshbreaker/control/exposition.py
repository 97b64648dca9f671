"""The control plane's breaker series at mesh scale: rows per instance or summed, written fast.

Past `max_instance_breakers` reported breakers the series are summed per (caller service,
breaker) with instance="*", so their number follows the mesh's distinct breakers, not its
processes. The text is written here rather than by prometheus_client, which builds an object per
sample and checks every label name of every sample (a scrape of 20,000 breakers took over a
minute): each row's label values are escaped once and each sample is one formatted line. The
families, names and values are those of meshbreaker.metrics.prometheus (breaker_samples), and a
test holds this text equal to prometheus_client's for the same rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from meshbreaker._names import split_breaker_name
from meshbreaker.config import State
from meshbreaker.control.convert import (
    histogram_from_proto,
    state_from_proto,
    transitions_from_proto,
)
from meshbreaker.control.instances import InstanceView
from meshbreaker.histogram import HistogramSnapshot
from meshbreaker.metrics.prometheus import (
    FAMILY_DURATION,
    FAMILY_EXTRA_LABELS,
    BreakerRow,
    breaker_samples,
    empty_breaker_families,
    histogram_buckets,
)

# The caller service and instance come first; "service" is the caller here (as everywhere in the
# control plane), so the called gRPC service parsed from the breaker name is "grpc_service".
MESH_LABELS = ("service", "instance", "breaker", "target", "grpc_service", "method")
# Go's float formatting, as prometheus_client writes values (typed here: the library's is not).
_go_float: Callable[[float], str] = floatToGoString
# The instance label of a series summed over every instance of its service.
ALL_INSTANCES = "*"


@dataclass
class _Summed:
    """A breaker's numbers summed (counters) or averaged (rates) over a service's instances."""

    successful: int = 0
    failed: int = 0
    ignored: int = 0
    rejected: int = 0
    shadow_rejected: int = 0
    throttled: int = 0
    throttle_probability: float = 0.0
    concurrency_limit: int | None = None
    slow: int = 0
    failure_rate: float = 0.0
    slow_call_rate: float = 0.0
    window_calls: int = 0
    mean_duration: float = 0.0
    times_opened: int = 0


def mesh_rows(instances: Sequence[InstanceView], max_instance_breakers: int) -> list[BreakerRow]:
    """One row per instance and breaker, or summed per (service, breaker) past the cap."""
    if sum(len(instance.breakers) for instance in instances) <= max_instance_breakers:
        return _instance_rows(instances)
    return _summed_rows(instances)


def _instance_rows(instances: Sequence[InstanceView]) -> list[BreakerRow]:
    rows = []
    for instance in instances:
        for name, snapshot in sorted(instance.breakers.items()):
            state = state_from_proto(snapshot.state)
            if state is None:  # refused when reported; kept out all the same
                continue
            rows.append(
                BreakerRow(
                    (instance.service, instance.instance_id, name, *split_breaker_name(name)),
                    state,
                    snapshot,
                    transitions_from_proto(snapshot.transitions),
                    histogram_from_proto(snapshot),
                )
            )
    return rows


def _summed_rows(instances: Sequence[InstanceView]) -> list[BreakerRow]:
    groups: dict[tuple[str, str], tuple[_Summed, Counter[State], Counter[tuple[State, State]]]] = {}
    histograms: dict[tuple[str, str], HistogramSnapshot | None] = {}
    for instance in instances:
        for name, snapshot in instance.breakers.items():
            state = state_from_proto(snapshot.state)
            if state is None:
                continue
            key = (instance.service, name)
            group = groups.get(key)
            if group is None:
                group = groups[key] = (_Summed(), Counter(), Counter())
            summed, states, transitions = group
            states[state] += 1
            summed.successful += snapshot.successful
            summed.failed += snapshot.failed
            summed.ignored += snapshot.ignored
            summed.rejected += snapshot.rejected
            summed.shadow_rejected += snapshot.shadow_rejected
            summed.throttled += snapshot.throttled
            summed.slow += snapshot.slow
            summed.window_calls += snapshot.window_calls
            summed.times_opened += snapshot.times_opened
            summed.throttle_probability += snapshot.throttle_probability
            summed.failure_rate += snapshot.failure_rate
            summed.slow_call_rate += snapshot.slow_call_rate
            summed.mean_duration += snapshot.mean_duration
            if snapshot.HasField("concurrency_limit") and snapshot.concurrency_limit:
                summed.concurrency_limit = (
                    summed.concurrency_limit or 0
                ) + snapshot.concurrency_limit
            for transition in snapshot.transitions:
                old, new = (
                    state_from_proto(transition.from_state),
                    state_from_proto(transition.to_state),
                )
                if old is not None and new is not None:
                    transitions[(old, new)] += transition.count
            histogram = histogram_from_proto(snapshot)
            if key not in histograms:
                histograms[key] = histogram
            else:
                histograms[key] = _add_histograms(histograms[key], histogram)
    rows = []
    for (service, name), (summed, states, transitions) in sorted(groups.items()):
        count = sum(states.values())
        summed.throttle_probability /= count
        summed.failure_rate /= count
        summed.slow_call_rate /= count
        summed.mean_duration /= count
        rows.append(
            BreakerRow(
                (service, ALL_INSTANCES, name, *split_breaker_name(name)),
                states.most_common(1)[0][0],
                summed,
                dict(transitions),
                histograms.get((service, name)),
                state_counts=dict(states),
            )
        )
    return rows


def _add_histograms(
    left: HistogramSnapshot | None, right: HistogramSnapshot | None
) -> HistogramSnapshot | None:
    """The sum of two histograms with the same bounds; None when either is missing or differs."""
    if left is None or right is None or left.bounds != right.bounds:
        return None
    counts = tuple(a + b for a, b in zip(left.counts, right.counts, strict=True))
    return HistogramSnapshot(left.bounds, counts, left.sum + right.sum)


def _escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value  # the usual case: nothing to escape
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """A sample value exactly as prometheus_client writes it (Go's float formatting)."""
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    if math.isfinite(value) and -1e6 < value < 1e6:
        return repr(float(value))
    return _go_float(value)


def _header(metric: Metric) -> tuple[str, str]:
    name = f"{metric.name}_total" if metric.type == "counter" else metric.name
    documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return name, f"# HELP {name} {documentation}\n# TYPE {name} {metric.type}\n"


def render_rows(rows: Iterable[BreakerRow], *, durations: bool) -> str:
    """The meshbreaker_* families of `rows` in the text format, as breaker_families has them."""
    families = empty_breaker_families(MESH_LABELS)
    headers = [_header(family) for family in families]
    lines: list[list[str]] = [[] for _ in families]
    names = [name for name, _ in headers]
    # ',outcome="failed"}' and the like, made once per (family, values) rather than per sample.
    closings: dict[tuple[int, tuple[str, ...]], str] = {}
    for row in rows:
        own = ",".join(
            f'{label}="{_escape(value)}"'
            for label, value in zip(MESH_LABELS, row.labels, strict=True)
        )
        for family, extra, value in breaker_samples(row):
            closing = closings.get((family, extra))
            if closing is None:
                closing = closings[(family, extra)] = (
                    "".join(
                        f',{label}="{_escape(item)}"'
                        for label, item in zip(
                            FAMILY_EXTRA_LABELS.get(family, ()), extra, strict=True
                        )
                    )
                    + "} "
                )
            lines[family].append(f"{names[family]}{{{own}{closing}{_number(value)}\n")
        histogram = row.histogram
        if durations and histogram is not None:
            name = families[FAMILY_DURATION].name
            out = lines[FAMILY_DURATION]
            for bound, count in histogram_buckets(histogram):
                out.append(f'{name}_bucket{{{own},le="{bound}"}} {_number(float(count))}\n')
            out.append(f"{name}_count{{{own}}} {_number(float(histogram.count))}\n")
            out.append(f"{name}_sum{{{own}}} {_number(histogram.sum)}\n")
    parts = []
    for index, (_, header) in enumerate(headers):
        if index == FAMILY_DURATION and not durations:
            continue
        parts.append(header)
        parts.extend(lines[index])
    return "".join(parts)


def render_metrics(metrics: Iterable[Metric]) -> str:
    """Small families (the control plane's own gauges) in the text format."""
    parts = []
    for metric in metrics:
        parts.append(_header(metric)[1])
        for sample in metric.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
            value = _number(float(sample.value))
            parts.append(
                f"{sample.name}{{{labels}}} {value}\n" if labels else f"{sample.name} {value}\n"
            )
    return "".join(parts)
