"""Backoff: how long a breaker stays open after its n-th opening in a row."""

from __future__ import annotations

from dataclasses import dataclass

from meshbreaker.config import BreakerConfig


@dataclass(frozen=True, slots=True)
class Backoff:
    """Open durations that grow by `multiplier` per opening in a row, jittered, then capped."""

    base: float
    multiplier: float
    cap: float
    jitter: float

    @classmethod
    def of(cls, config: BreakerConfig) -> Backoff:
        """The backoff a config describes."""
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
        try:
            grown = min(self.base * self.multiplier**attempt, self.cap)
        except OverflowError:
            grown = self.cap
        return min(grown * (1.0 + self.jitter * (2.0 * spread - 1.0)), self.cap)
