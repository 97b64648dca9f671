"""Windows against a naive reference: same aggregates after any sequence of adds and expiries."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshbreaker.window import CountWindow, TimeWindow

if TYPE_CHECKING:
    from _typeshed import TraceFunction

# (failed, slow, duration, seconds to advance before the call, settle logged successes now)
calls = st.lists(
    st.tuples(
        st.booleans(),
        st.booleans(),
        st.sampled_from([0.0, 0.25, 1.0]),
        st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5, 7.0, 40.0]),
        st.booleans(),
    ),
    max_size=60,
)
Calls = list[tuple[bool, bool, float, float, bool]]


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 8), sequence=calls)
def test_count_window_matches_reference(size: int, sequence: Calls) -> None:
    window = CountWindow(size)
    reference: list[tuple[bool, bool, float]] = []
    logged: list[float] = []  # plain successes, settled in batches as the breaker does
    for failed, slow, duration, _, settle in sequence:
        reference = [*reference, (failed, slow, duration)][-size:]
        if failed or slow:
            if logged:
                window.add_successes(logged)
                logged = []
            window.add(failed, slow, duration, 0.0)
        else:
            logged.append(duration)
            if not settle:
                continue
            window.add_successes(logged)
            logged = []
        assert window.quick_until == math.inf
        assert window.calls == len(reference)
        assert window.failures == sum(f for f, _, _ in reference)
        assert window.slow == sum(s for _, s, _ in reference)
        assert window.duration_sum == pytest.approx(sum(d for _, _, d in reference))


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 8), sequence=calls, probe=st.booleans())
def test_time_window_matches_reference(size: int, sequence: Calls, probe: bool) -> None:
    now = 1000.0
    window = TimeWindow(size, now)
    reference: list[tuple[float, bool, bool, float]] = []
    logged: list[float] = []  # plain successes, logged while the head is current
    for failed, slow, duration, advance, settle in sequence:
        if now + advance >= window.quick_until and logged:
            window.add_successes(logged)  # the breaker settles before the head can move
            logged = []
        now += advance
        if probe:
            window.expire(now)  # a snapshot in between
        reference.append((now, failed, slow, duration))
        if failed or slow or now >= window.quick_until:
            if logged:
                window.add_successes(logged)
                logged = []
            window.add(failed, slow, duration, now)
        else:
            logged.append(duration)
            if not settle:
                continue
            window.add_successes(logged)
            logged = []
        # A call belongs to the one-second bucket of its epoch; the window keeps `size` buckets.
        live = [r for r in reference if int(r[0]) > int(now) - size]
        assert window.calls == len(live)
        assert window.failures == sum(r[1] for r in live)
        assert window.slow == sum(r[2] for r in live)
        assert window.duration_sum == pytest.approx(sum(r[3] for r in live))


def test_time_window_idle_gap_longer_than_window_empties_it() -> None:
    window = TimeWindow(10, 0.0)
    for second in range(10):
        window.add(True, False, 0.1, float(second))
    assert window.calls == 10
    window.expire(25.0)
    assert (window.calls, window.failures, window.duration_sum) == (0, 0, 0.0)
    window.add(False, False, 0.1, 25.5)
    window.expire(30.0)
    assert window.calls == 1  # slot reuse after the reset did not subtract stale buckets


def _lines_executed(run: Callable[[], None]) -> int:
    """Python lines executed by `run`: a deterministic measure of work, unlike a timer."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        run()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("kind", ["count", "time"])
def test_window_work_per_call_does_not_depend_on_its_size(kind: str) -> None:
    def workload(size: int) -> Callable[[], None]:
        window = CountWindow(size) if kind == "count" else TimeWindow(size, 0.0)

        def run() -> None:
            for step in range(400):
                now = step * 0.5  # two calls a second: buckets fill, then expire one by one
                if step % 3 == 0:
                    window.add(True, step % 2 == 0, 0.1, now)
                else:
                    window.add_successes([0.1])
                if step % 50 == 0:
                    window.expire(now)

        return run

    small, large = _lines_executed(workload(10)), _lines_executed(workload(10_000))
    # The larger window evicts nothing (it never fills), so it may do a little less; never more.
    assert large <= small * 1.05, (small, large)
    assert large >= small * 0.5


def test_a_late_report_counts_in_the_newest_second_of_a_time_window() -> None:
    """A report timed before the head second counts in its bucket: the head never moves back."""
    window = TimeWindow(2, 1000.0)
    window.add(True, False, 0.1, 1001.5)
    window.add(True, False, 0.1, 1000.9)  # read before the first, reported after it
    assert window.quick_until == 1002.0
    window.expire(1002.5)  # second 1000 leaves the window; both failures are in 1001
    assert (window.calls, window.failures) == (2, 2)
