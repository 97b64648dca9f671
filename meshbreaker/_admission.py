"""BreakerAdmission: the locked _before()/_after() pair that admits calls and counts outcomes."""

from __future__ import annotations

from meshbreaker._machine import (
    CLOSED,
    FAILURE,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    IGNORED,
    OPEN,
    STALE,
    SUCCESS,
    UNTIL_CLEARED,
    BreakerMachine,
    Transition,
)
from meshbreaker._permit import Permit
from meshbreaker._types import Outcome
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ThrottledError
from meshbreaker.events import CallResult, EventKind


class BreakerAdmission(BreakerMachine):
    """Admission (`_before`) and outcomes (`_after`), each under the one short lock."""

    __slots__ = ()

    # ----- admission: _before --------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit for one call, or CallNotPermittedError when the breaker rejects it."""
        generation = self._free_generation
        now = self._clock()
        if generation is not None and now < self._free_until:  # admit_free(), inline
            return Permit(self, generation, now, False)
        return self._before(now)

    # ----- the permit-less path: admit_free()/finish_free() ---------------------------

    def admit_free(self, now: float) -> int | None:
        """The generation of a call starting at `now`, admitted with no Permit; None: acquire().

        For adapters that report each call exactly once by construction. The invariant: a call
        admitted here owes nothing back, since `_free_generation` is set only while the breaker
        is CLOSED or FORCED_CLOSED with no bulkhead (no slot, no probe place to return), and
        `now < _free_until` only while its throttle can refuse nothing (_refresh says why). So
        its report only counts: finish_free() once, or permit_for() for any other report. No
        Permit stands guard: a second report counts twice, a missing one is lost. acquire()
        makes the same check inline (a frame less on every call it admits).
        """
        generation = self._free_generation
        if generation is not None and now < self._free_until:
            return generation
        return None

    def finish_free(self, generation: int, start: float) -> None:
        """Report that a call admit_free() admitted at `start` succeeded (exactly once)."""
        now = self._clock()
        duration = now - start
        if not self._quick.log(generation, duration, now):
            self._after(generation, SUCCESS, duration, now, False)

    def permit_for(self, generation: int, start: float) -> Permit:
        """The Permit of a call admit_free() admitted at `start`, to report any outcome by."""
        return Permit(self, generation, start, False)

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
            state = FORCED_OPEN if reject_until == UNTIL_CLEARED else OPEN
            if self._event_listeners:
                self._emit_event(EventKind.NOT_PERMITTED, state, now)
            raise CallNotPermittedError(self.name, state, reject_until - now)
        self._lock.acquire()
        try:
            transition = self._due_transition(now)
            state = self._state
            generation = self._generation
            denied: CallNotPermittedError | None = None
            if state is OPEN or state is FORCED_OPEN:
                retry_after = self._open_until - now if state is OPEN else UNTIL_CLEARED
                denied = CallNotPermittedError(self.name, state, retry_after)
            elif state is HALF_OPEN:
                if self._half_open_in_flight < self._config.half_open_max_calls:
                    self._half_open_in_flight += 1
                else:
                    denied = CallNotPermittedError(self.name, state, 0.0)
            elif state is CLOSED and self._throttle is not None:
                # Probes (HALF_OPEN) and an operator's FORCED_CLOSED are never throttled.
                self._settle()
                if not self._throttle.admit(now, count=not self._shadow):
                    denied = ThrottledError(self.name, state, 0.0)
                self._refresh(now)
            if denied is None and self._bulkhead is not None and self._in_flight >= self._bulkhead:
                if state is HALF_OPEN:
                    self._half_open_in_flight -= 1
                denied = BulkheadFullError(self.name, state, 0.0)
            if denied is not None:
                if self._shadow:
                    self._shadow_rejected += 1
                    generation = STALE  # admitted only in the shadow: its outcome moves nothing
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
        permit._done = True  # only after the deletion won (Permit's slots say why)
        now = self._clock()
        if duration is None:
            duration = now - permit._start
        if permit._holds_slot:
            self._after(permit._generation, outcome, duration, now, True)
        elif outcome is not SUCCESS or not self._quick.log(permit._generation, duration, now):
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
                if limiter is not None and outcome is not IGNORED:
                    failed = outcome is FAILURE
                    self._bulkhead = limiter.update(duration, failed, self._in_flight + 1, now)
            transition = self._count(generation, outcome, duration, now)
        finally:
            self._lock.release()
        if transition is not None or self._result_listeners:
            result = None
            if self._result_listeners:
                slow = outcome is SUCCESS and duration >= self._slow_threshold
                result = CallResult(self.name, outcome, duration, slow)
            self._emit(transition, result)

    def _count(
        self, generation: int, outcome: Outcome, duration: float, now: float
    ) -> Transition | None:
        """Count one outcome and move the state if it is current (lock held)."""
        if outcome is IGNORED:
            self._ignored += 1
            if generation == self._generation and self._state is HALF_OPEN:
                self._half_open_in_flight -= 1
            return None
        failed = outcome is FAILURE
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
        if state is CLOSED or state is FORCED_CLOSED:
            self._settle()
            window = self._window
            window.add(failed, slow, duration, now)
            self._consecutive = self._consecutive + 1 if failed else 0
            # A window with neither failures nor slow calls cannot trip.
            transition = self._closed_verdict(now) if window.failures or window.slow else None
            if transition is None:
                self._refresh(now)
            return transition
        if state is HALF_OPEN:
            transition = self._due_transition(now)
            if transition is not None:
                return transition  # undecided too long: this outcome came too late
            self._half_open_in_flight -= 1
            if failed or slow:
                return self._enter(OPEN, now)
            self._half_open_successes += 1
            if self._half_open_successes >= self._config.half_open_success_threshold:
                return self._enter(CLOSED, now)
        return None

    def _closed_verdict(self, now: float) -> Transition | None:
        """Trip if the run of failures or the window's rates say so (lock held, CLOSED)."""
        if self._state is not CLOSED:
            return None
        config = self._config
        if 0 < config.consecutive_failures <= self._consecutive:
            return self._enter(OPEN, now)
        window = self._window
        calls = window.calls
        if calls >= self._minimum_calls and (
            window.failures / calls >= config.failure_rate_threshold
            or window.slow / calls >= config.slow_call_rate_threshold
        ):
            return self._enter(OPEN, now)
        return None

    def _classify(self, exc: BaseException) -> Outcome:
        # Cancellation, KeyboardInterrupt and SystemExit say nothing about the dependency.
        if not isinstance(exc, Exception) or self._is_ignored(exc):
            return IGNORED
        return FAILURE if self._is_failure(exc) else SUCCESS
