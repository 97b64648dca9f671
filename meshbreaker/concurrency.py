"""AdaptiveLimit: a concurrency limit that follows latency (Netflix concurrency-limits' gradient).

The limit moves with the ratio of the no-load latency (the minimum seen) to the recent latency
(an exponential average of the last calls' latencies, weight RECENT_WEIGHT, so one slow call does
not cut the limit): while calls take about as long as they do unloaded, the limit grows by about
sqrt(limit) (the queue it allows); when latency rises past TOLERANCE times the minimum, the backend
is queueing and the limit shrinks by that ratio (by half at most per sample); every change is
smoothed. A failed call cuts the limit by BACKOFF (AIMD's multiplicative decrease), at most once per
limit / 2 calls: the failures of one overload episode arrive together and are one signal (Netflix's
WindowedLimit reads a window's drops as one), not a collapse by 0.9 per failure. The minimum is
measured again every PROBE_EVERY samples, so a backend that became slower for good is not starved.

Not thread-safe on its own: the CircuitBreaker that owns it calls it under its lock.
"""

from __future__ import annotations

import math
from typing import Final

DEFAULT_MAX_LIMIT: Final = 1000
INITIAL_LIMIT: Final = 20
MIN_LIMIT: Final = 1
TOLERANCE: Final = 1.5  # latency may reach 1.5 x the minimum before the limit shrinks
SMOOTHING: Final = 0.2
RECENT_WEIGHT: Final = 0.1  # each call's share of the recent latency
BACKOFF: Final = 0.9
PROBE_EVERY: Final = 1000


class AdaptiveLimit:
    """A gradient concurrency limit between MIN_LIMIT and `max_limit` (lock held by the caller)."""

    __slots__ = ("_samples", "_since_cut", "limit", "max_limit", "min_latency", "recent_latency")

    def __init__(self, max_limit: int = DEFAULT_MAX_LIMIT) -> None:
        self.max_limit = max_limit
        self.limit = float(min(INITIAL_LIMIT, max_limit))
        self.min_latency = math.inf
        self.recent_latency = math.nan  # until the first sample
        self._samples = 0
        self._since_cut = math.inf  # calls since the last cut for a failure

    @property
    def current(self) -> int:
        """The limit in whole calls."""
        return int(self.limit)

    def update(self, latency: float, failed: bool, in_flight: int) -> int:
        """Take one finished call (`in_flight` counted it too); the new limit in whole calls."""
        limit = self.limit
        self._since_cut += 1
        if failed:
            if self._since_cut >= limit / 2:
                self._since_cut = 0
                self.limit = max(MIN_LIMIT, limit * BACKOFF)
            return int(self.limit)
        self._samples += 1
        if self._samples >= PROBE_EVERY:
            self._samples = 0
            self.min_latency = latency  # measure the no-load latency again from here
        elif latency < self.min_latency:
            self.min_latency = latency
        recent = self.recent_latency
        if recent != recent:  # NaN: the first sample
            recent = latency
        else:
            recent += RECENT_WEIGHT * (latency - recent)
        self.recent_latency = recent
        if in_flight < limit / 2:
            return int(limit)  # the caller, not the backend, limits concurrency: no evidence
        if recent <= 0.0:
            gradient = 1.0
        else:
            gradient = max(0.5, min(1.0, TOLERANCE * self.min_latency / recent))
        target = limit * gradient + math.sqrt(limit)
        limit = limit * (1.0 - SMOOTHING) + target * SMOOTHING
        self.limit = max(float(MIN_LIMIT), min(float(self.max_limit), limit))
        return int(self.limit)
