"""BreakerSnapshot and BreakerObservation: immutable records of a breaker at one instant."""

from __future__ import annotations

from dataclasses import dataclass

from meshbreaker._types import State
from meshbreaker.histogram import HistogramSnapshot


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """An immutable record of a breaker's state and counters at one instant."""

    name: str
    state: State
    total: int
    successful: int
    failed: int
    ignored: int
    slow: int
    rejected: int
    shadow_rejected: int
    failure_rate: float
    slow_call_rate: float
    window_calls: int
    mean_duration: float
    consecutive_failures: int
    minimum_calls: int  # the effective minimum: capped by a COUNT window's size
    state_since: float
    open_until: float | None
    times_opened: int
    half_open_in_flight: int
    half_open_successes: int
    throttled: int = 0  # refused by adaptive throttling (apart from `rejected`)
    throttle_probability: float = 0.0  # the chance a call is throttled now (0 when off)
    concurrency_limit: int | None = None  # calls in flight allowed now (adaptive or fixed)


@dataclass(frozen=True, slots=True)
class BreakerObservation:
    """A snapshot with the transition counts and duration histogram of the same instant."""

    snapshot: BreakerSnapshot
    transitions: dict[tuple[State, State], int]
    durations: HistogramSnapshot | None
