"""CircuitBreaker: the state machine, its permits, transitions, events and snapshots."""

from __future__ import annotations

import enum
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from meshbreaker._backoff import Backoff
from meshbreaker._types import Mode, State, WindowType
from meshbreaker.config import BreakerConfig
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError
from meshbreaker.histogram import DEFAULT_BUCKETS, DurationHistogram, HistogramSnapshot
from meshbreaker.window import CountWindow, TimeWindow, Window

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
StateListener = Callable[[str, State, State], None]
ExceptionClassifier = Callable[[BaseException], bool]


class Outcome(enum.IntEnum):
    """How a finished call counts: success, failure, or not at all."""

    SUCCESS = 0
    FAILURE = 1
    IGNORED = 2


_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_STALE: Final = -1  # the generation of a permit that must never move the state
_OPEN: Final = State.OPEN
_FORCED_OPEN: Final = State.FORCED_OPEN
_INF: Final = math.inf
# Quick successes are logged for at most this long before a call settles the log under the
# lock: it bounds the log by time, at no cost to the hot path (one comparison serves both).
_QUICK_SLICE: Final = 0.01


@dataclass(frozen=True, slots=True)
class CallResult:
    """One finished call, as seen by on_call_result listeners."""

    name: str
    outcome: Outcome
    duration: float
    slow: bool


CallResultListener = Callable[[CallResult], None]


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


@dataclass(frozen=True, slots=True)
class BreakerObservation:
    """A snapshot with the transition counts and duration histogram of the same instant."""

    snapshot: BreakerSnapshot
    transitions: dict[tuple[State, State], int]
    durations: HistogramSnapshot | None


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
        self._breaker._finish_permit(self, _SUCCESS, duration)

    def failure(self, duration: float | None = None) -> None:
        """The call failed; `duration` defaults to the time since acquire."""
        self._breaker._finish_permit(self, _FAILURE, duration)

    def ignore(self) -> None:
        """The call ended in a way that says nothing about the dependency (e.g. cancelled)."""
        self._breaker._finish_permit(self, _IGNORED, 0.0)

    def record(self, outcome: Outcome, duration: float | None = None) -> None:
        """Report `outcome`; same as calling success(), failure() or ignore()."""
        self._breaker._finish_permit(self, outcome, duration)

    def elapsed(self) -> float:
        """Seconds since the permit was granted, by the breaker's clock."""
        return self._breaker._clock() - self._start

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        breaker = self._breaker
        outcome = _SUCCESS if exc is None else breaker._classify(exc)
        breaker._finish_permit(self, outcome, None)

    @property
    def done(self) -> bool:
        """Whether an outcome has been reported."""
        return not hasattr(self, "_unreported")


def _always_failure(exc: BaseException) -> bool:
    return True


def _never_ignore(exc: BaseException) -> bool:
    return False


class CircuitBreaker:
    """A circuit breaker for one dependency (in meshbreaker's gRPC adapters: one method).

    Thread-safe. Admission in CLOSED without a bulkhead takes no lock, and neither does a
    quick success through call()/call_async() while the window holds no failure or slow call;
    any other outcome takes one short lock. Listeners run after it is released, in the calling
    thread. The per-call paths use lock.acquire()/try/finally rather than `with`: measured
    here it costs half as much, and these paths run on every guarded call.
    """

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
        self._state_listeners: list[StateListener] = []
        self._result_listeners: list[CallResultListener] = []
        self._successful = self._failed = self._ignored = self._slow = 0
        self._shadow_rejected = self._times_opened = 0
        # Rejections are counted without the lock: next() on an itertools.count is a single C
        # call, atomic under the GIL (threading names its threads with the same idiom). Reading
        # the count consumes one step, so reads are counted and subtracted.
        self._rejections = itertools.count()
        self._rejection_reads = 0
        # Quick successes (see call()) skip the lock: each appends its duration to a log
        # (deque.append is atomic), settled into the counters, the window and the histogram
        # under the lock before anything reads, changes or replaces them.
        self._quick_log: deque[float] = deque()
        self._quick_append = self._quick_log.append
        self._quick_until = -math.inf
        self._in_flight = 0  # bulkhead slots held
        self._override: State | None = None
        self._generation = 0
        self._openings_in_row = 0  # openings since the last CLOSED: the backoff's exponent
        self._spread = 0.5  # the jitter drawn for the current opening, in [0, 1)
        self._histogram: DurationHistogram | None = None
        self._transitions: dict[tuple[State, State], int] = {}
        self._apply_config(config or BreakerConfig())
        self._enter(State.CLOSED, clock())

    # ----- configuration -------------------------------------------------------------

    @property
    def config(self) -> BreakerConfig:
        """The configuration in force."""
        return self._config

    def _apply_config(self, config: BreakerConfig) -> None:
        if not isinstance(config, BreakerConfig):
            raise TypeError(f"config must be a BreakerConfig, got {type(config).__name__}")
        self._config = config
        self._shadow = config.mode is Mode.SHADOW
        self._slow_threshold = (
            math.inf if config.slow_call_duration is None else config.slow_call_duration
        )
        self._bulkhead = config.max_concurrent_calls
        self._backoff = Backoff.of(config)
        self._minimum_calls = config.effective_minimum_calls

    def update_config(self, config: BreakerConfig) -> None:
        """Apply `config` live.

        When the window type and size are unchanged, the window's contents and the
        consecutive-failure count are kept. Otherwise the old evidence was gathered under a
        different definition, so the window starts empty and the consecutive count at zero.
        The state, its generation and the counters are kept either way. An OPEN breaker's
        open period is recomputed from the moment it opened with the new durations (shorter or
        longer), so a policy change reaches it at once.
        """
        with self._lock:
            old = self._config
            self._apply_config(config)
            self._settle_quick()
            if (old.window_type, old.window_size) != (config.window_type, config.window_size):
                self._set_window(self._clock())
                self._consecutive = 0
            if self._state is State.OPEN:
                self._open_until = self._state_since + self._open_period()
            self._refresh_fast_path(self._clock())

    def _set_window(self, now: float) -> None:
        """Start an empty window (lock held, quick successes settled)."""
        if self._config.window_type is WindowType.COUNT:
            self._window: Window = CountWindow(self._config.window_size)
        else:
            self._window = TimeWindow(self._config.window_size, now)

    def _refresh_fast_path(self, now: float) -> None:
        """Recompute what the lock-free paths read (lock held)."""
        # The current generation when a call may go without any bookkeeping at admission, else -1.
        free = self._state in (State.CLOSED, State.FORCED_CLOSED) and self._bulkhead is None
        self._free_generation = self._generation if free else -1
        # A success may skip the lock only where it cannot move the state or reset anything, and
        # no listener waits for its CallResult.
        window = self._window
        quick = free and not (
            self._result_listeners or self._consecutive or window.failures or window.slow
        )
        self._quick_until = min(window.quick_until, now + _QUICK_SLICE) if quick else -math.inf

    def _settle_quick(self) -> None:
        """Move logged quick successes into the window and the histogram (lock held)."""
        log = self._quick_log
        count = len(log)
        if count:
            # Only settlements pop, all under the lock, so `count` items are there to take.
            durations = list(itertools.islice(iter(log.popleft, None), count))
            self._successful += count
            self._window.add_successes(durations)
            if self._histogram is not None:
                self._histogram.observe_all(durations)

    # ----- listeners -----------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(name, old, new)` after each transition; returns an unsubscribe."""
        with self._lock:
            self._state_listeners = [*self._state_listeners, listener]
        return lambda: self._remove_listener("_state_listeners", listener)

    def on_call_result(self, listener: CallResultListener) -> Callable[[], None]:
        """Call `listener(CallResult)` after each finished call; returns an unsubscribe."""
        with self._lock:
            self._result_listeners = [*self._result_listeners, listener]
            self._refresh_fast_path(self._clock())
        return lambda: self._remove_listener("_result_listeners", listener)

    def _remove_listener(self, attribute: str, listener: Callable[..., None]) -> None:
        with self._lock:
            # Lists are replaced, never mutated, so dispatch can iterate without the lock.
            current: list[Callable[..., None]] = getattr(self, attribute)
            setattr(self, attribute, [item for item in current if item is not listener])
            self._refresh_fast_path(self._clock())

    def _emit(self, transition: tuple[State, State] | None, result: CallResult | None) -> None:
        if transition is not None:
            for state_listener in self._state_listeners:
                try:
                    state_listener(self.name, transition[0], transition[1])
                except Exception:
                    logger.exception("state listener of breaker %r raised", self.name)
        if result is not None:
            for result_listener in self._result_listeners:
                try:
                    result_listener(result)
                except Exception:
                    logger.exception("call-result listener of breaker %r raised", self.name)

    # ----- state ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (a transition that time made due happens on reading)."""
        state = self._state
        if state is State.HALF_OPEN or (state is State.OPEN and self._clock() >= self._open_until):
            with self._lock:
                transition = self._due_transition(self._clock())
            if transition is not None:
                self._emit(transition, None)
        return self._state

    def _enter(self, state: State, now: float) -> tuple[State, State] | None:
        """Switch to `state` (lock held); returns the transition for listeners."""
        old = getattr(self, "_state", state)
        self._settle_quick()  # into the window they were admitted for, before it changes
        self._state = state
        self._generation += 1
        self._state_since = now
        self._half_open_in_flight = 0
        self._half_open_successes = 0
        if state is State.OPEN:
            self._times_opened += 1
            self._openings_in_row += 1
            self._spread = self._rng() if self._config.open_jitter else 0.5
            self._open_until = now + self._open_period()
        else:
            # Read without the lock by the fast rejection, so it alone says "reject now":
            # +inf while forced open, -inf whenever calls may go.
            self._open_until = math.inf if state is State.FORCED_OPEN else -math.inf
        if state is State.CLOSED:
            self._set_window(now)
            self._consecutive = 0
            self._openings_in_row = 0
        self._refresh_fast_path(now)
        if old is state:
            return None
        transition = (old, state)
        self._transitions[transition] = self._transitions.get(transition, 0) + 1
        return transition

    def _open_period(self) -> float:
        """How long the current opening lasts, by the config in force (lock held, OPEN)."""
        return self._backoff.duration(self._openings_in_row - 1, self._spread)

    def _due_transition(self, now: float) -> tuple[State, State] | None:
        """The transition time alone makes due (lock held): OPEN -> HALF_OPEN, or HALF_OPEN
        undecided for half_open_max_wait -> OPEN."""
        state = self._state
        if state is State.OPEN and now >= self._open_until:
            return self._enter(State.HALF_OPEN, now)
        if state is State.HALF_OPEN:
            wait = self._config.half_open_max_wait
            if wait and now >= self._state_since + wait:
                return self._enter(State.OPEN, now)
        return None

    # ----- admission -----------------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit for one call, or CallNotPermittedError when the breaker rejects it."""
        generation = self._free_generation
        if generation >= 0:
            return Permit(self, generation, self._clock(), False)
        return self._acquire_locked(self._clock())

    def try_acquire(self) -> Permit | None:
        """Like acquire(), but None instead of an exception."""
        try:
            return self.acquire()
        except CallNotPermittedError:
            return None

    def _acquire_locked(self, now: float) -> Permit:
        open_until = self._open_until
        if now < open_until and not self._shadow:
            # The common rejection: nothing to decide, only to count.
            next(self._rejections)
            state = _FORCED_OPEN if open_until == _INF else _OPEN
            raise CallNotPermittedError(self.name, state, open_until - now)
        self._lock.acquire()
        try:
            transition = self._due_transition(now)
            state = self._state
            generation = self._generation
            denied: CallNotPermittedError | None = None
            if state is State.OPEN or state is State.FORCED_OPEN:
                retry_after = self._open_until - now if state is State.OPEN else math.inf
                denied = CallNotPermittedError(self.name, state, retry_after)
            elif state is State.HALF_OPEN:
                if self._half_open_in_flight < self._config.half_open_max_calls:
                    self._half_open_in_flight += 1
                else:
                    denied = CallNotPermittedError(self.name, state, 0.0)
            if denied is None and self._bulkhead is not None and self._in_flight >= self._bulkhead:
                if state is State.HALF_OPEN:
                    self._half_open_in_flight -= 1
                denied = BulkheadFullError(self.name, state, 0.0)
            if denied is not None:
                if not self._shadow:
                    next(self._rejections)
                else:
                    self._shadow_rejected += 1
                    generation = _STALE  # admitted only in the shadow: its outcome moves nothing
                    denied = None
            holds_slot = self._bulkhead is not None and denied is None
            if holds_slot:
                self._in_flight += 1
        finally:
            self._lock.release()
        if transition is not None:
            self._emit(transition, None)
        if denied is not None:
            raise denied
        return Permit(self, generation, now, holds_slot)

    # ----- recording -----------------------------------------------------------------

    def _finish_permit(self, permit: Permit, outcome: Outcome, duration: float | None) -> None:
        try:
            del permit._unreported
        except AttributeError:
            return  # reported already
        now = self._clock()
        if duration is None:
            duration = now - permit._start
        # Permits of a bulkhead never log quick successes: their slot must be given back.
        if outcome is _SUCCESS and self._logged_quick(permit._generation, duration, now):
            return
        self._lock.acquire()
        try:
            if permit._holds_slot:
                self._in_flight -= 1
            transition = self._count(permit._generation, outcome, duration, now)
        finally:
            self._lock.release()
        if transition is not None or self._result_listeners:
            self._emit_result(transition, outcome, duration)

    def _record(self, generation: int, outcome: Outcome, duration: float, now: float) -> None:
        self._lock.acquire()
        try:
            transition = self._count(generation, outcome, duration, now)
        finally:
            self._lock.release()
        if transition is not None or self._result_listeners:
            self._emit_result(transition, outcome, duration)

    def _emit_result(
        self, transition: tuple[State, State] | None, outcome: Outcome, duration: float
    ) -> None:
        result = None
        if self._result_listeners:
            slow = outcome is _SUCCESS and duration >= self._slow_threshold
            result = CallResult(self.name, outcome, duration, slow)
        self._emit(transition, result)

    def _count(
        self, generation: int, outcome: Outcome, duration: float, now: float
    ) -> tuple[State, State] | None:
        """Count one outcome and move the state if it is current (lock held)."""
        if outcome is _IGNORED:
            self._ignored += 1
            if generation == self._generation and self._state is State.HALF_OPEN:
                self._half_open_in_flight -= 1
            return None
        failed = outcome is _FAILURE
        slow = not failed and duration >= self._slow_threshold
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
        if state is State.CLOSED or state is State.FORCED_CLOSED:
            self._settle_quick()
            window = self._window
            window.add(failed, slow, duration, now)
            self._consecutive = self._consecutive + 1 if failed else 0
            # A window with neither failures nor slow calls cannot trip.
            transition = self._closed_verdict(now) if window.failures or window.slow else None
            if transition is None and self._bulkhead is None:  # with one, nothing is lock-free
                self._refresh_fast_path(now)
            return transition
        if state is State.HALF_OPEN:
            self._half_open_in_flight -= 1
            if failed or slow:
                return self._enter(State.OPEN, now)
            self._half_open_successes += 1
            if self._half_open_successes >= self._config.half_open_success_threshold:
                return self._enter(State.CLOSED, now)
        return None

    def _closed_verdict(self, now: float) -> tuple[State, State] | None:
        """Trip if the run of failures or the window's rates say so (lock held, CLOSED)."""
        if self._state is not State.CLOSED:
            return None
        config = self._config
        if 0 < config.consecutive_failures <= self._consecutive:
            return self._enter(State.OPEN, now)
        window = self._window
        calls = window.calls
        if calls >= self._minimum_calls and (
            window.failures / calls >= config.failure_rate_threshold
            or window.slow / calls >= config.slow_call_rate_threshold
        ):
            return self._enter(State.OPEN, now)
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
        if generation < 0:
            now = self._clock()
            open_until = self._open_until
            if now < open_until and not self._shadow:
                # _acquire_locked's fast rejection, inlined: one frame less in the traceback.
                next(self._rejections)
                state = _FORCED_OPEN if open_until == _INF else _OPEN
                raise CallNotPermittedError(self.name, state, open_until - now)
            with self._acquire_locked(now):  # Permit.__exit__ reports the outcome
                return fn(*args, **kwargs)
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            now = clock()
            self._record(generation, self._classify(exc), now - start, now)
            raise
        now = clock()
        duration = now - start
        # The hot path, _logged_quick() inlined: a quick success is logged without the lock. The
        # generation check and the append are a few bytecodes apart; a transition slipping in
        # between would count this success in a later window (in the totals exactly once).
        if (
            now < self._quick_until
            and duration < self._slow_threshold
            and generation == self._generation
        ):
            self._quick_append(duration)
            return result
        self._record(generation, _SUCCESS, duration, now)
        return result

    def _logged_quick(self, generation: int, duration: float, now: float) -> bool:
        """Log a success lock-free if it is a quick one (see call()); whether it was."""
        if (
            now < self._quick_until
            and duration < self._slow_threshold
            and generation == self._generation
        ):
            self._quick_append(duration)
            return True
        return False

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await `fn(*args, **kwargs)` under the breaker; a cancelled call is ignored."""
        generation = self._free_generation
        if generation < 0:
            with self._acquire_locked(self._clock()):
                return await fn(*args, **kwargs)
        start = self._clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            now = self._clock()
            self._record(generation, self._classify(exc), now - start, now)
            raise
        now = self._clock()
        duration = now - start
        if not self._logged_quick(generation, duration, now):
            self._record(generation, _SUCCESS, duration, now)
        return result

    def guard(self) -> Permit:
        """Guard a `with` block: an exception escaping it is classified, else it is a success."""
        return self.acquire()

    # ----- operator controls ---------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until clear_override() (shadow mode only counts them)."""
        self._set_override(State.FORCED_OPEN)

    def force_closed(self) -> None:
        """Permit every call and keep counting, but never trip, until clear_override()."""
        self._set_override(State.FORCED_CLOSED)

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
            transition = self._enter(override or State.CLOSED, self._clock())
        if transition is not None:
            self._emit(transition, None)

    def reset(self) -> None:
        """Back to CLOSED with a fresh window and no backoff; lifetime counters are kept."""
        with self._lock:
            self._override = None
            transition = self._enter(State.CLOSED, self._clock())
        if transition is not None:
            self._emit(transition, None)

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
        if transition is not None:
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
        if transition is not None:
            self._emit(transition, None)
        return observation

    def _snapshot_locked(self, now: float) -> tuple[tuple[State, State] | None, BreakerSnapshot]:
        """A due OPEN -> HALF_OPEN transition (for listeners) and the snapshot (lock held)."""
        transition = self._due_transition(now)
        self._settle_quick()
        window = self._window
        window.expire(now)
        self._refresh_fast_path(now)  # the head may have moved, failures may have expired
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
            open_until=self._open_until if state is State.OPEN else None,
            times_opened=self._times_opened,
            half_open_in_flight=self._half_open_in_flight,
            half_open_successes=self._half_open_successes,
        )
        return transition, snapshot

    def track_durations(self, buckets: Sequence[float] | None = DEFAULT_BUCKETS) -> None:
        """Keep a histogram of call durations in `buckets` (seconds); None stops and drops it.

        Off by default: it is the one per-call cost that observation adds. Setting the same
        bounds again keeps the counts; other bounds start from zero.
        """
        histogram = None if buckets is None else DurationHistogram(buckets)
        with self._lock:
            self._settle_quick()
            current = self._histogram
            if histogram is not None and current is not None and current.bounds == histogram.bounds:
                return
            self._histogram = histogram

    def duration_histogram(self) -> HistogramSnapshot | None:
        """The duration histogram of calls that ran and were not ignored; None when off."""
        with self._lock:
            self._settle_quick()
            return None if self._histogram is None else self._histogram.snapshot()

    def transition_counts(self) -> dict[tuple[State, State], int]:
        """How many times each (from, to) transition has happened in this breaker's life."""
        with self._lock:
            return dict(self._transitions)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
