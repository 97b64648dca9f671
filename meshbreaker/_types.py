"""The engine's vocabulary: State, Mode and WindowType (imported by config, errors and breaker)."""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    """A breaker's state; FORCED_* are operator overrides."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    FORCED_OPEN = "FORCED_OPEN"
    FORCED_CLOSED = "FORCED_CLOSED"


class Mode(str, enum.Enum):
    """ENFORCE rejects calls when open; SHADOW only reports what it would have done."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class WindowType(str, enum.Enum):
    """COUNT keeps the last `window_size` calls; TIME keeps the last `window_size` seconds."""

    COUNT = "count"
    TIME = "time"


class Outcome(enum.IntEnum):
    """How a finished call counts: success, failure, or not at all."""

    SUCCESS = 0
    FAILURE = 1
    IGNORED = 2
