"""The agent's side of expiring overrides and fleet decisions, off the call path.

An override that expires ends at the same moment on every instance, with or without a control
plane: the agent knows the expiry (a unix time in the policy) and resolves its policies again
then, which drops it. A fleet decision that names this instance among its probers is not an
override here: the instance's own breakers of that method open until the decision's
`open_until` and then probe as usual, once per open period.
"""

from __future__ import annotations

from collections.abc import Callable

from meshbreaker._names import split_breaker_name
from meshbreaker.control.convert import FleetSpec
from meshbreaker.control.layers import ResolvedPolicies
from meshbreaker.registry import BreakerRegistry


class OverrideClock:
    """When the policies in force must be resolved again, and the fleet probes they ask for."""

    def __init__(self, registry: BreakerRegistry, wall_clock: Callable[[], float]) -> None:
        self._registry = registry
        self._wall_clock = wall_clock
        self.next_expiry: float | None = None
        # Selector -> (decided_at, period) of the open period already started here.
        self._probing: dict[str, tuple[float, int]] = {}

    def due(self) -> bool:
        """True once an override in force has expired (resolve again)."""
        expiry = self.next_expiry
        return expiry is not None and self._wall_clock() >= expiry

    def wait(self, longest: float) -> float:
        """Seconds to sleep before the next check: until the next expiry, at most `longest`.

        Capped because the wall clock may jump (NTP, a test's fake clock).
        """
        expiry = self.next_expiry
        if expiry is None:
            return longest
        return min(longest, max(0.0, expiry - self._wall_clock()))

    def applied(self, resolved: ResolvedPolicies) -> None:
        """The registry now holds `resolved`: note the next expiry, start new probe periods."""
        self.next_expiry = resolved.next_expiry
        for selector in [key for key in self._probing if key not in resolved.probes]:
            del self._probing[selector]
        for selector, fleet in resolved.probes.items():
            started = (fleet.decided_at, fleet.period)
            if self._probing.get(selector) == started:
                continue  # this period is under way (a reconnect resends the same decision)
            self._probing[selector] = started
            self._open_until(selector, fleet)

    def _open_until(self, selector: str, fleet: FleetSpec) -> None:
        remaining = fleet.open_until - self._wall_clock()
        breakers = [
            breaker for breaker in self._registry if split_breaker_name(breaker.name)[2] == selector
        ]
        if not breakers:
            breakers = [self._registry.get(selector)]
        for breaker in breakers:
            if remaining > 0:
                breaker.open_for(remaining)
            else:
                breaker.transition_to_half_open()
