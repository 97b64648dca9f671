"""The bulkhead: max_concurrent_calls in flight, and slots that are always given back."""

from __future__ import annotations

import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, BulkheadFullError, CircuitBreaker
from meshbreaker.testing import FakeClock

METHOD = "/bank.v1.AccountService/GetBalance"
BULKHEAD = BreakerConfig(max_concurrent_calls=1)


def test_a_slot_taken_before_the_bulkhead_is_removed_is_given_back(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", BULKHEAD, clock=clock)
    permit = cb.acquire()
    cb.update_config(BreakerConfig())  # no bulkhead: the quick path opens
    permit.success()  # a slot-holding permit never takes it
    cb.update_config(BULKHEAD)
    cb.acquire().success()  # the slot is free again
    cb.acquire().success()


def test_replace_policies_cannot_leak_a_slot(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    registry.set_policy(METHOD, BULKHEAD)
    breaker = registry.get(METHOD)
    permit = breaker.acquire()
    registry.replace_policies({})
    permit.success()
    registry.replace_policies({METHOD: BULKHEAD})
    for _ in range(3):
        with breaker.guard():
            pass


def test_a_full_bulkhead_rejects_and_frees_on_every_outcome(clock: FakeClock) -> None:
    cb = CircuitBreaker("dep", BreakerConfig(max_concurrent_calls=2), clock=clock)
    first, second = cb.acquire(), cb.acquire()
    with pytest.raises(BulkheadFullError):
        cb.acquire()
    first.failure()
    third = cb.acquire()
    second.ignore()
    third.success()
    assert cb.snapshot().rejected == 1
    with cb.guard(), cb.guard():
        pass  # both slots free again
