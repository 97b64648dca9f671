"""AdaptiveThrottle: client-side adaptive throttling (Google SRE book, "Handling Overload").

Each call is refused locally with probability max(0, (requests - k * accepts) / (requests + 1)),
where `requests` and `accepts` are counted over a trailing window of whole seconds. While the
backend accepts calls, requests stay below k * accepts and nothing is refused; when it starts
failing, the client sheds the excess itself instead of sending it to a backend that would only
reject it, and every refused call still counts as a request, so the shedding lasts until the
backend accepts again.

An attempt counts as a request when it is decided: at once when the throttle refuses it, at its
outcome when it ran. Counting a call that is still in flight as a request the backend did not
accept would throttle every cold start (the third of three concurrent first calls would be refused
with probability 2/3 at k = 2) and every burst longer than a round trip; its outcome, which
comes one latency later, is the evidence the formula wants. Ignored outcomes (the caller
cancelled) are no evidence and count as nothing.

Not thread-safe on its own: the CircuitBreaker that owns it calls it under its lock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

MAX_WINDOW = 3600.0


class AdaptiveThrottle:
    """Requests and accepts over the last `window` seconds, in one-second buckets (lock held)."""

    __slots__ = ("_buckets", "_head", "_rng", "_seconds", "accepts", "k", "requests")

    def __init__(self, k: float, window: float, now: float, rng: Callable[[], float]) -> None:
        self.k = k
        # The window holds the current second and the ceil(window) - 1 before it.
        self._seconds = max(1, math.ceil(window))
        self._rng = rng
        # epoch second -> [requests, accepts]; only seconds that saw a decision have one.
        self._buckets: dict[int, list[int]] = {}
        self._head = int(now)
        self.requests = 0
        self.accepts = 0

    @property
    def next_second(self) -> float:
        """When the head second ends: the window's counts change by time only at that instant."""
        return self._head + 1.0

    def probability(self, now: float) -> float:
        """The chance a call is refused now: max(0, (requests - k*accepts) / (requests + 1))."""
        self.expire(now)
        excess = self.requests - self.k * self.accepts
        return excess / (self.requests + 1) if excess > 0 else 0.0

    def quiet(self, now: float) -> bool:
        """Whether no call can be refused now: requests <= k * accepts."""
        self.expire(now)
        return self.requests <= self.k * self.accepts

    def admit(self, now: float, *, count: bool = True) -> bool:
        """Decide one call: False with the probability above.

        A refused call counts as a request unless `count` is false (shadow mode: the call runs,
        and counts at its outcome).
        """
        chance = self.probability(now)
        if chance <= 0.0 or self._rng() >= chance:
            return True
        if count:
            self._head_bucket()[0] += 1
            self.requests += 1
        return False

    def record(self, accepted: bool, now: float) -> None:
        """Count a finished call as a request, and as an accept if the backend accepted it."""
        self.expire(now)
        bucket = self._head_bucket()
        bucket[0] += 1
        bucket[1] += accepted
        self.requests += 1
        self.accepts += accepted

    def record_accepts(self, count: int) -> None:
        """Count `count` accepted calls that ended in the head second (CircuitBreaker._settle)."""
        bucket = self._head_bucket()
        bucket[0] += count
        bucket[1] += count
        self.requests += count
        self.accepts += count

    def expire(self, now: float) -> None:
        """Move the head to `now`'s second, dropping seconds that left the window."""
        epoch = int(now)
        head = self._head
        if epoch <= head:
            return
        buckets = self._buckets
        if epoch - head >= self._seconds or not buckets:
            buckets.clear()
            self.requests = self.accepts = 0
        else:
            size = self._seconds
            for second in range(head + 1, epoch + 1):
                bucket = buckets.pop(second - size, None)
                if bucket is not None:
                    self.requests -= bucket[0]
                    self.accepts -= bucket[1]
        self._head = epoch

    def _head_bucket(self) -> list[int]:
        bucket = self._buckets.get(self._head)
        if bucket is None:
            bucket = self._buckets[self._head] = [0, 0]
        return bucket
