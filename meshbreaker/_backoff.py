"""Backoffs: capped exponential growth, for reconnects (Backoff) and open periods (OpenBackoff)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports retry, which imports grow from here
    from meshbreaker.config import BreakerConfig

# 2**64 times any start is past every cap anyone sets; bounding the exponent keeps a days-long
# outage from overflowing the float.
_MAX_EXPONENT = 64


def grow(initial: float, multiplier: float, maximum: float, attempt: int) -> float:
    """initial * multiplier**attempt, capped at `maximum`."""
    return min(maximum, initial * multiplier ** min(attempt, _MAX_EXPONENT))


class Backoff:
    """Capped exponential backoff with full jitter: each delay is uniform in [0, ceiling]."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 10.0,
        multiplier: float = 2.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum or multiplier < 1.0:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next delay: initial * multiplier**attempt, capped."""
        return grow(self.initial, self.multiplier, self.maximum, self.attempt)

    def next_delay(self) -> float:
        """A delay drawn uniformly from [0, ceiling]; advances the attempt counter."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first attempt, after a connection that worked."""
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class OpenBackoff:
    """A breaker's open periods: grown per opening in a row, spread by ± jitter, then capped."""

    base: float
    multiplier: float
    cap: float
    jitter: float

    @classmethod
    def of(cls, config: BreakerConfig) -> OpenBackoff:
        """The open periods a config describes."""
        return cls(
            config.open_duration,
            config.backoff_multiplier,
            config.open_duration_max,
            config.open_jitter,
        )

    def duration(self, attempt: int, spread: float) -> float:
        """The open period after `attempt` earlier openings in a row; `spread` is in [0, 1).

        The growth stops at `cap`, the jitter spreads that, and the cap applies last, so `cap`
        is a hard limit and a fleet that has reached it still spreads its probes (downward).
        """
        grown = grow(self.base, self.multiplier, self.cap, attempt)
        return min(grown * (1.0 + self.jitter * (2.0 * spread - 1.0)), self.cap)
