"""The state machine of DESIGN.md §3, driven by a fake clock."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import Any

import pytest

from meshbreaker import (
    BreakerConfig,
    BulkheadFullError,
    CallNotPermittedError,
    CircuitBreaker,
    Mode,
    Outcome,
    Permit,
    State,
    WindowType,
)
from meshbreaker._quick import SLICE
from meshbreaker.breaker import CallResult
from meshbreaker.retry import RetryPolicy
from meshbreaker.testing import FakeClock

COUNT = WindowType.COUNT


def make(clock: FakeClock, **changes: Any) -> CircuitBreaker:
    base: dict[str, Any] = dict(
        window_type=COUNT,
        window_size=10,
        minimum_calls=4,
        consecutive_failures=0,
        slow_call_duration=None,
        open_duration=10.0,
        open_duration_max=80.0,
        half_open_max_calls=2,
        half_open_success_threshold=2,
    )
    base.update(changes)
    return CircuitBreaker("dep", BreakerConfig(**base), clock=clock)


def fail(cb: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        cb.acquire().failure()


def succeed(cb: CircuitBreaker, times: int = 1, duration: float | None = None) -> None:
    for _ in range(times):
        cb.acquire().success(duration)


def test_consecutive_failures_trip(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=3, minimum_calls=100)
    fail(cb, 2)
    succeed(cb)  # a success breaks the run
    fail(cb, 2)
    assert cb.state is State.CLOSED
    fail(cb)
    assert cb.state is State.OPEN
    assert cb.snapshot().times_opened == 1


def test_rate_trip_waits_for_minimum_calls(clock: FakeClock) -> None:
    cb = make(clock, minimum_calls=6, failure_rate_threshold=0.5)
    fail(cb, 3)
    succeed(cb, 2)
    assert cb.state is State.CLOSED  # 3/5 failed, but only 5 calls
    succeed(cb)  # 3/6 = 0.5 >= 0.5 once the minimum is reached
    assert cb.state is State.OPEN


def test_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    cb = make(clock, minimum_calls=4, failure_rate_threshold=0.5)
    for _ in range(20):
        succeed(cb, 2)
        fail(cb)
    assert cb.state is State.CLOSED
    assert cb.snapshot().failure_rate == pytest.approx(0.4, abs=0.1)


def test_slow_calls_trip(clock: FakeClock) -> None:
    cb = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=0.5, minimum_calls=4)
    succeed(cb, 2, duration=0.1)
    succeed(cb, 1, duration=1.0)
    assert cb.state is State.CLOSED
    succeed(cb, 1, duration=2.5)
    assert cb.state is State.OPEN
    snap = cb.snapshot()
    assert snap.slow == 2 and snap.failed == 0


def test_slow_measured_from_acquire_by_the_clock(clock: FakeClock) -> None:
    cb = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=1.0, minimum_calls=1)
    permit = cb.acquire()
    clock.advance(1.5)
    assert permit.elapsed() == pytest.approx(1.5)
    permit.success()
    assert cb.state is State.OPEN
    assert cb.snapshot().slow == 1


def test_count_window_evicts_oldest(clock: FakeClock) -> None:
    cb = make(clock, window_size=4, minimum_calls=4, failure_rate_threshold=0.75)
    fail(cb, 2)
    succeed(cb, 4)  # the two failures fall out
    snap = cb.snapshot()
    assert snap.window_calls == 4 and snap.failure_rate == 0.0
    fail(cb, 2)
    assert cb.snapshot().failure_rate == 0.5
    assert cb.state is State.CLOSED


def test_time_window_buckets_expire(clock: FakeClock) -> None:
    cb = make(
        clock,
        window_type=WindowType.TIME,
        window_size=5,
        minimum_calls=3,
        failure_rate_threshold=0.9,
    )
    fail(cb, 2)
    clock.advance(3)
    succeed(cb, 1)
    assert cb.snapshot().window_calls == 3
    clock.advance(2)  # the failures are now 5 s old: out of the window
    snap = cb.snapshot()
    assert snap.window_calls == 1 and snap.failure_rate == 0.0
    clock.advance(100)  # a long idle gap empties it
    assert cb.snapshot().window_calls == 0
    fail(cb, 2)
    assert cb.state is State.CLOSED  # 2 calls < minimum 3: the old calls do not count
    fail(cb)
    assert cb.snapshot().failure_rate == 1.0
    assert cb.state is State.OPEN


def test_open_to_half_open_is_lazy_and_rejects_meanwhile(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1)
    fail(cb)
    clock.advance(4)
    with pytest.raises(CallNotPermittedError) as info:
        cb.acquire()
    assert info.value.state is State.OPEN
    assert info.value.retry_after == pytest.approx(6.0)
    assert info.value.name == "dep"
    assert cb.snapshot().rejected == 1
    clock.advance(6)
    assert cb.snapshot().open_until is None or cb.state is State.HALF_OPEN
    assert cb.state is State.HALF_OPEN


def test_half_open_limits_probes_in_flight(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1, half_open_max_calls=2)
    fail(cb)
    clock.advance(10)
    first, second = cb.acquire(), cb.acquire()
    assert cb.try_acquire() is None
    assert cb.snapshot().half_open_in_flight == 2
    first.ignore()  # an ignored probe frees its slot
    third = cb.try_acquire()
    assert third is not None
    second.success()
    third.success()
    assert cb.state is State.CLOSED


def test_success_threshold_closes_with_fresh_window(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=0, minimum_calls=4, half_open_success_threshold=3)
    fail(cb, 4)
    assert cb.state is State.OPEN
    clock.advance(10)
    for _ in range(2):
        succeed(cb)
        assert cb.state is State.HALF_OPEN
    succeed(cb)
    assert cb.state is State.CLOSED
    snap = cb.snapshot()
    assert snap.window_calls == 0 and snap.failure_rate == 0.0 and snap.consecutive_failures == 0


def test_failure_in_half_open_reopens_with_backoff_up_to_max(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1, open_duration=10, open_duration_max=35)
    fail(cb)
    durations = []
    for _ in range(4):
        snap = cb.snapshot()
        assert snap.open_until is not None
        durations.append(snap.open_until - snap.state_since)
        clock.advance(durations[-1])
        fail(cb)  # the probe fails
        assert cb.state is State.OPEN
    assert durations == [10, 20, 35, 35]
    clock.advance(35)
    succeed(cb, 2)
    assert cb.state is State.CLOSED
    fail(cb)  # after closing, the backoff starts again from open_duration
    snap = cb.snapshot()
    assert snap.open_until is not None and snap.open_until - snap.state_since == 10


def test_slow_probe_reopens(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1, slow_call_duration=1.0)
    fail(cb)
    clock.advance(10)
    succeed(cb, duration=3.0)
    assert cb.state is State.OPEN


def test_jitter_stays_within_bounds(clock: FakeClock) -> None:
    spreads = set()
    for seed in range(50):
        values = iter([seed / 49])
        cb = CircuitBreaker(
            "j",
            BreakerConfig(consecutive_failures=1, open_duration=10, open_jitter=0.2),
            clock=clock,
            rng=values.__next__,
        )
        cb.acquire().failure()
        snap = cb.snapshot()
        assert snap.open_until is not None
        spread = snap.open_until - snap.state_since
        assert 8.0 - 1e-9 <= spread <= 12.0 + 1e-9
        spreads.add(round(spread, 3))
    assert min(spreads) == pytest.approx(8.0) and max(spreads) == pytest.approx(12.0)


def test_forced_open_rejects_and_forced_closed_never_trips(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1)
    cb.force_open()
    assert cb.state is State.FORCED_OPEN and cb.override is State.FORCED_OPEN
    with pytest.raises(CallNotPermittedError) as info:
        cb.acquire()
    assert info.value.retry_after == math.inf
    assert "override" in str(info.value)
    with pytest.raises(CallNotPermittedError) as through_call:
        cb.call(_ok)  # call()'s own lock-free rejection tells the same state
    assert (through_call.value.state, through_call.value.retry_after) == (
        State.FORCED_OPEN,
        math.inf,
    )
    clock.advance(1000)
    assert cb.state is State.FORCED_OPEN
    cb.force_closed()
    fail(cb, 20)
    snap = cb.snapshot()
    assert snap.state is State.FORCED_CLOSED and snap.failed == 20 and snap.window_calls == 10
    cb.clear_override()
    assert cb.state is State.CLOSED and cb.override is None
    assert cb.snapshot().window_calls == 0


def test_clearing_no_override_keeps_the_window(clock: FakeClock) -> None:
    cb = make(clock)
    fail(cb, 2)
    cb.clear_override()  # automatic already: not a return to CLOSED with a fresh window
    snap = cb.snapshot()
    assert snap.state is State.CLOSED and snap.window_calls == 2 and snap.failure_rate == 1.0


def test_shadow_mode_never_rejects_but_counts(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=2, mode=Mode.SHADOW, half_open_max_calls=1)
    fail(cb, 2)
    assert cb.state is State.OPEN  # the state it would be in
    for _ in range(5):
        cb.acquire().success()  # admitted all the same
    snap = cb.snapshot()
    assert snap.shadow_rejected == 5 and snap.rejected == 0 and snap.state is State.OPEN
    clock.advance(10)
    probe = cb.acquire()
    extra = cb.acquire()  # over the half-open limit: admitted, counted, moves nothing
    extra.failure()
    assert cb.state is State.HALF_OPEN
    probe.success()
    succeed(cb)
    assert cb.state is State.CLOSED
    assert cb.snapshot().shadow_rejected == 6
    cb.force_open()
    succeed(cb)
    assert cb.snapshot().shadow_rejected == 7


def test_stale_outcomes_never_move_the_state(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=2)
    old = [cb.acquire() for _ in range(5)]
    fail(cb, 2)
    assert cb.state is State.OPEN
    clock.advance(10)
    probe = cb.acquire()
    for permit in old:
        permit.failure()  # from the CLOSED generation: counted, but no reopen
    assert cb.state is State.HALF_OPEN
    assert cb.snapshot().failed == 7
    probe.success()
    succeed(cb)
    assert cb.state is State.CLOSED


def test_permit_reports_once(clock: FakeClock) -> None:
    cb = make(clock)
    permit = cb.acquire()
    permit.failure()
    permit.success()
    permit.ignore()
    snap = cb.snapshot()
    assert (snap.total, snap.failed, snap.successful, snap.ignored) == (1, 1, 0, 0)
    assert permit.done


@pytest.mark.parametrize("report", ["success", "failure", "ignore", "record", "exit"])
def test_done_turns_true_with_the_one_report_that_counts(clock: FakeClock, report: str) -> None:
    # Permit.done reads a flag the winning report sets (reading the deleted once-slot raised):
    # every way of reporting sets it, none before it is counted, later reports change nothing.
    cb = make(clock)
    permit = cb.acquire()
    assert not permit.done
    if report == "exit":
        with permit:
            pass
    elif report == "record":
        permit.record(Outcome.FAILURE)
    else:
        getattr(permit, report)()
    snap = cb.snapshot()
    assert permit.done and snap.successful + snap.failed + snap.ignored == 1
    permit.failure()
    assert permit.done and cb.snapshot() == snap


def test_the_getters_read_on_every_call_are_read_only(clock: FakeClock) -> None:
    # Permit.done, CircuitBreaker.config and retry_budget are C getters (no Python frame per
    # guarded call): each still reads its field as it is now, and none can be set.
    cb = make(clock)
    permit = cb.acquire()
    assert (permit.done, cb.config, cb.retry_budget) == (False, cb._config, None)
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    cb.update_config(cb.config.replace(retry=policy))
    permit.success()
    assert permit.done and cb.config.retry == policy and cb.retry_budget is cb._retry_budget
    assert cb.retry_budget is not None
    for owner, name in ((permit, "done"), (cb, "config"), (cb, "retry_budget")):
        with pytest.raises(AttributeError):
            setattr(owner, name, None)


def test_call_classifies_exceptions(clock: FakeClock) -> None:
    cb = CircuitBreaker(
        "c",
        BreakerConfig(consecutive_failures=0, minimum_calls=100),
        clock=clock,
        is_failure=lambda exc: not isinstance(exc, KeyError),
        ignore=lambda exc: isinstance(exc, InterruptedError),
    )
    for error in (ValueError(), KeyError(), InterruptedError()):
        with pytest.raises(type(error)):
            cb.call(_raise, error)
    assert cb.call(lambda x: x * 2, 21) == 42
    snap = cb.snapshot()
    assert (snap.failed, snap.successful, snap.ignored) == (1, 2, 1)


def _raise(error: BaseException) -> None:
    raise error


def test_guard_records_block(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=2)
    with cb.guard():
        pass
    for _ in range(2):
        with pytest.raises(RuntimeError), cb.guard():
            raise RuntimeError("boom")
    assert cb.state is State.OPEN
    with pytest.raises(CallNotPermittedError), cb.guard():
        pytest.fail("the block must not run")


def test_guard_gives_the_block_its_permit(clock: FakeClock) -> None:
    cb = make(clock)
    with cb.guard() as permit:
        assert isinstance(permit, Permit) and not permit.done
        permit.ignore()  # the block may report itself; the exit then reports nothing more
    snap = cb.snapshot()
    assert permit.done and (snap.ignored, snap.successful) == (1, 0)


async def test_call_async(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1)

    async def answer() -> int:
        await asyncio.sleep(0)
        return 7

    async def broken() -> None:
        raise ConnectionError

    assert await cb.call_async(answer) == 7
    with pytest.raises(ConnectionError):
        await cb.call_async(broken)
    with pytest.raises(CallNotPermittedError):
        await cb.call_async(answer)


async def test_call_async_cancellation_is_ignored(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1, minimum_calls=1)
    task = asyncio.ensure_future(cb.call_async(asyncio.sleep, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = cb.snapshot()
    assert snap.ignored == 1 and snap.failed == 0 and cb.state is State.CLOSED


def test_bulkhead_limits_in_flight(clock: FakeClock) -> None:
    cb = make(clock, max_concurrent_calls=2, consecutive_failures=1)
    a, b = cb.acquire(), cb.acquire()
    with pytest.raises(BulkheadFullError) as info:
        cb.acquire()
    assert "bulkhead" in str(info.value)
    assert cb.snapshot().rejected == 1 and cb.snapshot().failed == 0
    a.success()
    c = cb.acquire()
    b.success()
    c.success()
    assert cb.state is State.CLOSED


def test_listeners_get_transitions_and_results(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1)
    transitions: list[tuple[str, State, State]] = []
    results: list[CallResult] = []
    cb.on_state_change(lambda *event: transitions.append(event))
    unsubscribe = cb.on_call_result(results.append)
    fail(cb)
    clock.advance(10)
    succeed(cb, 2, duration=0.5)
    assert transitions == [
        ("dep", State.CLOSED, State.OPEN),
        ("dep", State.OPEN, State.HALF_OPEN),
        ("dep", State.HALF_OPEN, State.CLOSED),
    ]
    assert [r.outcome for r in results] == [Outcome.FAILURE, Outcome.SUCCESS, Outcome.SUCCESS]
    assert results[1].duration == 0.5
    unsubscribe()
    succeed(cb)
    assert len(results) == 3


def test_listener_may_call_back_into_breaker(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1)
    seen: list[object] = []
    cb.on_state_change(lambda name, old, new: seen.append((cb.state, cb.snapshot().state)))
    cb.on_call_result(lambda result: seen.append(cb.snapshot().total))
    fail(cb)  # would deadlock if listeners ran under the lock
    assert (State.OPEN, State.OPEN) in seen and 1 in seen


def _broken_listener(*args: object) -> None:
    raise ZeroDivisionError("the listener is broken")


def test_raising_listener_is_logged_and_harmless(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cb = make(clock, consecutive_failures=1)
    cb.on_state_change(_broken_listener)
    cb.on_call_result(_broken_listener)
    with caplog.at_level(logging.ERROR, logger="meshbreaker.breaker"):
        assert cb.call(lambda: "ok") == "ok"
        with pytest.raises(KeyError):
            cb.call(_raise, KeyError("mine"))
    assert cb.state is State.OPEN
    assert sum("raised" in r.getMessage() for r in caplog.records) >= 3


def test_update_config_keeps_window_when_shape_unchanged(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=5, minimum_calls=100)
    fail(cb, 3)
    cb.update_config(cb.config.replace(failure_rate_threshold=0.9))
    snap = cb.snapshot()
    assert snap.window_calls == 3 and snap.consecutive_failures == 3
    fail(cb, 2)
    assert cb.state is State.OPEN  # the kept run of failures reached five


def test_update_config_restarts_window_when_shape_changes(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=5, minimum_calls=100)
    fail(cb, 3)
    cb.update_config(cb.config.replace(window_size=20))
    snap = cb.snapshot()
    assert snap.window_calls == 0 and snap.consecutive_failures == 0 and snap.failed == 3
    cb.update_config(cb.config.replace(window_type=WindowType.TIME, window_size=20))
    fail(cb, 4)
    assert cb.state is State.CLOSED


def test_update_config_applies_new_limits_live(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1, half_open_max_calls=1)
    fail(cb)
    clock.advance(10)
    cb.acquire()
    assert cb.try_acquire() is None
    cb.update_config(cb.config.replace(half_open_max_calls=3))
    assert cb.try_acquire() is not None


def test_reset_closes_and_keeps_lifetime_counters(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=1)
    fail(cb)
    cb.reset()
    snap = cb.snapshot()
    assert snap.state is State.CLOSED and snap.failed == 1 and snap.window_calls == 0


def test_snapshot_fields(clock: FakeClock) -> None:
    cb = make(clock, slow_call_duration=1.0, failure_rate_threshold=0.9)
    succeed(cb, 1, duration=0.5)
    succeed(cb, 1, duration=1.5)
    fail(cb, 2)
    cb.acquire().ignore()
    snap = cb.snapshot()
    assert snap.name == "dep" and snap.total == 5
    assert (snap.successful, snap.failed, snap.ignored, snap.slow) == (2, 2, 1, 1)
    assert snap.window_calls == 4
    assert snap.failure_rate == 0.5 and snap.slow_call_rate == 0.25
    assert snap.state_since == 1000.0


def _ok() -> None:
    """A call that succeeds at once."""


def test_quick_successes_through_call_are_counted_and_expire_with_their_bucket(
    clock: FakeClock,
) -> None:
    cb = make(clock, window_type=WindowType.TIME, window_size=3)
    for _ in range(5):
        cb.call(_ok)
    clock.advance(1.0)
    cb.call(_ok)
    snap = cb.snapshot()
    assert (snap.successful, snap.total, snap.window_calls) == (6, 6, 6)
    clock.advance(2.0)  # the first second leaves the 3-second window
    assert cb.snapshot().window_calls == 1
    clock.advance(1.0)
    assert cb.snapshot().window_calls == 0
    assert cb.snapshot().successful == 6


def test_a_success_through_call_can_complete_minimum_calls_and_trip(clock: FakeClock) -> None:
    cb = make(clock, minimum_calls=4, failure_rate_threshold=0.5)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            cb.call(_raise, ConnectionError("down"))
    assert cb.state is State.CLOSED  # 3 calls: below minimum_calls
    cb.call(_ok)  # the 4th call: 75% failures
    assert cb.state is State.OPEN


def test_a_success_through_call_resets_the_consecutive_count(clock: FakeClock) -> None:
    cb = make(clock, consecutive_failures=2, minimum_calls=100, window_size=100)
    for _ in range(10):
        cb.call(_ok)  # quick successes first: the path must close once a failure is in
    with pytest.raises(ConnectionError):
        cb.call(_raise, ConnectionError("down"))
    cb.call(_ok)
    with pytest.raises(ConnectionError):
        cb.call(_raise, ConnectionError("down"))
    assert cb.state is State.CLOSED
    with pytest.raises(ConnectionError):
        cb.call(_raise, ConnectionError("down"))
    assert cb.state is State.OPEN


@pytest.mark.parametrize("window_type", [WindowType.TIME, WindowType.COUNT])
def test_the_quick_success_log_is_settled_every_slice_of_time(
    clock: FakeClock, window_type: WindowType
) -> None:
    cb = make(clock, window_type=window_type, window_size=3600)
    longest = 0
    for _ in range(3000):
        cb.call(_ok)
        clock.advance(SLICE / 100)  # 100 calls per slice
        longest = max(longest, len(cb._quick))
    assert 90 <= longest <= 101  # bounded by time without any reader
    assert cb.snapshot().window_calls == 3000


def test_removing_the_last_result_listener_gives_successes_the_quick_log_back(
    clock: FakeClock,
) -> None:
    # A speed invariant (QuickSuccesses): closed while a listener waits for each CallResult,
    # open again the moment the last one leaves, not only after the next locked outcome.
    cb = make(clock)
    unsubscribe = cb.on_call_result(lambda result: None)
    cb.call(_ok)
    assert len(cb._quick) == 0  # reported under the lock, to the listener
    unsubscribe()
    cb.call(_ok)
    assert len(cb._quick) == 1  # logged lock-free
    assert cb.snapshot().successful == 2


def test_a_new_window_starts_without_the_quick_successes_logged_before_it(
    clock: FakeClock,
) -> None:
    # update_config settles the quick log first: those successes belong to the old window.
    cb = make(clock)
    for _ in range(3):
        cb.call(_ok)
    assert len(cb._quick) == 3  # logged lock-free, not counted yet
    cb.update_config(cb.config.replace(window_size=20))
    snapshot = cb.snapshot()
    assert (snapshot.successful, snapshot.window_calls) == (3, 0)


def test_the_quick_log_closes_at_exactly_its_end(clock: FakeClock) -> None:
    # QuickSuccesses.log(): open while now < until, so a success at `until` goes under the lock.
    cb = make(clock)
    cb.call(_ok)
    assert len(cb._quick) == 1
    clock.advance(SLICE)  # exactly the end of the slice the log was opened for
    cb.call(_ok)
    assert len(cb._quick) == 0  # settled under the lock with the first
    assert cb.snapshot().successful == 2


def test_successes_reported_under_the_lock_by_call_hold_no_slot(clock: FakeClock) -> None:
    # call() admitted them without a slot: a bulkhead added later still counts every slot out.
    cb = make(clock)
    cb.on_call_result(lambda result: None)  # no quick log: each success takes the lock
    for _ in range(3):
        cb.call(_ok)
    cb.update_config(cb.config.replace(max_concurrent_calls=1))
    held = cb.acquire()
    with pytest.raises(BulkheadFullError):
        cb.acquire()
    held.success()


def test_a_retry_policy_removed_takes_its_budget_away(clock: FakeClock) -> None:
    cb = make(clock, retry=RetryPolicy(max_attempts=2))
    assert cb.retry_budget is not None
    cb.update_config(cb.config.replace(retry=None))
    assert cb.retry_budget is None


def test_states_format_as_their_names(clock: FakeClock) -> None:
    assert f"{State.HALF_OPEN:>10}|{State.OPEN:<6}|" == " HALF_OPEN|OPEN  |"


def test_result_listeners_see_every_success_through_call(clock: FakeClock) -> None:
    cb = make(clock)
    for _ in range(3):
        cb.call(_ok)  # before the listener: quick
    seen: list[CallResult] = []
    cb.on_call_result(seen.append)
    for _ in range(4):
        cb.call(_ok)
    assert [result.outcome for result in seen] == [Outcome.SUCCESS] * 4
    assert cb.snapshot().successful == 7


class _CountingLock:
    """A lock that counts its acquisitions."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.acquired = 0

    def acquire(self) -> bool:
        self.acquired += 1
        return self.inner.acquire()

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def test_quick_successes_through_call_take_no_lock(clock: FakeClock) -> None:
    cb = make(clock, window_type=WindowType.TIME, window_size=10)
    lock = _CountingLock()
    cb._lock = lock  # type: ignore[assignment]  # a counting stand-in for the Lock
    cb.call(_ok)  # the first call of a fresh window may settle; the rest must not lock
    before = lock.acquired
    for _ in range(500):
        cb.call(_ok)
    assert lock.acquired == before
    clock.advance(1.0)  # a new second: the window's head moves on, the quick log with it
    cb.call(_ok)  # the first call of the new second may settle; the rest must not lock
    before = lock.acquired
    for _ in range(500):
        cb.call(_ok)
    assert lock.acquired == before
    with pytest.raises(ConnectionError):
        cb.call(_raise, ConnectionError("down"))
    assert lock.acquired == before + 1  # a failure takes the lock once
    assert cb.snapshot().successful == 1002


def test_a_call_admitted_with_no_permit_holds_no_slot_when_reported_by_one(
    clock: FakeClock,
) -> None:
    """permit_for()'s Permit gives back no slot: a bulkhead added later still counts each one."""
    cb = make(clock)
    for report in ("success", "failure", "ignore"):
        generation = cb.admit_free(clock())
        assert generation is not None
        getattr(cb.permit_for(generation, clock()), report)()
    cb.update_config(cb.config.replace(max_concurrent_calls=1))
    held = cb.acquire()
    with pytest.raises(BulkheadFullError):
        cb.acquire()
    held.success()


def test_a_snapshot_that_sees_the_failures_expire_reopens_the_quick_log(clock: FakeClock) -> None:
    """Once a snapshot finds the window's failures expired, successes take no lock again."""
    cb = make(clock, window_type=WindowType.TIME, window_size=10, minimum_calls=100)
    with pytest.raises(ConnectionError):
        cb.call(_raise, ConnectionError("down"))
    cb.call(_ok)  # the failure in the window: under the lock
    clock.advance(11.0)
    assert cb.snapshot().window_calls == 0  # the failure has expired
    lock = _CountingLock()
    cb._lock = lock  # type: ignore[assignment]  # a counting stand-in for the Lock
    for _ in range(3):
        cb.call(_ok)
    assert lock.acquired == 0
    assert len(cb._quick) == 3


def test_the_fake_clock_moves_only_forward() -> None:
    """FakeClock is monotonic: it starts where told, advances, and refuses to go back."""
    clock = FakeClock(5.0)
    clock.advance(0.0)
    clock.advance(1.5)
    assert clock() == 6.5
    with pytest.raises(ValueError, match="backward"):
        clock.advance(-0.001)
    assert clock() == 6.5


def test_a_quick_success_through_call_counts_how_long_it_ran(clock: FakeClock) -> None:
    """call()'s lock-free successes keep their own durations: the window's mean shows them."""
    cb = make(clock)

    def takes(seconds: float) -> None:
        clock.advance(seconds)

    cb.call(takes, 1 / 128)  # binary fractions: the clock's sums are exact
    cb.call(takes, 1 / 1024)
    assert len(cb._quick) == 2  # both logged lock-free
    assert cb.snapshot().mean_duration == (1 / 128 + 1 / 1024) / 2
