"""Sliding windows of call outcomes with O(1) aggregates: count-based and time-based."""

from __future__ import annotations

import math
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
    """The last `size` calls, in a ring buffer; aggregates are adjusted on every add."""

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
        # One small int per call: bit 0 = failed, bit 1 = slow. Unused slots hold 0 and 0.0,
        # so evicting them subtracts nothing.
        self._codes = bytearray(size)
        self._durations = [0.0] * size
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.duration_sum = 0.0
        self.quick_until = math.inf

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one call, evicting the oldest when full."""
        index = self._next
        code = self._codes[index]
        self.failures += failed - (code & 1)
        self.slow += slow - (code >> 1)
        self.duration_sum += duration - self._durations[index]
        self._codes[index] = failed | (slow << 1)
        self._durations[index] = duration
        if self.calls < self._size:
            self.calls += 1
        index += 1
        self._next = 0 if index == self._size else index

    def add_successes(self, durations: list[float]) -> None:
        """Record a batch of plain successes with slice operations, oldest first."""
        size = self._size
        if len(durations) > size:
            durations = durations[-size:]  # the earlier ones would be evicted by the later
        self.calls = min(size, self.calls + len(durations))
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
            self._durations[start:stop] = chunk
            start = 0 if stop == size else stop
        self._next = start

    def expire(self, now: float) -> None:
        """Count windows never expire by time."""


class TimeWindow:
    """The last `size` seconds, in one-second buckets tagged with their epoch second.

    Buckets are cleared lazily as time moves forward, so an add costs O(1) amortised and an
    idle gap longer than the window resets the aggregates in O(1).
    """

    __slots__ = (
        "_calls",
        "_durations",
        "_epochs",
        "_failures",
        "_head",
        "_size",
        "_slow",
        "calls",
        "duration_sum",
        "failures",
        "quick_until",
        "slow",
    )

    def __init__(self, size: int, now: float) -> None:
        self._size = size
        self._epochs = [-size - 1] * size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._durations = [0.0] * size
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
        size = self._size
        if epoch - head >= size:
            # Everything in the buckets is older than the window; their tags keep them from
            # being subtracted again when their slots are reused.
            self.calls = self.failures = self.slow = 0
            self.duration_sum = 0.0
        else:
            for step in range(head + 1, epoch + 1):
                index = step % size
                if self._epochs[index] == step - size:
                    self.calls -= self._calls[index]
                    self.failures -= self._failures[index]
                    self.slow -= self._slow[index]
                    self.duration_sum -= self._durations[index]
        self._head = epoch
        self.quick_until = epoch + 1.0

    def _head_bucket(self) -> int:
        """The index of the newest bucket, tagged with the head's epoch."""
        epoch = self._head
        index = epoch % self._size
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._calls[index] = 0
            self._failures[index] = 0
            self._slow[index] = 0
            self._durations[index] = 0.0
        return index

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one call in the bucket for `now` (a late report goes in the newest bucket)."""
        self.expire(now)
        index = self._head_bucket()
        self._calls[index] += 1
        self._failures[index] += failed
        self._slow[index] += slow
        self._durations[index] += duration
        self.calls += 1
        self.failures += failed
        self.slow += slow
        self.duration_sum += duration

    def add_successes(self, durations: list[float]) -> None:
        """Record a batch of plain successes logged while the head was current."""
        index = self._head_bucket()
        total = sum(durations)
        self._calls[index] += len(durations)
        self._durations[index] += total
        self.calls += len(durations)
        self.duration_sum += total
