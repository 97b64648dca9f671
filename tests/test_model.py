"""Model-based test: random operations against a small reference model of DESIGN.md §3."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshbreaker import (
    BreakerConfig,
    CallNotPermittedError,
    CircuitBreaker,
    Permit,
    State,
    WindowType,
)
from meshbreaker.testing import FakeClock


class Model:
    """The reference: a plain list for the window, explicit states, no cleverness."""

    def __init__(self, cfg: BreakerConfig, now: float) -> None:
        self.cfg = cfg
        self.state = State.CLOSED
        self.generation = 0
        self.window: list[bool] = []  # True = failed
        self.consecutive = 0
        self.open_until = math.inf
        self.next_open = cfg.open_duration
        self.in_flight = 0
        self.successes = 0
        self.counts = {"successful": 0, "failed": 0, "ignored": 0, "rejected": 0}
        self.now = now
        self.since = now

    def enter(self, state: State) -> None:
        self.state = state
        self.generation += 1
        self.in_flight = 0
        self.successes = 0
        self.since = self.now
        if state is State.OPEN:
            self.open_until = self.now + self.next_open
            self.next_open = min(
                self.next_open * self.cfg.backoff_multiplier, self.cfg.open_duration_max
            )
        if state is State.CLOSED:
            self.window = []
            self.consecutive = 0
            self.next_open = self.cfg.open_duration

    def current_state(self) -> State:
        if self.state is State.OPEN and self.now >= self.open_until:
            self.enter(State.HALF_OPEN)
        wait = self.cfg.half_open_max_wait
        if self.state is State.HALF_OPEN and wait and self.now >= self.since + wait:
            self.enter(State.OPEN)
        return self.state

    def admit(self) -> int | None:
        state = self.current_state()
        if state in (State.OPEN, State.FORCED_OPEN):
            self.counts["rejected"] += 1
            return None
        if state is State.HALF_OPEN:
            if self.in_flight >= self.cfg.half_open_max_calls:
                self.counts["rejected"] += 1
                return None
            self.in_flight += 1
        return self.generation

    def finish(self, generation: int, outcome: str) -> None:
        if outcome == "ignored":
            self.counts["ignored"] += 1
            if generation == self.generation and self.state is State.HALF_OPEN:
                self.in_flight -= 1
            return
        failed = outcome == "failed"
        self.counts["failed" if failed else "successful"] += 1
        if generation != self.generation:
            return
        if self.state in (State.CLOSED, State.FORCED_CLOSED):
            self.window = ([*self.window, failed])[-self.cfg.window_size :]
            self.consecutive = self.consecutive + 1 if failed else 0
            if self.state is State.FORCED_CLOSED:
                return
            rate = sum(self.window) / len(self.window)
            if (
                self.cfg.consecutive_failures and self.consecutive >= self.cfg.consecutive_failures
            ) or (
                len(self.window) >= min(self.cfg.minimum_calls, self.cfg.window_size)
                and rate >= self.cfg.failure_rate_threshold
            ):
                self.enter(State.OPEN)
        elif self.state is State.HALF_OPEN:
            self.in_flight -= 1
            if failed:
                self.enter(State.OPEN)
            else:
                self.successes += 1
                if self.successes >= self.cfg.half_open_success_threshold:
                    self.enter(State.CLOSED)


class BreakerMachine(RuleBasedStateMachine):
    """Drives the real breaker and the model with the same operations."""

    @initialize(
        window_size=st.integers(1, 6),
        minimum_calls=st.integers(1, 6),
        consecutive=st.integers(0, 4),
        threshold=st.sampled_from([0.25, 0.5, 1.0]),
        half_open_max=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
    )
    def setup(
        self,
        window_size: int,
        minimum_calls: int,
        consecutive: int,
        threshold: float,
        half_open_max: int,
        success_threshold: int,
    ) -> None:
        cfg = BreakerConfig(
            window_type=WindowType.COUNT,
            window_size=window_size,
            minimum_calls=minimum_calls,
            consecutive_failures=consecutive,
            failure_rate_threshold=threshold,
            slow_call_duration=None,
            open_duration=5.0,
            open_duration_max=20.0,
            half_open_max_calls=half_open_max,
            half_open_success_threshold=success_threshold,
            half_open_max_wait=8.0,
        )
        self.clock = FakeClock()
        self.cb = CircuitBreaker("m", cfg, clock=self.clock)
        self.model = Model(cfg, self.clock())
        self.permits: list[tuple[Permit, int]] = []

    @rule()
    def acquire(self) -> None:
        expected = self.model.admit()
        try:
            permit = self.cb.acquire()
        except CallNotPermittedError:
            assert expected is None
            return
        assert expected is not None
        self.permits.append((permit, expected))

    @precondition(lambda self: self.permits)
    @rule(index=st.integers(0, 100), outcome=st.sampled_from(["successful", "failed", "ignored"]))
    def finish(self, index: int, outcome: str) -> None:
        permit, generation = self.permits.pop(index % len(self.permits))
        {"successful": permit.success, "failed": permit.failure, "ignored": permit.ignore}[
            outcome
        ]()
        self.model.finish(generation, outcome)

    @rule(outcome=st.sampled_from(["successful", "successful", "failed"]))
    def call(self, outcome: str) -> None:
        """A whole call through cb.call(): the lock-free quick success and the inline rejection."""
        expected = self.model.admit()

        def fn() -> None:
            if outcome == "failed":
                raise ConnectionError("down")

        try:
            self.cb.call(fn)
        except CallNotPermittedError:
            assert expected is None
            return
        except ConnectionError:
            pass
        assert expected is not None
        self.model.finish(expected, outcome)

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 12.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now = self.clock()

    @rule(override=st.sampled_from(["open", "closed", "clear"]))
    def force(self, override: str) -> None:
        if override == "open":
            self.cb.force_open()
            self.model.enter(State.FORCED_OPEN)
        elif override == "closed":
            self.cb.force_closed()
            self.model.enter(State.FORCED_CLOSED)
        elif self.cb.override is not None:
            self.cb.clear_override()
            self.model.enter(State.CLOSED)

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "cb"):
            assert self.cb.state is self.model.current_state()

    @rule()
    def agree(self) -> None:
        """Compare counts: a rule, not an invariant, since a snapshot settles quick successes."""
        snap = self.cb.snapshot()
        counts = self.model.counts
        assert (snap.successful, snap.failed, snap.ignored, snap.rejected) == (
            counts["successful"],
            counts["failed"],
            counts["ignored"],
            counts["rejected"],
        )
        if snap.state in (State.CLOSED, State.FORCED_CLOSED):
            assert snap.window_calls == len(self.model.window)
            assert snap.consecutive_failures == self.model.consecutive
        if snap.state is State.HALF_OPEN:
            assert snap.half_open_in_flight == self.model.in_flight


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
