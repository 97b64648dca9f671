"""CircuitBreaker: the public breaker; its state machine is BreakerMachine and BreakerAdmission.

Module map: _machine (fields, config, transitions), _admission (the locked _before()/_after()
pair), _permit (Permit), _quick (the lock-free successes); this module runs calls and holds the
operator controls, observation and listener subscriptions.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from meshbreaker._admission import BreakerAdmission
from meshbreaker._machine import (
    CLOSED,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    SUCCESS,
    UNTIL_CLEARED,
    Clock,
    ExceptionClassifier,
    Transition,
)
from meshbreaker._permit import Permit
from meshbreaker._types import Outcome, State
from meshbreaker.config import BreakerConfig
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.events import (
    CallResult,
    CallResultListener,
    EventKind,
    EventListener,
    StateListener,
)
from meshbreaker.histogram import DEFAULT_BUCKETS, DurationHistogram, HistogramSnapshot
from meshbreaker.snapshot import BreakerObservation, BreakerSnapshot
from meshbreaker.throttle import AdaptiveThrottle

# Re-exported: they were born here, and users import them from here.
__all__ = [
    "BreakerObservation",
    "BreakerSnapshot",
    "CallResult",
    "CircuitBreaker",
    "Clock",
    "ExceptionClassifier",
    "Outcome",
    "Permit",
    "ResultClassifier",
    "StateListener",
]

T = TypeVar("T")
ResultClassifier = Callable[[Any], bool]


class CircuitBreaker(BreakerAdmission):
    """A circuit breaker for one dependency (in meshbreaker's gRPC adapters: one method).

    Thread-safe, in gobreaker's shape: every decision is made in `_before(now)` (admission) or
    `_after(generation, outcome, duration, now)` (an outcome), each under one short lock, and
    transitions that time makes due happen lazily there. Two paths take no lock: a call
    admitted in CLOSED without a bulkhead (it only reads `_free_generation`), and a success
    that cannot change anything (QuickSuccesses, see there). A rejection while OPEN reads only
    `_reject_until`. Listeners run after the lock is released, in the calling thread.
    """

    __slots__ = ()

    def update_config(self, config: BreakerConfig) -> None:
        """Apply `config` live.

        When the window type and size are unchanged, the window's contents and the
        consecutive-failure count are kept. Otherwise the old evidence was gathered under a
        different definition, so the window starts empty and the consecutive count at zero.
        The state, its generation and the counters are kept either way. An OPEN breaker's
        open period is recomputed from the moment it opened with the new durations (shorter or
        longer), so a policy change reaches it at once (an open_for() period is kept).
        Permits out keep the bulkhead slots they hold, whatever the new bulkhead.
        """
        with self._lock:
            now = self._clock()
            old = self._config
            self._settle()
            self._apply_config(config, now)
            if (old.window_type, old.window_size) != (config.window_type, config.window_size):
                self._set_window(now)
                self._consecutive = 0
            if self._state is OPEN and not self._manual_end:
                self._open_until = self._state_since + self._open_period()
            self._refresh(now)
            state = self._state
        self._emit_event(EventKind.CONFIG_UPDATED, state, now)

    # ----- listeners -----------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(name, old, new)` after each transition; returns an unsubscribe."""
        return self._subscribe("_state_listeners", listener)

    def on_call_result(self, listener: CallResultListener) -> Callable[[], None]:
        """Call `listener(CallResult)` after each finished call; returns an unsubscribe."""
        return self._subscribe("_result_listeners", listener)

    def on_event(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener(BreakerEvent)` on transitions, rejections, resets and new configs.

        Returns an unsubscribe. A listener costs nothing on a call that is admitted.
        """
        return self._subscribe("_event_listeners", listener)

    def _subscribe(self, attribute: str, listener: Callable[..., None]) -> Callable[[], None]:
        with self._lock:
            setattr(self, attribute, (*getattr(self, attribute), listener))
            self._settle()
            self._refresh(self._clock())  # result listeners close the quick path

        def unsubscribe() -> None:
            with self._lock:
                current: tuple[Callable[..., None], ...] = getattr(self, attribute)
                setattr(self, attribute, tuple(item for item in current if item is not listener))
                self._settle()
                self._refresh(self._clock())

        return unsubscribe

    # ----- running calls -------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` under the breaker; raises CallNotPermittedError if rejected."""
        generation = self._free_generation
        if generation is None:
            now = self._clock()
            reject_until = self._reject_until
            if now < reject_until and not self._event_listeners:
                # _before()'s lock-free rejection, inlined: bench/engine.py's "rejected while
                # OPEN" row ran 1.37x slower through the call (2026-12-01, old vs new interleaved).
                next(self._rejections)
                state = FORCED_OPEN if reject_until == UNTIL_CLEARED else OPEN
                raise CallNotPermittedError(self.name, state, reject_until - now)
            with self._before(now):  # Permit.__exit__ reports the outcome
                return fn(*args, **kwargs)
        clock = self._clock
        start = clock()
        if start >= self._free_until:
            with self._before(start):
                return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            now = clock()
            self._after(generation, self._classify(exc), now - start, now, False)
            raise
        now = clock()
        if not self._quick.log(generation, now - start, now):
            self._after(generation, SUCCESS, now - start, now, False)
        return result

    def call_checked(
        self, is_failure: ResultClassifier, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        """Like call(), and a result for which `is_failure(result)` is true counts as a failure.

        The result is still returned. `is_failure` comes first and is positional, so it can
        never collide with the keyword arguments of `fn`.
        """
        with self.acquire() as permit:
            result = fn(*args, **kwargs)
            if is_failure(result):
                permit.failure()
        return result

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await `fn(*args, **kwargs)` under the breaker; a cancelled call is ignored."""
        with self.acquire():
            return await fn(*args, **kwargs)

    async def call_async_checked(
        self,
        is_failure: ResultClassifier,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """call_async() with a result check, as call_checked() does."""
        with self.acquire() as permit:
            result = await fn(*args, **kwargs)
            if is_failure(result):
                permit.failure()
        return result

    def guard(self) -> Permit:
        """Guard a `with` block: an exception escaping it is classified, else it is a success."""
        return self.acquire()

    # ----- operator controls ---------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until clear_override() (shadow mode only counts them)."""
        self._set_override(FORCED_OPEN)

    def force_closed(self) -> None:
        """Permit every call and keep counting, but never trip, until clear_override()."""
        self._set_override(FORCED_CLOSED)

    def clear_override(self) -> None:
        """Back to automatic operation: CLOSED with a fresh window."""
        if self._override is not None:
            self._set_override(None)

    @property
    def override(self) -> State | None:
        """FORCED_OPEN, FORCED_CLOSED, or None when automatic."""
        return self._override

    def _set_override(self, override: State | None) -> None:
        with self._lock:
            self._override = override
            transition = self._enter(override or CLOSED, self._clock())
        self._emit(transition, None)

    def transition_to_half_open(self) -> None:
        """Let probes go now: HALF_OPEN, as if the open period had passed (clears an override)."""
        with self._lock:
            self._override = None
            transition = self._enter(HALF_OPEN, self._clock())
        self._emit(transition, None)

    def open_for(self, seconds: float) -> None:
        """OPEN for `seconds` from now (not the configured period), then probe as usual.

        Clears an override. A breaker not OPEN opens, and the opening counts toward the backoff
        of later openings. An OPEN breaker keeps its opening and only moves its end (to lengthen
        an open period only, as a server's Retry-After asks, use keep_open()).
        """
        _check_period(seconds, "seconds", positive=True)
        with self._lock:
            self._override = None
            now = self._clock()
            transition = None if self._state is OPEN else self._enter(OPEN, now)
            self._manual_end = True
            self._open_until = now + seconds
            self._refresh(now)
        self._emit(transition, None)

    def keep_open(self, seconds: float) -> bool:
        """Keep an OPEN breaker open at least `seconds` from now, at most open_duration_max.

        For a dependency's own word on when to come back (an HTTP Retry-After, a gRPC pushback).
        One locked step, so nothing can change the state between the check and the move: it
        only lengthens the current opening (no second opening, no extra backoff), and leaves a
        breaker alone that is not OPEN or whose open period has already ended. A later config
        keeps the lengthened end. Returns whether the end moved.
        """
        _check_period(seconds, "seconds", positive=False)
        with self._lock:
            now = self._clock()
            transition = self._due_transition(now)
            until = now + min(seconds, self._config.open_duration_max)
            moved = self._state is OPEN and until > self._open_until
            if moved:
                self._manual_end = True
                self._open_until = until
                self._refresh(now)
        self._emit(transition, None)
        return moved

    def count_local_refusal(self) -> None:
        """Count a call refused below the breaker (a load balancer's drop) as rejected.

        Lock-free like the breaker's own rejections: one next() on the counter, atomic under
        the GIL. The call never reached the dependency, so it is no outcome of the window.
        """
        next(self._rejections)

    def reset(self) -> None:
        """Back to CLOSED with fresh windows (the throttle's too) and no backoff.

        Lifetime counters are kept.
        """
        with self._lock:
            self._override = None
            now = self._clock()
            self._settle()
            if self._throttle is not None:
                config = self._config
                assert config.throttle_k is not None
                self._throttle = AdaptiveThrottle(
                    config.throttle_k, config.throttle_window, now, self._rng
                )
            transition = self._enter(CLOSED, now)
        self._emit(transition, None)
        self._emit_event(EventKind.RESET, CLOSED, now)

    # ----- observation ---------------------------------------------------------------

    def _rejected(self) -> int:
        """Rejections so far (lock held, so reads do not race each other)."""
        count = next(self._rejections) - self._rejection_reads
        self._rejection_reads += 1
        return count

    def snapshot(self) -> BreakerSnapshot:
        """An immutable record of the state and counters now."""
        now = self._clock()
        with self._lock:
            transition, snapshot = self._snapshot_locked(now)
        self._emit(transition, None)
        return snapshot

    def observe(self) -> BreakerObservation:
        """The snapshot, transition counts and duration histogram, read together under one lock.

        What exporters read: the histogram's count then equals the snapshot's successful + failed.
        """
        now = self._clock()
        with self._lock:
            transition, snapshot = self._snapshot_locked(now)
            histogram = self._histogram
            observation = BreakerObservation(
                snapshot,
                dict(self._transitions),
                None if histogram is None else histogram.snapshot(),
            )
        self._emit(transition, None)
        return observation

    def _snapshot_locked(self, now: float) -> tuple[Transition | None, BreakerSnapshot]:
        """A due transition (for listeners) and the snapshot (lock held)."""
        transition = self._due_transition(now)
        self._settle()
        window = self._window
        window.expire(now)
        self._refresh(now)  # the head may have moved, failures may have expired
        calls = window.calls
        state = self._state
        successful = self._successful
        snapshot = BreakerSnapshot(
            name=self.name,
            state=state,
            total=successful + self._failed + self._ignored,
            successful=successful,
            failed=self._failed,
            ignored=self._ignored,
            slow=self._slow,
            rejected=self._rejected(),
            shadow_rejected=self._shadow_rejected,
            failure_rate=window.failures / calls if calls else 0.0,
            slow_call_rate=window.slow / calls if calls else 0.0,
            window_calls=calls,
            mean_duration=max(window.duration_sum / calls, 0.0) if calls else 0.0,
            consecutive_failures=self._consecutive,
            minimum_calls=self._minimum_calls,
            state_since=self._state_since,
            open_until=self._open_until if state is OPEN else None,
            times_opened=self._times_opened,
            half_open_in_flight=self._half_open_in_flight,
            half_open_successes=self._half_open_successes,
            throttled=self._throttled,
            concurrency_limit=self._bulkhead,
            throttle_probability=(
                0.0 if self._throttle is None else self._throttle.probability(now)
            ),
        )
        return transition, snapshot

    def track_durations(self, buckets: Sequence[float] | None = DEFAULT_BUCKETS) -> None:
        """Keep a histogram of call durations in `buckets` (seconds); None stops and drops it.

        Off by default: it is the one per-call cost that observation adds. Setting the same
        bounds again keeps the counts; other bounds start from zero.
        """
        histogram = None if buckets is None else DurationHistogram(buckets)
        with self._lock:
            self._settle()
            current = self._histogram
            if histogram is not None and current is not None and current.bounds == histogram.bounds:
                return
            self._histogram = histogram

    def duration_histogram(self) -> HistogramSnapshot | None:
        """The duration histogram of calls that ran and were not ignored; None when off."""
        with self._lock:
            self._settle()
            return None if self._histogram is None else self._histogram.snapshot()

    def transition_counts(self) -> dict[Transition, int]:
        """How many times each (from, to) transition has happened in this breaker's life."""
        with self._lock:
            return dict(self._transitions)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"


def _check_period(seconds: object, field: str, *, positive: bool) -> None:
    """Refuse a period that is not a finite number of seconds (> 0, or >= 0 when not positive)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{field} must be a number, got {type(seconds).__name__}")
    if not (seconds > 0 if positive else seconds >= 0) or not math.isfinite(seconds):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{field} must be finite and {bound}, got {seconds!r}")
