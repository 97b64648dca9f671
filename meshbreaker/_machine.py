"""BreakerMachine: a breaker's fields, the parts its config derives, and its state transitions."""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Final

from meshbreaker._backoff import OpenBackoff
from meshbreaker._quick import SLICE, QuickSuccesses
from meshbreaker._types import ConcurrencyLimit, Mode, Outcome, State, WindowType
from meshbreaker.concurrency import DEFAULT_MAX_LIMIT, AdaptiveLimit
from meshbreaker.config import BreakerConfig
from meshbreaker.events import (
    BreakerEvent,
    CallResult,
    CallResultListener,
    EventKind,
    EventListener,
    StateListener,
)
from meshbreaker.histogram import DurationHistogram
from meshbreaker.retry import RetryBudget, RetryPolicy
from meshbreaker.throttle import AdaptiveThrottle
from meshbreaker.window import CountWindow, TimeWindow, Window

# Listeners' errors are logged under the module users know the breaker by.
logger = logging.getLogger("meshbreaker.breaker")

Clock = Callable[[], float]
ExceptionClassifier = Callable[[BaseException], bool]
Transition = tuple[State, State]

SUCCESS: Final = Outcome.SUCCESS
FAILURE: Final = Outcome.FAILURE
IGNORED: Final = Outcome.IGNORED
CLOSED: Final = State.CLOSED
OPEN: Final = State.OPEN
HALF_OPEN: Final = State.HALF_OPEN
FORCED_OPEN: Final = State.FORCED_OPEN
FORCED_CLOSED: Final = State.FORCED_CLOSED

# The generation of a permit whose outcome must never move the state (admitted in the shadow
# only). Real generations start at 1.
STALE: Final = -1
# Values of _reject_until, the one field the lock-free rejection reads.
NEVER: Final = -math.inf  # calls may go (or go to the lock to be decided)
UNTIL_CLEARED: Final = math.inf  # FORCED_OPEN: rejected until an operator clears it


def _budget_of(policy: RetryPolicy) -> tuple[float, int, float]:
    return (policy.budget_ratio, policy.budget_min_per_second, policy.budget_ttl)


def _always_failure(exc: BaseException) -> bool:
    return True


def _never_ignore(exc: BaseException) -> bool:
    return False


class BreakerMachine:
    """A breaker's fields, what its config derives, what the lock-free paths read, its states."""

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
        "_manual_end",
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
        self._manual_end = False  # the opening's end was set by open_for() or keep_open()
        self._open_until = NEVER
        self._histogram: DurationHistogram | None = None
        self._transitions: dict[Transition, int] = {}
        self._throttle: AdaptiveThrottle | None = None
        self._limiter: AdaptiveLimit | None = None
        self._retry_budget: RetryBudget | None = None
        self._apply_config(config or BreakerConfig(), clock())
        self._enter(CLOSED, clock())

    # ----- configuration -------------------------------------------------------------

    if TYPE_CHECKING:

        @property
        def config(self) -> BreakerConfig:
            """The configuration in force."""

        @property
        def retry_budget(self) -> RetryBudget | None:
            """The budget the retries of this breaker's calls share; None when retries are off."""

        @property
        def clock(self) -> Clock:
            """The clock this breaker reads: snapshot times (open_until, state_since) are on it."""

    else:
        # C getters: read on every guarded call, where a Python property pushes a frame.
        config = property(attrgetter("_config"), doc="The configuration in force.")
        retry_budget = property(
            attrgetter("_retry_budget"),
            doc="The budget the retries of this breaker's calls share; None when retries are off.",
        )
        clock = property(
            attrgetter("_clock"),
            doc="The clock this breaker reads: snapshot times (open_until, state_since) are on it.",
        )

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

    def _set_window(self, now: float) -> None:
        """Start an empty window (lock held, quick successes settled)."""
        if self._config.window_type is WindowType.COUNT:
            self._window: Window = CountWindow(self._config.window_size)
        else:
            self._window = TimeWindow(self._config.window_size, now)

    def _refresh(self, now: float) -> None:
        """Recompute what the lock-free paths read (lock held, quick successes settled)."""
        state = self._state
        free = (state is CLOSED or state is FORCED_CLOSED) and self._bulkhead is None
        self._free_generation: int | None = self._generation if free else None
        # The throttle's invariant for the lock-free admission: while now < _free_until, no
        # call can be refused. Its counts change only under this lock (outcomes that are not
        # quick successes, refusals) or when its head second ends, and accepts only lower the
        # refusal probability; so "quiet now" holds until the head second ends or the next
        # outcome under the lock, which refreshes this again.
        throttle = self._throttle
        if throttle is None or state is not CLOSED:
            self._free_until = math.inf
        elif throttle.quiet(now):
            self._free_until = throttle.next_second
        else:
            self._free_until = NEVER
        if self._shadow or not (state is OPEN or state is FORCED_OPEN):
            self._reject_until = NEVER
        else:
            self._reject_until = UNTIL_CLEARED if state is FORCED_OPEN else self._open_until
        # QuickSuccesses' invariant: open only where a success changes nothing but counts.
        window = self._window
        if (state is CLOSED or state is FORCED_CLOSED) and not (
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

    # ----- telling listeners ---------------------------------------------------------

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
        if state is HALF_OPEN or (state is OPEN and self._clock() >= self._open_until):
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
        self._manual_end = False
        if state is OPEN:
            self._times_opened += 1
            self._openings_in_row += 1
            self._spread = self._rng() if self._config.open_jitter else 0.5
            self._open_until = now + self._open_period()
        else:
            self._open_until = NEVER
        if state is CLOSED:
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
        if state is OPEN:
            if now >= self._open_until:
                return self._enter(HALF_OPEN, now)
        elif state is HALF_OPEN:
            wait = self._config.half_open_max_wait
            if wait and now >= self._state_since + wait:
                return self._enter(OPEN, now)
        return None
