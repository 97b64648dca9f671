"""Test helpers for users and for meshbreaker's own suite: a manually advanced clock."""

from __future__ import annotations

import threading


class FakeClock:
    """A monotonic clock that moves only when told to; pass it as `clock=`."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (never backward)."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backward")
        with self._lock:
            self._now += seconds
