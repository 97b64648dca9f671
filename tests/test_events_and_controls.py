"""on_event listeners, manual transitions (half-open now, open_for), results as failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from meshbreaker import (
    BreakerConfig,
    BreakerEvent,
    CallNotPermittedError,
    CircuitBreaker,
    EventKind,
    State,
    circuit,
)
from meshbreaker.testing import FakeClock
from tests.lock_support import LockWatchingClock


def make(clock: FakeClock, **changes: Any) -> CircuitBreaker:
    config = BreakerConfig(consecutive_failures=1, open_duration=10.0).replace(**changes)
    return CircuitBreaker("dep", config, clock=clock)


def _ok() -> str:
    return "ok"


def test_rejections_and_resets_reach_event_listeners(clock: FakeClock) -> None:
    cb = make(clock)
    events: list[BreakerEvent] = []
    cb.on_event(events.append)
    cb.acquire().failure()
    with pytest.raises(CallNotPermittedError):
        cb.call(_ok)  # the lock-free rejection
    cb.force_open()
    with pytest.raises(CallNotPermittedError):
        cb.acquire()
    cb.reset()
    kinds = [(event.kind, event.state) for event in events]
    assert kinds == [
        (EventKind.TRANSITION, State.OPEN),
        (EventKind.NOT_PERMITTED, State.OPEN),
        (EventKind.TRANSITION, State.FORCED_OPEN),
        (EventKind.NOT_PERMITTED, State.FORCED_OPEN),
        (EventKind.TRANSITION, State.CLOSED),
        (EventKind.RESET, State.CLOSED),
    ]
    assert events[0].previous is State.CLOSED and events[0].name == "dep"
    assert all(event.at == clock() for event in events)


def test_half_open_and_bulkhead_rejections_are_events(clock: FakeClock) -> None:
    cb = make(clock, half_open_max_calls=1, max_concurrent_calls=5)
    events: list[BreakerEvent] = []
    cb.acquire().failure()
    clock.advance(10.0)
    cb.acquire()
    unsubscribe = cb.on_event(events.append)
    assert cb.try_acquire() is None
    unsubscribe()
    assert cb.try_acquire() is None
    assert [(e.kind, e.state) for e in events] == [(EventKind.NOT_PERMITTED, State.HALF_OPEN)]


def test_a_raising_event_listener_never_breaks_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cb = make(clock)

    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("listener bug")

    cb.on_event(broken)
    cb.acquire().failure()
    with pytest.raises(CallNotPermittedError):
        cb.acquire()
    assert "event listener of breaker 'dep' raised" in caplog.text


def test_config_updates_are_events(clock: FakeClock) -> None:
    cb = make(clock)
    events: list[BreakerEvent] = []
    cb.on_event(events.append)
    cb.update_config(cb.config.replace(open_duration=5.0))
    assert [e.kind for e in events] == [EventKind.CONFIG_UPDATED]


def test_overrides_and_their_clearing_reach_state_listeners(clock: FakeClock) -> None:
    cb = make(clock)
    changes: list[tuple[str, State, State]] = []
    cb.on_state_change(lambda name, old, new: changes.append((name, old, new)))
    cb.force_open()
    cb.force_closed()
    cb.clear_override()
    cb.clear_override()  # nothing to clear: no transition
    assert changes == [
        ("dep", State.CLOSED, State.FORCED_OPEN),
        ("dep", State.FORCED_OPEN, State.FORCED_CLOSED),
        ("dep", State.FORCED_CLOSED, State.CLOSED),
    ]


def test_observe_tells_listeners_of_the_transition_it_makes(clock: FakeClock) -> None:
    cb = make(clock)
    changes: list[tuple[State, State]] = []
    cb.on_state_change(lambda name, old, new: changes.append((old, new)))
    cb.acquire().failure()
    clock.advance(10.0)
    observation = cb.observe()  # the first to look after the open period moves it on
    assert observation.snapshot.state is State.HALF_OPEN
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]
    assert observation.transitions[(State.OPEN, State.HALF_OPEN)] == 1


@pytest.mark.parametrize("look", ["state", "snapshot"])
def test_reading_the_state_or_a_snapshot_tells_listeners_of_the_transition_it_makes(
    clock: FakeClock, look: str
) -> None:
    """The first to look after the open period moves the breaker on and tells listeners."""
    cb = make(clock)
    changes: list[tuple[State, State]] = []
    cb.on_state_change(lambda name, old, new: changes.append((old, new)))
    cb.acquire().failure()
    clock.advance(10.0)
    state = cb.state if look == "state" else cb.snapshot().state
    assert state is State.HALF_OPEN
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_a_later_opening_follows_the_config_again_after_open_for(clock: FakeClock) -> None:
    cb = make(clock, half_open_max_calls=1, half_open_success_threshold=1)
    cb.open_for(100.0)  # a period of its own, which a config change leaves alone
    cb.transition_to_half_open()
    cb.acquire().failure()  # the probe fails: an ordinary opening, by the config
    opened_at = clock()
    cb.update_config(cb.config.replace(open_duration=45.0, open_duration_max=45.0))
    assert cb.snapshot().open_until == pytest.approx(opened_at + 45.0)  # it follows the change


def test_transition_to_half_open_lets_probes_go_now(clock: FakeClock) -> None:
    cb = make(clock, half_open_max_calls=1, half_open_success_threshold=1)
    cb.acquire().failure()
    cb.transition_to_half_open()
    assert cb.state is State.HALF_OPEN
    cb.acquire().success()
    assert cb.state is State.CLOSED
    cb.force_open()
    cb.transition_to_half_open()  # clears the override
    assert cb.override is None and cb.state is State.HALF_OPEN


@pytest.mark.parametrize("override", ["force_open", "force_closed"])
def test_open_for_clears_an_override(clock: FakeClock, override: str) -> None:
    cb = make(clock)
    getattr(cb, override)()
    cb.open_for(3.0)
    assert (cb.override, cb.state) == (None, State.OPEN)
    clock.advance(3.0)
    assert cb.state is State.HALF_OPEN  # the period ends as any open_for's does


def test_open_for_and_keep_open_tell_listeners_of_the_transitions_they_make(
    clock: FakeClock,
) -> None:
    """open_for() tells the opening it makes; keep_open() the OPEN -> HALF_OPEN it finds due."""
    cb = make(clock)
    changes: list[tuple[State, State]] = []
    cb.on_state_change(lambda name, old, new: changes.append((old, new)))
    cb.open_for(3.0)
    cb.open_for(5.0)  # already OPEN: only its end moves
    assert changes == [(State.CLOSED, State.OPEN)]
    clock.advance(5.0)
    assert not cb.keep_open(1.0)  # the period had ended: HALF_OPEN, left alone
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_open_for_opens_for_the_given_time_then_probes(clock: FakeClock) -> None:
    cb = make(clock)
    cb.open_for(3.0)
    with pytest.raises(CallNotPermittedError) as info:
        cb.acquire()
    assert info.value.retry_after == pytest.approx(3.0)
    cb.update_config(cb.config.replace(open_duration=100.0, open_duration_max=1000.0))
    clock.advance(3.0)  # a new config does not stretch a manual period
    assert cb.state is State.HALF_OPEN
    cb.acquire().failure()  # the probe fails: the configured backoff applies again
    snapshot = cb.snapshot()
    assert snapshot.open_until is not None
    assert snapshot.open_until - snapshot.state_since == 100.0 * 2


def test_open_for_on_an_open_breaker_moves_its_end_without_a_second_opening(
    clock: FakeClock,
) -> None:
    cb = make(clock, consecutive_failures=1, open_duration=10.0, open_duration_max=1000.0)
    cb.acquire().failure()
    opened = cb.snapshot()
    clock.advance(4.0)
    cb.open_for(30.0)  # e.g. a server's Retry-After: 30
    snapshot = cb.snapshot()
    assert (snapshot.times_opened, snapshot.state_since) == (1, opened.state_since)
    assert snapshot.open_until == cb.clock() + 30.0
    clock.advance(30.0)
    assert cb.state is State.HALF_OPEN
    cb.acquire().failure()  # the second opening backs off once, not twice
    reopened = cb.snapshot()
    assert reopened.times_opened == 2
    assert reopened.open_until is not None
    assert reopened.open_until - reopened.state_since == 10.0 * 2


def test_keep_open_lengthens_the_current_opening_up_to_open_duration_max(
    clock: FakeClock,
) -> None:
    cb = make(clock, open_duration_max=60.0)
    cb.acquire().failure()
    opened = cb.snapshot()
    clock.advance(4.0)
    assert cb.keep_open(30.0)  # a server's Retry-After: 30
    snapshot = cb.snapshot()
    assert (snapshot.times_opened, snapshot.state_since) == (1, opened.state_since)
    assert snapshot.open_until == cb.clock() + 30.0
    assert not cb.keep_open(2.0)  # never shortens
    assert cb.snapshot().open_until == cb.clock() + 30.0
    assert cb.keep_open(99_999.0)  # capped: a server's word never holds it past the max
    assert cb.snapshot().open_until == cb.clock() + 60.0
    cb.update_config(cb.config.replace(open_duration=1.0))
    assert cb.snapshot().open_until == cb.clock() + 60.0  # a new config keeps the server's end
    with pytest.raises(CallNotPermittedError) as info:
        cb.acquire()
    assert info.value.retry_after == 60.0  # the lock-free rejection reads the new end


def test_keep_open_leaves_a_breaker_alone_unless_it_is_open(clock: FakeClock) -> None:
    cb = make(clock)
    assert not cb.keep_open(30.0)
    assert cb.state is State.CLOSED  # a Retry-After never opens a closed breaker
    cb.acquire().failure()
    clock.advance(10.0)  # the open period has ended; HALF_OPEN is due but not yet made
    assert not cb.keep_open(30.0)
    snapshot = cb.snapshot()
    assert (snapshot.state, snapshot.times_opened) == (State.HALF_OPEN, 1)  # no second opening
    probe = cb.acquire()
    assert not cb.keep_open(30.0) and cb.state is State.HALF_OPEN
    probe.success()
    cb.force_open()
    assert not cb.keep_open(30.0) and cb.state is State.FORCED_OPEN


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_keep_open_refuses_what_is_not_a_period(clock: FakeClock, seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds must be finite and >= 0"):
        make(clock).keep_open(seconds)


@pytest.mark.parametrize("control", ["open_for", "keep_open"])
@pytest.mark.parametrize("seconds", [True, "3"])
def test_a_period_that_is_no_number_is_refused_as_such(
    clock: FakeClock, control: str, seconds: object
) -> None:
    """A bool or a string is no period, whatever it would compare as."""
    cb = make(clock)
    with pytest.raises(TypeError, match="seconds must be a number"):
        getattr(cb, control)(seconds)
    assert cb.state is State.CLOSED


@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan")])
def test_open_for_refuses_what_is_not_a_period(clock: FakeClock, seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds must be finite and > 0"):
        make(clock).open_for(seconds)


def test_results_can_count_as_failures(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=2)

    def fetch(*, is_failure: str) -> dict[str, str]:  # a keyword that must not collide
        return {"status": is_failure}

    def bad(result: dict[str, str]) -> bool:
        return result["status"] == "error"

    assert cb.call_checked(bad, fetch, is_failure="ok") == {"status": "ok"}
    assert cb.call_checked(bad, fetch, is_failure="error") == {"status": "error"}
    assert cb.snapshot().consecutive_failures == 1
    guarded = circuit(cb, is_failure=bad)(fetch)
    assert guarded(is_failure="error") == {"status": "error"}
    assert cb.state is State.OPEN


def test_async_results_can_count_as_failures(clock: FakeClock) -> None:
    cb = make(clock)

    async def status() -> int:
        return 503

    @circuit(cb, is_failure=lambda code: code >= 500)
    async def decorated() -> int:
        return await status()

    assert asyncio.run(decorated()) == 503
    assert cb.state is State.OPEN
    cb.reset()
    assert asyncio.run(cb.call_async_checked(lambda code: code >= 500, status)) == 503
    assert cb.state is State.OPEN


def test_transition_to_half_open_tells_listeners(clock: FakeClock) -> None:
    cb = make(clock)
    changes: list[tuple[State, State]] = []
    cb.on_state_change(lambda name, old, new: changes.append((old, new)))
    cb.acquire().failure()
    cb.transition_to_half_open()
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_repr_names_the_breaker_and_its_state(clock: FakeClock) -> None:
    cb = make(clock)
    cb.acquire().failure()
    assert repr(cb) == "CircuitBreaker('dep', state=OPEN)"


CONTROLS: dict[str, Callable[[CircuitBreaker], object]] = {
    "reset": CircuitBreaker.reset,
    "force_open": CircuitBreaker.force_open,
    "force_closed": CircuitBreaker.force_closed,
    "transition_to_half_open": CircuitBreaker.transition_to_half_open,
    "open_for": lambda cb: cb.open_for(5.0),
    "keep_open": lambda cb: cb.keep_open(5.0),
    "update_config": lambda cb: cb.update_config(cb.config.replace(open_duration=5.0)),
    "on_event": lambda cb: cb.on_event(lambda event: None)(),
}


@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_operator_controls_change_the_breaker_under_its_lock(control: str) -> None:
    """Each control reads the clock with the lock taken, so no call's outcome interleaves."""
    clock = LockWatchingClock()
    cb = make(clock)
    cb.acquire().failure()  # OPEN, so every control has something to change
    clock.watch(cb._lock)
    CONTROLS[control](cb)
    assert clock.taken and all(clock.taken)
