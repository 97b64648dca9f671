"""Model-based test: random operations against a small reference model of DESIGN.md §3.

The model is plain on purpose (a list for the window, explicit states, no quick path, no lazy
anything); the machine drives the real breaker and the model with the same operations, COUNT
and TIME windows, slow calls, the bulkhead, shadow mode, live config changes and
half_open_max_wait included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshbreaker import (
    BreakerConfig,
    CallNotPermittedError,
    CircuitBreaker,
    Mode,
    Permit,
    State,
    WindowType,
)
from meshbreaker.testing import FakeClock

STALE = -1
SLOW = 1.0  # slow_call_duration of every config here


@dataclass(frozen=True)
class Entry:
    """One call in the model's window."""

    failed: bool
    slow: bool
    second: int


@dataclass
class Admitted:
    """A permit the model granted: its generation and whether it holds a bulkhead slot."""

    generation: int
    holds_slot: bool


class Model:
    """The reference: explicit states, a list for the window, every rule written out."""

    def __init__(self, cfg: BreakerConfig, now: float) -> None:
        self.cfg = cfg
        self.now = now
        self.state = State.CLOSED
        self.generation = 0
        self.since = now
        self.window: list[Entry] = []
        self.consecutive = 0
        self.open_until = math.inf
        self.openings_in_row = 0
        self.in_flight = 0  # half-open probes
        self.successes = 0
        self.slots = 0  # bulkhead
        self.counts = dict.fromkeys(
            ("successful", "failed", "ignored", "slow", "rejected", "shadow_rejected"), 0
        )
        self.enter(State.CLOSED)

    def open_period(self) -> float:
        cfg = self.cfg
        grown = cfg.open_duration * cfg.backoff_multiplier ** (self.openings_in_row - 1)
        return min(grown, cfg.open_duration_max)

    def enter(self, state: State) -> None:
        self.state = state
        self.generation += 1
        self.since = self.now
        self.in_flight = 0
        self.successes = 0
        if state is State.OPEN:
            self.openings_in_row += 1
            self.open_until = self.now + self.open_period()
        if state is State.CLOSED:
            self.window = []
            self.consecutive = 0
            self.openings_in_row = 0

    def entries(self) -> list[Entry]:
        """What the window holds now."""
        size = self.cfg.window_size
        if self.cfg.window_type is WindowType.COUNT:
            return self.window[-size:]
        return [entry for entry in self.window if entry.second > int(self.now) - size]

    def current_state(self) -> State:
        if self.state is State.OPEN and self.now >= self.open_until:
            self.enter(State.HALF_OPEN)
        wait = self.cfg.half_open_max_wait
        if self.state is State.HALF_OPEN and wait and self.now >= self.since + wait:
            self.enter(State.OPEN)
        return self.state

    def admit(self) -> Admitted | None:
        state = self.current_state()
        denied = state in (State.OPEN, State.FORCED_OPEN)
        half_open_slot = False
        if state is State.HALF_OPEN:
            denied = self.in_flight >= self.cfg.half_open_max_calls
            half_open_slot = not denied
        bulkhead = self.cfg.max_concurrent_calls
        if not denied and bulkhead is not None and self.slots >= bulkhead:
            denied = True
            half_open_slot = False
        if half_open_slot:
            self.in_flight += 1
        generation = self.generation
        if denied:
            if self.cfg.mode is not Mode.SHADOW:
                self.counts["rejected"] += 1
                return None
            self.counts["shadow_rejected"] += 1
            generation = STALE
        holds_slot = bulkhead is not None
        self.slots += holds_slot
        return Admitted(generation, holds_slot)

    def finish(self, admitted: Admitted, outcome: str, duration: float) -> None:
        self.slots -= admitted.holds_slot
        generation = admitted.generation
        if outcome == "ignored":
            self.counts["ignored"] += 1
            if generation == self.generation and self.state is State.HALF_OPEN:
                self.in_flight -= 1
            return
        failed = outcome == "failed"
        slow = not failed and duration >= SLOW
        self.counts["failed" if failed else "successful"] += 1
        self.counts["slow"] += slow
        if generation != self.generation:
            return
        if self.state in (State.CLOSED, State.FORCED_CLOSED):
            self.window.append(Entry(failed, slow, int(self.now)))
            self.consecutive = self.consecutive + 1 if failed else 0
            if self.state is State.CLOSED and self.trips():
                self.enter(State.OPEN)
        elif self.state is State.HALF_OPEN:
            if self.current_state() is not State.HALF_OPEN:
                return  # undecided for too long: back to OPEN before this outcome
            self.in_flight -= 1
            if failed or slow:
                self.enter(State.OPEN)
            else:
                self.successes += 1
                if self.successes >= self.cfg.half_open_success_threshold:
                    self.enter(State.CLOSED)

    def trips(self) -> bool:
        cfg = self.cfg
        if cfg.consecutive_failures and self.consecutive >= cfg.consecutive_failures:
            return True
        entries = self.entries()
        minimum = cfg.minimum_calls
        if cfg.window_type is WindowType.COUNT:
            minimum = min(minimum, cfg.window_size)
        if not entries or len(entries) < minimum:
            return False
        failures = sum(entry.failed for entry in entries) / len(entries)
        slow = sum(entry.slow for entry in entries) / len(entries)
        return failures >= cfg.failure_rate_threshold or slow >= cfg.slow_call_rate_threshold

    def update(self, cfg: BreakerConfig) -> None:
        old = self.cfg
        self.cfg = cfg
        if (old.window_type, old.window_size) != (cfg.window_type, cfg.window_size):
            self.window = []
            self.consecutive = 0
        if self.state is State.OPEN:
            self.open_until = self.since + self.open_period()


configs = st.builds(
    BreakerConfig,
    window_type=st.sampled_from([WindowType.COUNT, WindowType.TIME]),
    window_size=st.integers(1, 6),
    minimum_calls=st.integers(1, 6),
    consecutive_failures=st.integers(0, 4),
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 1.0]),
    slow_call_rate_threshold=st.sampled_from([0.5, 1.0]),
    slow_call_duration=st.just(SLOW),
    open_duration=st.sampled_from([2.0, 5.0]),
    open_duration_max=st.just(20.0),
    half_open_max_calls=st.integers(1, 3),
    half_open_success_threshold=st.integers(1, 3),
    half_open_max_wait=st.sampled_from([0.0, 8.0]),
    max_concurrent_calls=st.sampled_from([None, None, 1, 2]),
    mode=st.sampled_from([Mode.ENFORCE, Mode.ENFORCE, Mode.SHADOW]),
)


class BreakerMachine(RuleBasedStateMachine):
    """Drives the real breaker and the model with the same operations."""

    @initialize(cfg=configs)
    def setup(self, cfg: BreakerConfig) -> None:
        self.clock = FakeClock()
        self.cb = CircuitBreaker("m", cfg, clock=self.clock)
        self.model = Model(cfg, self.clock())
        self.permits: list[tuple[Permit, Admitted]] = []
        self.free: list[tuple[int, float, Admitted]] = []  # admit_free()'s calls in flight

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
    @rule(
        index=st.integers(0, 100),
        outcome=st.sampled_from(["successful", "failed", "ignored"]),
        duration=st.sampled_from([0.1, 0.5, 2.0]),
    )
    def finish(self, index: int, outcome: str, duration: float) -> None:
        permit, admitted = self.permits.pop(index % len(self.permits))
        if outcome == "successful":
            permit.success(duration)
        elif outcome == "failed":
            permit.failure(duration)
        else:
            permit.ignore()
        self.model.finish(admitted, outcome, 0.0 if outcome == "ignored" else duration)

    @rule()
    def admit_free(self) -> None:
        """A call admitted with no Permit: only where it owes nothing back (no slot, no probe)."""
        start = self.clock()
        generation = self.cb.admit_free(start)
        owes_nothing = self.model.cfg.max_concurrent_calls is None and (
            self.model.current_state() in (State.CLOSED, State.FORCED_CLOSED)
        )
        assert (generation is not None) is owes_nothing
        if generation is not None:
            expected = self.model.admit()
            assert expected is not None and not expected.holds_slot
            self.free.append((generation, start, expected))

    @precondition(lambda self: self.free)
    @rule(
        index=st.integers(0, 100),
        outcome=st.sampled_from(["successful", "successful", "failed", "ignored"]),
        duration=st.sampled_from([0.0, 0.5, 2.0]),
    )
    def finish_free(self, index: int, outcome: str, duration: float) -> None:
        """finish_free() for a success (lock-free while the log is open), permit_for() else."""
        generation, start, admitted = self.free.pop(index % len(self.free))
        self.clock.advance(duration)
        self.model.now = self.clock()
        if outcome == "successful":
            self.cb.finish_free(generation, start)
        elif outcome == "failed":
            self.cb.permit_for(generation, start).failure()
        else:
            self.cb.permit_for(generation, start).ignore()
        elapsed = self.clock() - start  # time since admission, advances meanwhile included
        self.model.finish(admitted, outcome, 0.0 if outcome == "ignored" else elapsed)

    @rule(outcome=st.sampled_from(["successful", "successful", "failed"]))
    def call(self, outcome: str) -> None:
        """A whole call through cb.call(): the lock-free quick success and the fast rejection."""
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
        self.model.finish(expected, outcome, 0.0)  # the fake clock stands still during fn

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 12.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now = self.clock()

    @rule(cfg=configs)
    def update_config(self, cfg: BreakerConfig) -> None:
        self.cb.update_config(cfg)
        self.model.update(cfg)

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
        assert (
            snap.successful,
            snap.failed,
            snap.ignored,
            snap.slow,
            snap.rejected,
            snap.shadow_rejected,
        ) == (
            counts["successful"],
            counts["failed"],
            counts["ignored"],
            counts["slow"],
            counts["rejected"],
            counts["shadow_rejected"],
        )
        if snap.state in (State.CLOSED, State.FORCED_CLOSED):
            entries = self.model.entries()
            assert snap.window_calls == len(entries)
            assert snap.consecutive_failures == self.model.consecutive
            if entries:
                failures = sum(entry.failed for entry in entries) / len(entries)
                assert math.isclose(snap.failure_rate, failures)
        if snap.state is State.HALF_OPEN:
            assert snap.half_open_in_flight == self.model.in_flight
        if snap.state is State.OPEN:
            assert snap.open_until == self.model.open_until


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=80, stateful_step_count=30)
