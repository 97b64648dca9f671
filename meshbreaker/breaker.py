"""CircuitBreaker: the state machine around one locked _before()/_after() pair, and its Permit."""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from meshbreaker._backoff import OpenBackoff
from meshbreaker._quick import SLICE, QuickSuccesses
from meshbreaker._types import ConcurrencyLimit, Mode, Outcome, State, WindowType
from meshbreaker.concurrency import DEFAULT_MAX_LIMIT, AdaptiveLimit
from meshbreaker.config import BreakerConfig
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ThrottledError
from meshbreaker.events import (
    BreakerEvent,
    CallResult,
    CallResultListener,
    EventKind,
    EventListener,
    StateListener,
)
from meshbreaker.histogram import DEFAULT_BUCKETS, DurationHistogram, HistogramSnapshot
from meshbreaker.retry import RetryBudget, RetryPolicy
from meshbreaker.snapshot import BreakerObservation, BreakerSnapshot
from meshbreaker.throttle import AdaptiveThrottle
from meshbreaker.window import CountWindow, TimeWindow, Window

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

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
ExceptionClassifier = Callable[[BaseException], bool]
ResultClassifier = Callable[[Any], bool]
Transition = tuple[State, State]

_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_CLOSED: Final = State.CLOSED
_OPEN: Final = State.OPEN
_HALF_OPEN: Final = State.HALF_OPEN
_FORCED_OPEN: Final = State.FORCED_OPEN
_FORCED_CLOSED: Final = State.FORCED_CLOSED

# The generation of a permit whose outcome must never move the state (admitted in the shadow
# only). Real generations start at 1.
_STALE: Final = -1
# Values of _reject_until, the one field the lock-free rejection reads.
_NEVER: Final = -math.inf  # calls may go (or go to the lock to be decided)
_UNTIL_CLEARED: Final = math.inf  # FORCED_OPEN: rejected until an operator clears it


class Permit:
    """Leave to make one call; report how it ended exactly once (later reports are no-ops)."""

    # `_unreported` exists until the first report deletes it: deleting a slot is one C
    # operation under the GIL, so exactly one of any number of racing reports wins, lock-free.
    __slots__ = ("_breaker", "_generation", "_holds_slot", "_start", "_unreported")

    def __init__(
        self, breaker: CircuitBreaker, generation: int, start: float, holds_slot: bool
    ) -> None:
        self._breaker = breaker
        self._generation = generation
        self._start = start
        self._holds_slot = holds_slot
        self._unreported = True

    def success(self, duration: float | None = None) -> None:
        """The call succeeded; `duration` defaults to the time since acquire."""
        self._breaker._finish(self, _SUCCESS, duration)

    def failure(self, duration: float | None = None) -> None:
        """The call failed; `duration` defaults to the time since acquire."""
        self._breaker._finish(self, _FAILURE, duration)

    def ignore(self) -> None:
        """The call ended in a way that says nothing about the dependency (e.g. cancelled)."""
        self._breaker._finish(self, _IGNORED, 0.0)

    def record(self, outcome: Outcome, duration: float | None = None) -> None:
        """Report `outcome`; same as calling success(), failure() or ignore()."""
        self._breaker._finish(self, outcome, duration)

    def elapsed(self) -> float:
        """Seconds since the permit was granted, by the breaker's clock."""
        return self._breaker._clock() - self._start

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        breaker = self._breaker
        breaker._finish(self, _SUCCESS if exc is None else breaker._classify(exc), None)

    @property
    def done(self) -> bool:
        """Whether an outcome has been reported."""
        return not hasattr(self, "_unreported")


def _budget_of(policy: RetryPolicy) -> tuple[float, int, float]:
    return (policy.budget_ratio, policy.budget_min_per_second, policy.budget_ttl)


def _always_failure(exc: BaseException) -> bool:
    return True


def _never_ignore(exc: BaseException) -> bool:
    return False


class CircuitBreaker:
    """A circuit breaker for one dependency (in meshbreaker's gRPC adapters: one method).

    Thread-safe, in gobreaker's shape: every decision is made in `_before(now)` (admission) or
    `_after(generation, outcome, duration, now)` (an outcome), each under one short lock, and
    transitions that time makes due happen lazily there. Two paths take no lock: a call
    admitted in CLOSED without a bulkhead (it only reads `_free_generation`), and a success
    that cannot change anything (QuickSuccesses, see there). A rejection while OPEN reads only
    `_reject_until`. Listeners run after the lock is released, in the calling thread.
    """

    __slots__ = (
        "__weakref__",
        "_backoff",
        "_bulkhead",
        "_clock",
        "_config",
        "_consecutive",
        "_event_listeners",
        "_failed",
        "_free_generation",
        "_free_until",
        "_generation",
        "_half_open_in_flight",
        "_half_open_successes",
        "_histogram",
        "_ignored",
        "_in_flight",
        "_is_failure",
        "_is_ignored",
        "_limiter",
        "_lock",
        "_manual_period",
        "_minimum_calls",
        "_open_until",
        "_openings_in_row",
        "_override",
        "_quick",
        "_reject_until",
        "_rejection_reads",
        "_rejections",
        "_result_listeners",
        "_retry_budget",
        "_rng",
        "_shadow",
        "_shadow_rejected",
        "_slow",
        "_slow_threshold",
        "_spread",
        "_state",
        "_state_listeners",
        "_state_since",
        "_successful",
        "_throttle",
        "_throttled",
        "_times_opened",
        "_transitions",
        "_window",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        is_failure: ExceptionClassifier | None = None,
        ignore: ExceptionClassifier | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._clock = clock
        self._rng = rng
        self._is_failure = is_failure or _always_failure
        self._is_ignored = ignore or _never_ignore
        self._lock = threading.Lock()
        # Tuples, replaced and never mutated: dispatch iterates them without the lock.
        self._state_listeners: tuple[StateListener, ...] = ()
        self._result_listeners: tuple[CallResultListener, ...] = ()
        self._event_listeners: tuple[EventListener, ...] = ()
        self._successful = self._failed = self._ignored = self._slow = 0
        self._shadow_rejected = self._times_opened = self._throttled = 0
        # Rejections are counted without the lock: next() on an itertools.count is a single C
        # call, atomic under the GIL (threading names its threads with the same idiom). Reading
        # the count consumes one step, so reads are counted and subtracted.
        self._rejections = itertools.count()
        self._rejection_reads = 0
        self._quick = QuickSuccesses()
        self._in_flight = 0  # bulkhead slots held
        self._override: State | None = None
        self._generation = 0
        self._openings_in_row = 0  # openings since the last CLOSED: the backoff's exponent
        self._spread = 0.5  # the jitter drawn for the current opening, in [0, 1)
        self._manual_period: float | None = None  # set by open_for()
        self._open_until = _NEVER
        self._histogram: DurationHistogram | None = None
        self._transitions: dict[Transition, int] = {}
        self._throttle: AdaptiveThrottle | None = None
        self._limiter: AdaptiveLimit | None = None
        self._retry_budget: RetryBudget | None = None
        self._apply_config(config or BreakerConfig(), clock())
        self._enter(_CLOSED, clock())

    # ----- configuration -------------------------------------------------------------

    @property
    def config(self) -> BreakerConfig:
        """The configuration in force."""
        return self._config

    @property
    def retry_budget(self) -> RetryBudget | None:
        """The budget the retries of this breaker's calls share; None when retries are off."""
        return self._retry_budget

    @property
    def clock(self) -> Clock:
        """The clock this breaker reads: snapshot times (open_until, state_since) are on it."""
        return self._clock

    def _apply_config(self, config: BreakerConfig, now: float) -> None:
        """Take `config` (lock held, quick successes settled)."""
        if not isinstance(config, BreakerConfig):
            raise TypeError(f"config must be a BreakerConfig, got {type(config).__name__}")
        old = getattr(self, "_config", None)
        if config.throttle_k is None:
            self._throttle = None
        elif self._throttle is None or old is None or old.throttle_window != config.throttle_window:
            self._throttle = AdaptiveThrottle(
                config.throttle_k, config.throttle_window, now, self._rng
            )
        else:
            self._throttle.k = config.throttle_k  # same window: its evidence still holds
        self._config = config
        self._shadow = config.mode is Mode.SHADOW
        self._slow_threshold = (
            math.inf if config.slow_call_duration is None else config.slow_call_duration
        )
        if config.concurrency_limit is ConcurrencyLimit.ADAPTIVE:
            ceiling = config.max_concurrent_calls or DEFAULT_MAX_LIMIT
            limiter = self._limiter
            if limiter is None:
                limiter = self._limiter = AdaptiveLimit(ceiling)
            elif limiter.max_limit != ceiling:
                limiter.max_limit = ceiling  # what it learned still holds, under the new cap
                limiter.limit = min(limiter.limit, float(ceiling))
            self._bulkhead: int | None = limiter.current
        else:
            self._limiter = None
            self._bulkhead = config.max_concurrent_calls
        retry = config.retry
        if retry is None:
            self._retry_budget = None
        elif old is None or old.retry is None or _budget_of(old.retry) != _budget_of(retry):
            self._retry_budget = RetryBudget.of(retry, self._clock)
        self._backoff = OpenBackoff.of(config)
        self._minimum_calls = config.effective_minimum_calls

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
            if self._state is _OPEN and self._manual_period is None:
                self._open_until = self._state_since + self._open_period()
            self._refresh(now)
            state = self._state
        self._emit_event(EventKind.CONFIG_UPDATED, state, now)

    def _set_window(self, now: float) -> None:
        """Start an empty window (lock held, quick successes settled)."""
        if self._config.window_type is WindowType.COUNT:
            self._window: Window = CountWindow(self._config.window_size)
        else:
            self._window = TimeWindow(self._config.window_size, now)

    def _refresh(self, now: float) -> None:
        """Recompute what the lock-free paths read (lock held, quick successes settled)."""
        state = self._state
        free = (state is _CLOSED or state is _FORCED_CLOSED) and self._bulkhead is None
        self._free_generation: int | None = self._generation if free else None
        # The throttle's invariant for the lock-free admission: while now < _free_until, no
        # call can be refused. Its counts change only under this lock (outcomes that are not
        # quick successes, refusals) or when its head second ends, and accepts only lower the
        # refusal probability; so "quiet now" holds until the head second ends or the next
        # outcome under the lock, which refreshes this again.
        throttle = self._throttle
        if throttle is None or state is not _CLOSED:
            self._free_until = math.inf
        elif throttle.quiet(now):
            self._free_until = throttle.next_second
        else:
            self._free_until = _NEVER
        if self._shadow or not (state is _OPEN or state is _FORCED_OPEN):
            self._reject_until = _NEVER
        else:
            self._reject_until = _UNTIL_CLEARED if state is _FORCED_OPEN else self._open_until
        # QuickSuccesses' invariant: open only where a success changes nothing but counts.
        window = self._window
        if (state is _CLOSED or state is _FORCED_CLOSED) and not (
            self._result_listeners or self._consecutive or window.failures or window.slow
        ):
            until = min(window.quick_until, now + SLICE)
            if throttle is not None:
                # Quick successes then all end in the throttle's head second: _settle counts
                # them there, and the head moves only after a settle.
                until = min(until, throttle.next_second)
            self._quick.open(self._generation, until, self._slow_threshold)
        else:
            self._quick.close()

    def _settle(self) -> None:
        """Count the logged quick successes into the window and the histogram (lock held)."""
        durations = self._quick.take()
        if durations:
            self._successful += len(durations)
            if self._throttle is not None:
                self._throttle.record_accepts(len(durations))
            self._window.add_successes(durations)
            if self._histogram is not None:
                self._histogram.observe_all(durations)

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

    def _emit(self, transition: Transition | None, result: CallResult | None) -> None:
        """Tell listeners of a transition and a call result (lock released)."""
        if transition is not None:
            old, new = transition
            for state_listener in self._state_listeners:
                try:
                    state_listener(self.name, old, new)
                except Exception:
                    logger.exception("state listener of breaker %r raised", self.name)
            if self._event_listeners:
                event = BreakerEvent(EventKind.TRANSITION, self.name, new, self._clock(), old)
                self._dispatch(event)
        if result is not None:
            for result_listener in self._result_listeners:
                try:
                    result_listener(result)
                except Exception:
                    logger.exception("call-result listener of breaker %r raised", self.name)

    def _emit_event(self, kind: EventKind, state: State, now: float) -> None:
        if self._event_listeners:
            self._dispatch(BreakerEvent(kind, self.name, state, now))

    def _dispatch(self, event: BreakerEvent) -> None:
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener of breaker %r raised", self.name)

    # ----- state ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (a transition that time made due happens on reading)."""
        state = self._state
        if state is _HALF_OPEN or (state is _OPEN and self._clock() >= self._open_until):
            with self._lock:
                transition = self._due_transition(self._clock())
            self._emit(transition, None)
        return self._state

    def _enter(self, state: State, now: float) -> Transition | None:
        """Switch to `state` (lock held); returns the transition for listeners."""
        self._settle()  # into the window they were admitted for, before it changes
        old = getattr(self, "_state", state)
        self._state = state
        self._generation += 1
        self._state_since = now
        self._half_open_in_flight = 0
        self._half_open_successes = 0
        self._manual_period = None
        if state is _OPEN:
            self._times_opened += 1
            self._openings_in_row += 1
            self._spread = self._rng() if self._config.open_jitter else 0.5
            self._open_until = now + self._open_period()
        else:
            self._open_until = _NEVER
        if state is _CLOSED:
            self._set_window(now)
            self._consecutive = 0
            self._openings_in_row = 0
        self._refresh(now)
        if old is state:
            return None
        transition = (old, state)
        self._transitions[transition] = self._transitions.get(transition, 0) + 1
        return transition

    def _open_period(self) -> float:
        """How long the current opening lasts by the config in force (lock held, OPEN)."""
        return self._backoff.duration(self._openings_in_row - 1, self._spread)

    def _due_transition(self, now: float) -> Transition | None:
        """Make the transition time alone has made due (lock held).

        OPEN -> HALF_OPEN once the open period has passed; HALF_OPEN -> OPEN (with backoff)
        once it has gone half_open_max_wait without deciding.
        """
        state = self._state
        if state is _OPEN:
            if now >= self._open_until:
                return self._enter(_HALF_OPEN, now)
        elif state is _HALF_OPEN:
            wait = self._config.half_open_max_wait
            if wait and now >= self._state_since + wait:
                return self._enter(_OPEN, now)
        return None

    # ----- admission: _before --------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit for one call, or CallNotPermittedError when the breaker rejects it."""
        generation = self._free_generation
        now = self._clock()
        if generation is not None and now < self._free_until:
            return Permit(self, generation, now, False)
        return self._before(now)

    def try_acquire(self) -> Permit | None:
        """Like acquire(), but None instead of an exception."""
        try:
            return self.acquire()
        except CallNotPermittedError:
            return None

    def _before(self, now: float) -> Permit:
        """Admit one call or raise its rejection: every admission that is not free."""
        reject_until = self._reject_until
        if now < reject_until:
            # OPEN or FORCED_OPEN with nothing to decide, only to count: no lock.
            next(self._rejections)
            state = _FORCED_OPEN if reject_until == _UNTIL_CLEARED else _OPEN
            if self._event_listeners:
                self._emit_event(EventKind.NOT_PERMITTED, state, now)
            raise CallNotPermittedError(self.name, state, reject_until - now)
        self._lock.acquire()
        try:
            transition = self._due_transition(now)
            state = self._state
            generation = self._generation
            denied: CallNotPermittedError | None = None
            if state is _OPEN or state is _FORCED_OPEN:
                retry_after = self._open_until - now if state is _OPEN else _UNTIL_CLEARED
                denied = CallNotPermittedError(self.name, state, retry_after)
            elif state is _HALF_OPEN:
                if self._half_open_in_flight < self._config.half_open_max_calls:
                    self._half_open_in_flight += 1
                else:
                    denied = CallNotPermittedError(self.name, state, 0.0)
            elif state is _CLOSED and self._throttle is not None:
                # Probes (HALF_OPEN) and an operator's FORCED_CLOSED are never throttled.
                self._settle()
                if not self._throttle.admit(now, count=not self._shadow):
                    denied = ThrottledError(self.name, state, 0.0)
                self._refresh(now)
            if denied is None and self._bulkhead is not None and self._in_flight >= self._bulkhead:
                if state is _HALF_OPEN:
                    self._half_open_in_flight -= 1
                denied = BulkheadFullError(self.name, state, 0.0)
            if denied is not None:
                if self._shadow:
                    self._shadow_rejected += 1
                    generation = _STALE  # admitted only in the shadow: its outcome moves nothing
                    denied = None
                elif type(denied) is ThrottledError:
                    self._throttled += 1  # counted apart: the breaker did not refuse it
                else:
                    next(self._rejections)
            holds_slot = self._bulkhead is not None and denied is None
            if holds_slot:
                self._in_flight += 1
        finally:
            self._lock.release()
        self._emit(transition, None)
        if denied is not None:
            self._emit_event(EventKind.NOT_PERMITTED, state, now)
            raise denied
        return Permit(self, generation, now, holds_slot)

    # ----- outcomes: _after ----------------------------------------------------------

    def _finish(self, permit: Permit, outcome: Outcome, duration: float | None) -> None:
        """Report a permit's outcome, once."""
        try:
            del permit._unreported
        except AttributeError:
            return  # reported already
        now = self._clock()
        if duration is None:
            duration = now - permit._start
        if permit._holds_slot:
            self._after(permit._generation, outcome, duration, now, True)
        elif outcome is not _SUCCESS or not self._quick.log(permit._generation, duration, now):
            self._after(permit._generation, outcome, duration, now, False)

    def _after(
        self, generation: int, outcome: Outcome, duration: float, now: float, holds_slot: bool
    ) -> None:
        """Count one outcome and move the state if its generation is current."""
        self._lock.acquire()
        try:
            if holds_slot:
                self._in_flight -= 1
                limiter = self._limiter
                if limiter is not None and outcome is not _IGNORED:
                    failed = outcome is _FAILURE
                    self._bulkhead = limiter.update(duration, failed, self._in_flight + 1, now)
            transition = self._count(generation, outcome, duration, now)
        finally:
            self._lock.release()
        if transition is not None or self._result_listeners:
            result = None
            if self._result_listeners:
                slow = outcome is _SUCCESS and duration >= self._slow_threshold
                result = CallResult(self.name, outcome, duration, slow)
            self._emit(transition, result)

    def _count(
        self, generation: int, outcome: Outcome, duration: float, now: float
    ) -> Transition | None:
        """Count one outcome and move the state if it is current (lock held)."""
        if outcome is _IGNORED:
            self._ignored += 1
            if generation == self._generation and self._state is _HALF_OPEN:
                self._half_open_in_flight -= 1
            return None
        failed = outcome is _FAILURE
        slow = not failed and duration >= self._slow_threshold
        throttle = self._throttle
        if throttle is not None:
            self._settle()  # the head second may move: earlier quick successes count first
            throttle.record(not failed, now)
        if self._histogram is not None:
            self._histogram.observe(duration)
        if failed:
            self._failed += 1
        else:
            self._successful += 1
            if slow:
                self._slow += 1
        if generation != self._generation:
            return None  # a stale outcome is counted but never moves the state
        state = self._state
        if state is _CLOSED or state is _FORCED_CLOSED:
            self._settle()
            window = self._window
            window.add(failed, slow, duration, now)
            self._consecutive = self._consecutive + 1 if failed else 0
            # A window with neither failures nor slow calls cannot trip.
            transition = self._closed_verdict(now) if window.failures or window.slow else None
            if transition is None:
                self._refresh(now)
            return transition
        if state is _HALF_OPEN:
            transition = self._due_transition(now)
            if transition is not None:
                return transition  # undecided too long: this outcome came too late
            self._half_open_in_flight -= 1
            if failed or slow:
                return self._enter(_OPEN, now)
            self._half_open_successes += 1
            if self._half_open_successes >= self._config.half_open_success_threshold:
                return self._enter(_CLOSED, now)
        return None

    def _closed_verdict(self, now: float) -> Transition | None:
        """Trip if the run of failures or the window's rates say so (lock held, CLOSED)."""
        if self._state is not _CLOSED:
            return None
        config = self._config
        if 0 < config.consecutive_failures <= self._consecutive:
            return self._enter(_OPEN, now)
        window = self._window
        calls = window.calls
        if calls >= self._minimum_calls and (
            window.failures / calls >= config.failure_rate_threshold
            or window.slow / calls >= config.slow_call_rate_threshold
        ):
            return self._enter(_OPEN, now)
        return None

    def _classify(self, exc: BaseException) -> Outcome:
        # Cancellation, KeyboardInterrupt and SystemExit say nothing about the dependency.
        if not isinstance(exc, Exception) or self._is_ignored(exc):
            return _IGNORED
        return _FAILURE if self._is_failure(exc) else _SUCCESS

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
                state = _FORCED_OPEN if reject_until == _UNTIL_CLEARED else _OPEN
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
            self._after(generation, _SUCCESS, now - start, now, False)
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
        self._set_override(_FORCED_OPEN)

    def force_closed(self) -> None:
        """Permit every call and keep counting, but never trip, until clear_override()."""
        self._set_override(_FORCED_CLOSED)

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
            transition = self._enter(override or _CLOSED, self._clock())
        self._emit(transition, None)

    def transition_to_half_open(self) -> None:
        """Let probes go now: HALF_OPEN, as if the open period had passed (clears an override)."""
        with self._lock:
            self._override = None
            transition = self._enter(_HALF_OPEN, self._clock())
        self._emit(transition, None)

    def open_for(self, seconds: float) -> None:
        """OPEN for `seconds` from now (not the configured period), then probe as usual.

        Clears an override. A breaker not OPEN opens, and the opening counts toward the backoff
        of later openings. An OPEN breaker keeps its opening and only moves its end: lengthening
        an open period (an HTTP Retry-After) is not a second opening.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, got {type(seconds).__name__}")
        if not 0 < seconds < math.inf:
            raise ValueError(f"seconds must be finite and > 0, got {seconds!r}")
        with self._lock:
            self._override = None
            now = self._clock()
            transition = None if self._state is _OPEN else self._enter(_OPEN, now)
            self._manual_period = float(seconds)
            self._open_until = now + seconds
            self._refresh(now)
        self._emit(transition, None)

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
            transition = self._enter(_CLOSED, now)
        self._emit(transition, None)
        self._emit_event(EventKind.RESET, _CLOSED, now)

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
            open_until=self._open_until if state is _OPEN else None,
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
