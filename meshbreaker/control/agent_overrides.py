"""The agent's side of expiring overrides and fleet decisions, off the call path.

An override that expires ends at the same moment on every instance, with or without a control
plane: the agent knows the expiry (a unix time in the policy) and resolves its policies again
then, which drops it. A fleet decision that names this instance among its probers is not an
override here: the instance's own breakers of that method open until the decision's
`open_until` and then probe as usual, once per open period: a probe that fails holds them OPEN
(until the decision moves on, or expires), so a slow decision cannot let this instance probe a
second time in the fleet's next period; when the decision ends they close with the fleet.
"""

from __future__ import annotations

from collections.abc import Callable

from meshbreaker._names import split_breaker_name
from meshbreaker.breaker import CircuitBreaker
from meshbreaker.config import State
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
        # Selector -> when the decision this instance probes for expires (unix seconds).
        self._hold_until: dict[str, float] = {}

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

    def applying(self, resolved: ResolvedPolicies) -> None:
        """`resolved` goes to the registry next: note the next expiry, start new probe periods."""
        self.next_expiry = resolved.next_expiry
        for selector in [key for key in self._probing if key not in resolved.probes]:
            del self._probing[selector]
            self._hold_until.pop(selector, None)
            if selector not in resolved.overrides:
                # The decision ended (closed for the fleet, or expired): close with the rest.
                for breaker in self._breakers(selector):
                    breaker.reset()
        for selector, fleet in resolved.probes.items():
            started = (fleet.decided_at, fleet.period)
            self._hold_until[selector] = resolved.expiries[selector]
            if self._probing.get(selector) == started:
                continue  # this period is under way (a reconnect resends the same decision)
            self._probing[selector] = started
            remaining = fleet.open_until - self._wall_clock()
            for breaker in self._breakers(selector):
                if remaining > 0:
                    breaker.open_for(remaining)
                else:
                    breaker.transition_to_half_open()

    def transition(self, name: str, old: State, new: State) -> None:
        """A breaker moved (the caller's thread): a failed probe holds it OPEN until told."""
        if old is not State.HALF_OPEN or new is not State.OPEN or not self._hold_until:
            return
        until = self._hold_until.get(split_breaker_name(name)[2])
        if until is not None:
            remaining = until - self._wall_clock()
            if remaining > 0:
                self._registry.get(name).open_for(remaining)

    def _breakers(self, selector: str) -> list[CircuitBreaker]:
        found = [
            breaker for breaker in self._registry if split_breaker_name(breaker.name)[2] == selector
        ]
        return found or [self._registry.get(selector)]
