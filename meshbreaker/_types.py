"""The engine's vocabulary: State, Mode, WindowType, ConcurrencyLimit, Outcome."""

from __future__ import annotations

import enum


class _Named(str, enum.Enum):
    """An enum whose str() and format() are its value: logs read "OPEN", not "State.OPEN"."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


class State(_Named):
    """A breaker's state; FORCED_* are operator overrides."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    FORCED_OPEN = "FORCED_OPEN"
    FORCED_CLOSED = "FORCED_CLOSED"


class Mode(_Named):
    """ENFORCE rejects calls when open; SHADOW only reports what it would have done."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class WindowType(_Named):
    """COUNT keeps the last `window_size` calls; TIME keeps the last `window_size` seconds."""

    COUNT = "count"
    TIME = "time"


class ConcurrencyLimit(_Named):
    """FIXED: max_concurrent_calls is the bulkhead; ADAPTIVE: a limit that follows latency."""

    FIXED = "fixed"
    ADAPTIVE = "adaptive"


class Outcome(enum.IntEnum):
    """How a finished call counts: success, failure, or not at all."""

    SUCCESS = 0
    FAILURE = 1
    IGNORED = 2
