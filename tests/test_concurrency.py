"""Real threads: half-open admission cannot be overrun, and totals add up exactly."""

from __future__ import annotations

import contextlib
import random
import threading

from meshbreaker import BreakerConfig, CallNotPermittedError, CircuitBreaker, State, WindowType
from meshbreaker.testing import FakeClock


def test_half_open_admits_at_most_max_calls_under_a_thread_race(clock: FakeClock) -> None:
    cb = CircuitBreaker(
        "race",
        BreakerConfig(consecutive_failures=1, open_duration=1.0, half_open_max_calls=3),
        clock=clock,
    )
    cb.acquire().failure()
    clock.advance(1.0)
    start = threading.Barrier(50)
    release = threading.Event()
    lock = threading.Lock()
    in_flight = peak = admitted = 0

    def probe() -> None:
        nonlocal in_flight, peak, admitted
        start.wait()
        try:
            permit = cb.acquire()
        except CallNotPermittedError:
            return
        with lock:
            in_flight += 1
            admitted += 1
            peak = max(peak, in_flight)
        release.wait(5)
        with lock:
            in_flight -= 1
        permit.success()

    threads = [threading.Thread(target=probe) for _ in range(50)]
    for thread in threads:
        thread.start()
    while cb.snapshot().rejected < 47:
        threading.Event().wait(0.001)
    assert cb.snapshot().half_open_in_flight == 3
    release.set()
    for thread in threads:
        thread.join()
    assert peak == 3 and admitted == 3
    assert cb.state is State.CLOSED


def test_totals_add_up_under_eight_threads() -> None:
    cb = CircuitBreaker(
        "stress",
        BreakerConfig(
            window_type=WindowType.COUNT,
            window_size=100,
            minimum_calls=20,
            failure_rate_threshold=0.3,
            consecutive_failures=0,
            open_duration=0.0005,
            open_duration_max=0.0005,
            half_open_max_calls=2,
            half_open_success_threshold=2,
        ),
    )
    calls_per_thread = 50_000
    outcomes = {"ok": 0, "failed": 0, "ignored": 0, "rejected": 0}
    lock = threading.Lock()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        local = dict.fromkeys(outcomes, 0)
        for _ in range(calls_per_thread):
            try:
                permit = cb.acquire()
            except CallNotPermittedError:
                local["rejected"] += 1
                continue
            roll = rng.random()
            if roll < 0.25:
                permit.failure()
                local["failed"] += 1
            elif roll < 0.3:
                permit.ignore()
                local["ignored"] += 1
            else:
                permit.success()
                local["ok"] += 1
        with lock:
            for key, value in local.items():
                outcomes[key] += value

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = cb.snapshot()
    assert sum(outcomes.values()) == 8 * calls_per_thread
    assert snap.successful == outcomes["ok"]
    assert snap.failed == outcomes["failed"]
    assert snap.ignored == outcomes["ignored"]
    assert snap.rejected == outcomes["rejected"]
    assert snap.total + snap.rejected == 8 * calls_per_thread
    assert snap.times_opened > 0  # the mix really did move the state around
    assert 0 <= snap.half_open_in_flight <= 2


def test_totals_and_histogram_add_up_through_call_under_eight_threads() -> None:
    """cb.call()'s lock-free quick successes race locked failures and transitions."""
    cb = CircuitBreaker(
        "stress-call",
        BreakerConfig(
            window_type=WindowType.COUNT,
            window_size=20,  # failures leave it quickly, so the quick path keeps reopening
            minimum_calls=10,
            failure_rate_threshold=0.5,
            consecutive_failures=5,
            open_duration=0.0005,
            open_duration_max=0.0005,
            half_open_max_calls=2,
            half_open_success_threshold=2,
        ),
    )
    cb.track_durations()
    calls_per_thread = 30_000
    outcomes = {"ok": 0, "failed": 0, "rejected": 0}
    lock = threading.Lock()

    def boom() -> None:
        raise ConnectionError("down")

    def work(offset: int) -> None:
        local = dict.fromkeys(outcomes, 0)
        for index in range(calls_per_thread):
            failing = (index + offset * 97) % 500 < 8  # bursts of failures between long runs
            try:
                cb.call(boom if failing else int)
            except CallNotPermittedError:
                local["rejected"] += 1
            except ConnectionError:
                local["failed"] += 1
            else:
                local["ok"] += 1
        with lock:
            for key, value in local.items():
                outcomes[key] += value

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = cb.snapshot()
    histogram = cb.duration_histogram()
    assert histogram is not None
    assert snap.successful == outcomes["ok"]
    assert snap.failed == outcomes["failed"]
    assert snap.rejected == outcomes["rejected"]
    assert snap.total + snap.rejected == 8 * calls_per_thread
    assert histogram.count == outcomes["ok"] + outcomes["failed"]  # every call that ran, once
    assert snap.times_opened > 10
    assert len(cb._quick) == 0  # the snapshot settled everything logged


def test_racing_reports_of_one_permit_count_once() -> None:
    cb = CircuitBreaker("once", BreakerConfig(window_type=WindowType.COUNT, window_size=10))
    permits = [cb.acquire() for _ in range(20_000)]
    start = threading.Barrier(4)

    def report(kind: int) -> None:
        start.wait()
        for permit in permits:
            if kind % 2:
                permit.success()
            else:
                permit.failure()

    threads = [threading.Thread(target=report, args=(kind,)) for kind in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = cb.snapshot()
    assert snap.successful + snap.failed == len(permits)
    assert all(permit.done for permit in permits)


def test_an_observation_is_consistent_while_calls_run() -> None:
    cb = CircuitBreaker("observed", BreakerConfig(window_type=WindowType.COUNT, window_size=50))
    cb.track_durations()
    started = threading.Event()
    calls_per_thread = 5_000

    def boom() -> None:
        raise ConnectionError("down")

    def work(seed: int) -> None:
        rng = random.Random(seed)
        started.wait()
        for _ in range(calls_per_thread):
            with contextlib.suppress(ConnectionError, CallNotPermittedError):
                cb.call(boom if rng.random() < 0.01 else int)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    observations = [cb.observe()]  # before any call: the calls below all run after it
    started.set()
    try:
        # However the threads are scheduled, observations are taken until they have all ended,
        # and one after: no count of observations has to fit in one GIL switch interval.
        while any(thread.is_alive() for thread in threads):
            observations.append(cb.observe())
        observations.append(cb.observe())
    finally:
        for thread in threads:
            thread.join()
    for observed in observations:
        assert observed.durations is not None
        snap = observed.snapshot
        assert observed.durations.count == snap.successful + snap.failed
        assert sum(observed.transitions.values()) >= snap.times_opened
    first, last = observations[0].snapshot, observations[-1].snapshot
    assert first.total + first.rejected == 0
    assert last.total + last.rejected == 4 * calls_per_thread  # every call ran, and was seen
