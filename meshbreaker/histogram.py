"""Call-duration histograms: fixed bucket bounds, counts kept by the breaker under its lock."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise, repeat
from typing import Final

from meshbreaker.errors import ConfigError

# Upper bounds in seconds; gRPC calls on a LAN start well under Prometheus' default 5 ms.
DEFAULT_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

MAX_BUCKETS: Final = 100  # bucket indexes must fit in a byte (see observe_all)


def check_buckets(buckets: object) -> tuple[float, ...]:
    """The bucket bounds as a tuple, or ConfigError naming what is wrong with them."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Iterable):
        raise ConfigError("buckets", f"must be a sequence of seconds, got {buckets!r}")
    bounds = tuple(buckets)
    if not bounds:
        raise ConfigError("buckets", "must name at least one upper bound")
    if len(bounds) > MAX_BUCKETS:
        raise ConfigError("buckets", f"at most {MAX_BUCKETS} bounds, got {len(bounds)}")
    for bound in bounds:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError("buckets", f"bounds must be numbers, got {bound!r}")
        if not (0 < bound < math.inf):
            raise ConfigError("buckets", f"bounds must be finite and > 0, got {bound!r}")
    if any(later <= earlier for earlier, later in pairwise(bounds)):
        raise ConfigError("buckets", f"bounds must be strictly increasing, got {bounds!r}")
    return tuple(float(bound) for bound in bounds)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Call durations: `counts[i]` fell in (bounds[i-1], bounds[i]]; the last count is +Inf's."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """Observations in all buckets."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, ending with (inf, count), as Prometheus."""
        pairs = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class DurationHistogram:
    """Counts per bucket and a running sum; not thread-safe (the breaker's lock guards it)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = check_buckets(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, duration: float) -> None:
        """Count one duration (bounds are inclusive, as Prometheus' `le`)."""
        self.counts[bisect_left(self.bounds, duration)] += 1
        self.sum += duration

    def observe_all(self, durations: list[float]) -> None:
        """Count a batch of durations, with the per-item work done in C."""
        if not durations:
            return
        bounds, counts = self.bounds, self.counts
        low = bisect_left(bounds, min(durations))
        high = bisect_left(bounds, max(durations))
        if low == high:
            counts[low] += len(durations)  # the usual batch: one endpoint, one latency band
        else:
            indexes = bytes(map(bisect_left, repeat(bounds), durations))
            for index in range(low, high + 1):
                counts[index] += indexes.count(index)
        self.sum += sum(durations)

    def snapshot(self) -> HistogramSnapshot:
        """An immutable copy."""
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)
