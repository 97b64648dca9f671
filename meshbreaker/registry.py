"""BreakerRegistry: breakers by name, with policies resolved method > service > default."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from meshbreaker._names import (
    OVERFLOW_BREAKER_NAME,
    selectors_for,
    service_breaker_name,
    validate_selector,
)
from meshbreaker._names import (
    split_breaker_name as split_breaker_name,  # re-exported for control.server
)
from meshbreaker.breaker import BreakerSnapshot, CircuitBreaker, Clock, StateListener
from meshbreaker.config import BreakerConfig, State
from meshbreaker.errors import ConfigError
from meshbreaker.histogram import DEFAULT_BUCKETS, check_buckets

logger = logging.getLogger(__name__)

_OVERRIDES = (State.FORCED_OPEN, State.FORCED_CLOSED)
DEFAULT_MAX_BREAKERS = 10_000


class BreakerRegistry:
    """Breakers by name, created on first use with the most specific policy that matches.

    Never unbounded: past `max_breakers` breakers, a new gRPC method name gets the breaker its
    service's methods share ("/pkg.Service/", configured by the service's policy), and any other
    name one shared "<overflow>" breaker; service breakers themselves stop at another
    `max_breakers`. A warning is logged once and `overflowed_names` counts the names that
    overflowed. Nothing on the call path raises for it.
    """

    def __init__(
        self,
        default: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        max_breakers: int = DEFAULT_MAX_BREAKERS,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if default is not None and not isinstance(default, BreakerConfig):
            raise ConfigError("default", f"must be a BreakerConfig, got {type(default).__name__}")
        if isinstance(max_breakers, bool) or not isinstance(max_breakers, int) or max_breakers < 1:
            raise ConfigError("max_breakers", f"must be an integer >= 1, got {max_breakers!r}")
        self._max_breakers = max_breakers
        # Names that overflowed -> the shared breaker they use; at most max_breakers of them.
        self._overflowed: dict[str, CircuitBreaker] = {}
        self._overflow_count = 0
        self._default = default or BreakerConfig()
        self._clock = clock
        self._rng = rng  # open-period jitter and throttling draws: tests pass a fixed one
        self._lock = threading.RLock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._policies: dict[str, BreakerConfig] = {}
        self._overrides: dict[str, State] = {}
        self._applied_overrides: dict[str, State | None] = {}
        self._listeners: list[StateListener] = []
        self._duration_buckets: tuple[float, ...] | None = None

    @property
    def default(self) -> BreakerConfig:
        """The configuration for breakers no policy matches."""
        return self._default

    @property
    def max_breakers(self) -> int:
        """How many breakers of their own names may have before they share (see the class)."""
        return self._max_breakers

    @property
    def overflowed_names(self) -> int:
        """Names that got a shared breaker because the registry was full.

        Each is counted once while at most max_breakers of them are remembered; past that,
        each lookup of a forgotten one counts again.
        """
        return self._overflow_count

    def get(self, name: str) -> CircuitBreaker:
        """The breaker for `name`, created with its resolved config on first use."""
        breaker = self._breakers.get(name) or self._overflowed.get(name)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(name) or self._overflowed.get(name)
            if breaker is not None:
                return breaker
            if len(self._breakers) < self._max_breakers:
                return self._create(name)
            return self._overflow(name)

    def _create(self, name: str) -> CircuitBreaker:
        """Make and keep the breaker called `name` (lock held)."""
        breaker = CircuitBreaker(name, self.resolve(name), clock=self._clock, rng=self._rng)
        breaker.on_state_change(self._dispatch_state_change)
        if self._duration_buckets is not None:
            breaker.track_durations(self._duration_buckets)
        self._apply_override(breaker)
        self._breakers[name] = breaker
        return breaker

    def _overflow(self, name: str) -> CircuitBreaker:
        """The shared breaker for `name` in a full registry (lock held)."""
        if self._overflow_count == 0:
            logger.warning(
                "meshbreaker: the registry holds max_breakers=%d breakers; new method names "
                "now share their service's breaker (first: %r)",
                self._max_breakers,
                name[:200],
            )
        self._overflow_count += 1
        shared_name = service_breaker_name(name)
        shared = self._breakers.get(shared_name)
        if shared is None:
            if len(self._breakers) >= 2 * self._max_breakers:
                shared_name = OVERFLOW_BREAKER_NAME
                shared = self._breakers.get(shared_name)
            if shared is None:
                shared = self._create(shared_name)
        if len(self._overflowed) < self._max_breakers:
            self._overflowed[name] = shared
        return shared

    def resolve(self, name: str) -> BreakerConfig:
        """The config that applies to breaker `name`: method > service > default."""
        policies = self._policies
        for selector in selectors_for(name):
            config = policies.get(selector)
            if config is not None:
                return config
        return self._default

    def _resolve_override(self, name: str) -> State | None:
        for selector in selectors_for(name):
            override = self._overrides.get(selector)
            if override is not None:
                return override
        return None

    def policies(self) -> dict[str, BreakerConfig]:
        """A copy of the policies by selector."""
        return dict(self._policies)

    def overrides(self) -> dict[str, State]:
        """A copy of the forced states by selector."""
        return dict(self._overrides)

    def set_policy(self, selector: str, config: BreakerConfig) -> None:
        """Set the config for a service ("pkg.Svc") or a method ("/pkg.Svc/Method"), live."""
        validate_selector(selector)
        _check_config(selector, config)
        with self._lock:
            self._policies[selector] = config
            self._reconcile()

    def remove_policy(self, selector: str) -> None:
        """Drop the policy for `selector`; matching breakers fall back to the next one."""
        with self._lock:
            if self._policies.pop(selector, None) is not None:
                self._reconcile()

    def set_override(self, selector: str, state: State | None) -> None:
        """Force breakers matching `selector` open or closed; None returns them to automatic."""
        validate_selector(selector)
        with self._lock:
            if state is None:
                self._overrides.pop(selector, None)
            else:
                _check_override(selector, state)
                self._overrides[selector] = state
            self._reconcile()

    def replace_policies(
        self,
        policies: Mapping[str, BreakerConfig],
        *,
        default: BreakerConfig | None = None,
        overrides: Mapping[str, State] | None = None,
    ) -> None:
        """Swap every policy and override at once, all or nothing.

        `default` replaces the default config when given; None keeps the current one.
        """
        for selector, config in policies.items():
            validate_selector(selector)
            _check_config(selector, config)
        for selector, state in (overrides or {}).items():
            validate_selector(selector)
            _check_override(selector, state)
        if default is not None:
            _check_config("default", default)
        with self._lock:
            self._policies = dict(policies)
            self._overrides = dict(overrides or {})
            if default is not None:
                self._default = default
            self._reconcile()

    def _reconcile(self) -> None:
        """Bring every existing breaker in line with the policies (lock held)."""
        for breaker in self._breakers.values():
            config = self.resolve(breaker.name)
            if config != breaker.config:
                breaker.update_config(config)
            self._apply_override(breaker)

    def _apply_override(self, breaker: CircuitBreaker) -> None:
        # Only act when the registry's wish changed, so a breaker forced by hand stays forced
        # until a policy says otherwise.
        wanted = self._resolve_override(breaker.name)
        if self._applied_overrides.get(breaker.name) == wanted:
            return
        self._applied_overrides[breaker.name] = wanted
        if wanted is State.FORCED_OPEN:
            breaker.force_open()
        elif wanted is State.FORCED_CLOSED:
            breaker.force_closed()
        else:
            breaker.clear_override()

    def track_durations(self, buckets: Sequence[float] | None = DEFAULT_BUCKETS) -> None:
        """Keep a duration histogram in every breaker, present and future; None turns it off."""
        bounds = None if buckets is None else check_buckets(buckets)
        with self._lock:
            self._duration_buckets = bounds
            for breaker in self._breakers.values():
                breaker.track_durations(bounds)

    @property
    def duration_buckets(self) -> tuple[float, ...] | None:
        """The histogram bounds every breaker keeps, or None when durations are not tracked."""
        return self._duration_buckets

    def remove(self, name: str) -> None:
        """Forget the breaker called `name` (the next get() makes a fresh one)."""
        with self._lock:
            self._breakers.pop(name, None)
            self._overflowed.pop(name, None)
            self._applied_overrides.pop(name, None)
            for alias in [key for key, shared in self._overflowed.items() if shared.name == name]:
                del self._overflowed[alias]

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(name, old, new)` on any breaker's transition; returns an unsubscribe."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = [item for item in self._listeners if item is not listener]

        return unsubscribe

    def _dispatch_state_change(self, name: str, old: State, new: State) -> None:
        for listener in self._listeners:
            try:
                listener(name, old, new)
            except Exception:
                logger.exception("registry state listener raised for %r", name)

    def snapshots(self) -> list[BreakerSnapshot]:
        """A snapshot of every breaker, sorted by name."""
        return [breaker.snapshot() for breaker in sorted(self, key=lambda b: b.name)]

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __bool__(self) -> bool:
        # A registry is a thing, not a collection to test for emptiness: a fresh one is truthy,
        # so `if registry:` cannot silently mean "no breakers yet".
        return True

    def __contains__(self, name: object) -> bool:
        return name in self._breakers


def _check_config(selector: str, config: object) -> None:
    if not isinstance(config, BreakerConfig):
        raise ConfigError(selector, f"policy must be a BreakerConfig, got {type(config).__name__}")


def _check_override(selector: str, state: object) -> None:
    if state not in _OVERRIDES:
        raise ConfigError(selector, f"override must be FORCED_OPEN or FORCED_CLOSED, got {state!r}")
