"""Sliding windows of call outcomes with O(1) aggregates: count-based and time-based.

Both hold memory for what they have recorded, never for what their size allows: a COUNT
window of a million calls that has seen ten holds ten, a TIME window of an hour holds only the
seconds that saw calls.
"""

from __future__ import annotations

import math
from array import array
from typing import Protocol


class Window(Protocol):
    """What the breaker needs from a window: O(1) adds and running aggregates."""

    calls: int
    failures: int
    slow: int
    duration_sum: float
    # Quick successes (see add_successes) may be logged for this window while now < quick_until.
    quick_until: float

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one finished call."""

    def add_successes(self, durations: list[float]) -> None:
        """Record calls that neither failed nor were slow, logged since the last window call."""

    def expire(self, now: float) -> None:
        """Drop what has fallen out of the window by `now`."""


class CountWindow:
    """The last `size` calls: a ring buffer that grows to `size` as calls arrive."""

    __slots__ = (
        "_codes",
        "_durations",
        "_next",
        "_size",
        "calls",
        "duration_sum",
        "failures",
        "quick_until",
        "slow",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        # One byte per call: bit 0 = failed, bit 1 = slow; one double per call for its duration.
        # While not full, calls == len(_codes) and new calls are appended; once full, _next is
        # the oldest call's slot, overwritten by the next one.
        self._codes = bytearray()
        self._durations = array("d")
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.duration_sum = 0.0
        self.quick_until = math.inf

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one call, evicting the oldest when full."""
        self.failures += failed
        self.slow += slow
        self.duration_sum += duration
        code = failed | (slow << 1)
        if self.calls < self._size:
            self._codes.append(code)
            self._durations.append(duration)
            self.calls += 1
            return
        index = self._next
        old = self._codes[index]
        self.failures -= old & 1
        self.slow -= old >> 1
        self.duration_sum -= self._durations[index]
        self._codes[index] = code
        self._durations[index] = duration
        index += 1
        self._next = 0 if index == self._size else index

    def add_successes(self, durations: list[float]) -> None:
        """Record a batch of plain successes with slice operations, oldest first."""
        size = self._size
        if len(durations) > size:
            durations = durations[-size:]  # the earlier ones would be evicted by the later
        room = size - self.calls
        if room > 0:
            grow, durations = durations[:room], durations[room:]
            self._codes.extend(bytes(len(grow)))
            self._durations.extend(grow)
            self.calls += len(grow)
            self.duration_sum += sum(grow)
        start = self._next
        while durations:
            stop = min(size, start + len(durations))
            chunk, durations = durations[: stop - start], durations[stop - start :]
            codes = self._codes[start:stop]
            if codes.count(0) != len(codes):
                both = codes.count(3)
                self.failures -= codes.count(1) + both
                self.slow -= codes.count(2) + both
                self._codes[start:stop] = bytes(len(codes))
            self.duration_sum += sum(chunk) - sum(self._durations[start:stop])
            self._durations[start:stop] = array("d", chunk)
            start = 0 if stop == size else stop
        self._next = start

    def expire(self, now: float) -> None:
        """Count windows never expire by time."""


class TimeWindow:
    """The last `size` seconds, in one-second buckets keyed by their epoch second.

    Only seconds that saw calls have a bucket; buckets older than the window are dropped as
    time moves forward, so an add costs O(1) amortised and an idle gap longer than the window
    empties it in O(1).
    """

    __slots__ = (
        "_buckets",
        "_head",
        "_size",
        "calls",
        "duration_sum",
        "failures",
        "quick_until",
        "slow",
    )

    def __init__(self, size: int, now: float) -> None:
        self._size = size
        # epoch second -> [calls, failures, slow, duration sum]
        self._buckets: dict[int, list[float]] = {}
        self._head = int(now)
        self.quick_until = self._head + 1.0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.duration_sum = 0.0

    def expire(self, now: float) -> None:
        """Move the head to `now`, dropping buckets older than the window."""
        epoch = int(now)
        head = self._head
        if epoch <= head:
            return
        buckets = self._buckets
        if epoch - head >= self._size or not buckets:
            buckets.clear()  # everything held is older than the window
            self.calls = self.failures = self.slow = 0
            self.duration_sum = 0.0
        else:
            size = self._size
            for step in range(head + 1, epoch + 1):
                bucket = buckets.pop(step - size, None)
                if bucket is not None:
                    calls, failures, slow, durations = bucket
                    self.calls -= int(calls)
                    self.failures -= int(failures)
                    self.slow -= int(slow)
                    self.duration_sum -= durations
        self._head = epoch
        self.quick_until = epoch + 1.0

    def _head_bucket(self) -> list[float]:
        """The bucket of the head's second, made on first use."""
        bucket = self._buckets.get(self._head)
        if bucket is None:
            bucket = self._buckets[self._head] = [0, 0, 0, 0.0]
        return bucket

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one call in the bucket for `now` (a late report goes in the newest bucket)."""
        self.expire(now)
        bucket = self._head_bucket()
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        bucket[3] += duration
        self.calls += 1
        self.failures += failed
        self.slow += slow
        self.duration_sum += duration

    def add_successes(self, durations: list[float]) -> None:
        """Record a batch of plain successes logged while the head was current."""
        bucket = self._head_bucket()
        total = sum(durations)
        bucket[0] += len(durations)
        bucket[3] += total
        self.calls += len(durations)
        self.duration_sum += total
