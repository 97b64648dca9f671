"""AdaptiveLimit: a concurrency limit following latency (Netflix concurrency-limits' Vegas limit).

The limit estimates the calls queued at the backend from the ratio of the no-load latency (the
minimum seen) to the recent latency: `queue = limit · (1 - min_latency / recent_latency)`, the
calls in flight beyond what the backend serves at its no-load latency. It keeps that queue small:
it grows by 1 while the queue is under ALPHA (by BETA while there is none, to find the knee fast),
shrinks by 1 past BETA, and holds in between. Throughput stops growing at the knee and latency
only queues past it; a queue of a few calls keeps the backend busy without overrunning it, for
any capacity and latency, with no tuning. ALPHA and BETA scale with log10(limit) as Netflix's do.

It decides once per window, never per call: a window holds only the calls admitted after the last
decision, and closes once as many have finished as were in flight at most (about one round trip;
at least WINDOW_MIN_SAMPLES). A decision per call would act on latencies measured before its own
previous decisions took effect, and a controller acting on stale evidence overshoots: the limit
runs past the knee for a round trip before any call admitted under it reports back. A window with a
failed call cuts the limit by BACKOFF (AIMD's multiplicative decrease: the backend is shedding, an
overload episode's failures are one signal). A window in which fewer than half the limit were in
flight changes nothing (the caller, not the backend, limited concurrency). The minimum is measured
afresh (from one window's fastest call) every PROBE_EVERY calls, so a backend that became slower
for good is not starved.

Not thread-safe on its own: the CircuitBreaker that owns it calls it under its lock.
"""

from __future__ import annotations

import math
from typing import Final

DEFAULT_MAX_LIMIT: Final = 1000
INITIAL_LIMIT: Final = 20
MIN_LIMIT: Final = 1
ALPHA: Final = 3  # queue below ALPHA · log10(limit): grow by log10(limit)
BETA: Final = 6  # queue above BETA · log10(limit): shrink by log10(limit)
BACKOFF: Final = 0.9
WINDOW_MIN_SAMPLES: Final = 10
PROBE_EVERY: Final = 1000


def _log10(limit: float) -> int:
    """Netflix's log10 root: max(1, floor(log10(limit)))."""
    return max(1, int(math.log10(max(limit, 1.0))))


class AdaptiveLimit:
    """A Vegas concurrency limit between MIN_LIMIT and `max_limit` (lock held by the caller)."""

    __slots__ = (
        "_count",
        "_failed",
        "_fastest",
        "_max_in_flight",
        "_since_probe",
        "_total",
        "_window_start",
        "limit",
        "max_limit",
        "min_latency",
        "recent_latency",
    )

    def __init__(self, max_limit: int = DEFAULT_MAX_LIMIT) -> None:
        self.max_limit = max_limit
        self.limit = float(min(INITIAL_LIMIT, max_limit))
        self.min_latency = math.inf
        self.recent_latency = math.nan  # the last window's mean latency, until the first: NaN
        self._window_start = -math.inf  # calls admitted before this were admitted by an old limit
        self._since_probe = 0
        self._open_window()

    def _open_window(self) -> None:
        self._count = 0
        self._total = 0.0
        self._fastest = math.inf
        self._max_in_flight = 0
        self._failed = False

    @property
    def current(self) -> int:
        """The limit in whole calls."""
        return int(self.limit)

    def update(self, latency: float, failed: bool, in_flight: int, now: float) -> int:
        """Take a call that ended at `now` (`in_flight` counts it too); the limit in whole calls."""
        if now - latency < self._window_start:
            return int(self.limit)  # admitted before the last decision: evidence about an old limit
        self._count += 1
        if in_flight > self._max_in_flight:
            self._max_in_flight = in_flight
        if failed:
            self._failed = True
        else:
            self._total += latency
            if latency < self._fastest:
                self._fastest = latency
        if self._count >= max(WINDOW_MIN_SAMPLES, self._max_in_flight):
            self._decide()
            self._window_start = now
            self._open_window()
        return int(self.limit)

    def _decide(self) -> None:
        """Move the limit by what the window closing now saw."""
        limit = self.limit
        fastest = self._fastest
        self._since_probe += self._count
        if self._since_probe >= PROBE_EVERY and fastest < math.inf:
            self._since_probe = 0
            self.min_latency = fastest  # measured afresh from here
        elif fastest < self.min_latency:
            self.min_latency = fastest
        if self._failed:
            self.limit = max(float(MIN_LIMIT), limit * BACKOFF)
            return
        recent = self._total / self._count  # no call failed: all are successes
        self.recent_latency = recent
        if 2 * self._max_in_flight < limit or recent <= 0.0:
            return  # the caller, not the backend, limited concurrency: no evidence
        queue = limit * (1.0 - self.min_latency / recent)
        step = _log10(limit)
        if queue <= step:
            limit += BETA * step  # no queue: the knee is further up
        elif queue < ALPHA * step:
            limit += step
        elif queue > BETA * step:
            limit -= step
        self.limit = max(float(MIN_LIMIT), min(float(self.max_limit), limit))
