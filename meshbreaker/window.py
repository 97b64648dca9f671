"""Sliding windows of call outcomes with O(1) aggregates: count-based and time-based."""

from __future__ import annotations

import math
from typing import Protocol


class Window(Protocol):
    """What the breaker needs from a window: O(1) adds and running aggregates."""

    failures: int
    slow: int

    @property
    def calls(self) -> int:
        """Calls in the window."""

    @property
    def duration_sum(self) -> float:
        """Total duration of the calls in the window."""

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one finished call."""

    def add_success(self, duration: float, now: float) -> None:
        """Record a call that neither failed nor was slow."""

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
        "slow",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        # One small int per call: bit 0 = failed, bit 1 = slow.
        self._codes = bytearray(size)
        self._durations = [0.0] * size
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.duration_sum = 0.0

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one call, evicting the oldest when full."""
        index = self._next
        if self.calls == self._size:
            code = self._codes[index]
            self.failures -= code & 1
            self.slow -= code >> 1
            self.duration_sum -= self._durations[index]
        else:
            self.calls += 1
        self._codes[index] = failed | (slow << 1)
        self._durations[index] = duration
        self.failures += failed
        self.slow += slow
        self.duration_sum += duration
        index += 1
        self._next = 0 if index == self._size else index

    def add_success(self, duration: float, now: float) -> None:
        """add() for a call that neither failed nor was slow: the hot path, kept short."""
        index = self._next
        if self.calls == self._size:
            code = self._codes[index]
            if code:
                self.failures -= code & 1
                self.slow -= code >> 1
                self._codes[index] = 0
            self.duration_sum += duration - self._durations[index]
        else:
            self.calls += 1
            self.duration_sum += duration
        self._durations[index] = duration
        index += 1
        self._next = 0 if index == self._size else index

    def expire(self, now: float) -> None:
        """Count windows never expire by time."""


class TimeWindow:
    """The last `size` seconds, in one-second buckets tagged with their epoch second.

    Buckets are cleared lazily as time moves forward, so an add costs O(1) amortised
    and an idle gap longer than the window resets the aggregates in O(1). Quick successes
    in the newest second only bump two counters; they are settled into that second's
    bucket when anything else touches the window.
    """

    __slots__ = (
        "_calls",
        "_durations",
        "_epochs",
        "_failures",
        "_head",
        "_hot_index",
        "_hot_until",
        "_quick",
        "_quick_duration",
        "_settled_calls",
        "_settled_duration",
        "_size",
        "_slow",
        "failures",
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
        # add_success() may count into bucket _hot_index until _hot_until: set by add() once
        # that bucket is tagged with the newest epoch, cleared when the head moves.
        self._hot_index = 0
        self._hot_until = -math.inf
        self._quick = 0
        self._quick_duration = 0.0
        self._settled_calls = 0
        self._settled_duration = 0.0
        self.failures = 0
        self.slow = 0

    @property
    def calls(self) -> int:
        """Calls in the window."""
        return self._settled_calls + self._quick

    @property
    def duration_sum(self) -> float:
        """Total duration of the calls in the window."""
        return self._settled_duration + self._quick_duration

    def _settle(self) -> None:
        """Move the quick successes into the newest bucket and the aggregates."""
        quick, duration = self._quick, self._quick_duration
        index = self._hot_index
        self._calls[index] += quick
        self._durations[index] += duration
        self._settled_calls += quick
        self._settled_duration += duration
        self._quick = 0
        self._quick_duration = 0.0

    def expire(self, now: float) -> None:
        """Move the head to `now`, dropping buckets older than the window."""
        epoch = int(now)
        head = self._head
        if epoch <= head:
            return
        if self._quick:
            self._settle()
        size = self._size
        if epoch - head >= size:
            # Everything in the buckets is older than the window; their tags keep them from
            # being subtracted again when their slots are reused.
            self._settled_calls = self.failures = self.slow = 0
            self._settled_duration = 0.0
        else:
            for step in range(head + 1, epoch + 1):
                index = step % size
                if self._epochs[index] == step - size:
                    self._settled_calls -= self._calls[index]
                    self.failures -= self._failures[index]
                    self.slow -= self._slow[index]
                    self._settled_duration -= self._durations[index]
        self._head = epoch
        self._hot_until = -math.inf

    def add_success(self, duration: float, now: float) -> None:
        """add() for a call that neither failed nor was slow: the hot path, kept short."""
        if now >= self._hot_until:
            self.add(False, False, duration, now)
            return
        self._quick += 1
        self._quick_duration += duration

    def add(self, failed: bool, slow: bool, duration: float, now: float) -> None:
        """Record one call in the bucket for `now`."""
        epoch = int(now)
        if epoch > self._head:
            self.expire(now)
        else:
            if self._quick:
                self._settle()
            if epoch < self._head:
                epoch = self._head  # a late report is counted in the newest bucket, never lost
        index = epoch % self._size
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._calls[index] = 0
            self._failures[index] = 0
            self._slow[index] = 0
            self._durations[index] = 0.0
        self._hot_index = index
        self._hot_until = epoch + 1.0
        self._calls[index] += 1
        self._failures[index] += failed
        self._slow[index] += slow
        self._durations[index] += duration
        self._settled_calls += 1
        self.failures += failed
        self.slow += slow
        self._settled_duration += duration
