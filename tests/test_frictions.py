"""Frictions a new user hit outside the CLI, each kept fixed by a test."""

from __future__ import annotations

import logging

import pytest

from meshbreaker import BreakerConfig, CircuitBreaker, Mode, State, WindowType
from meshbreaker.testing import FakeClock


def test_listener_logs_print_state_names(caplog: pytest.LogCaptureFixture) -> None:
    """The README's listener logs "CLOSED -> OPEN", not "State.CLOSED -> State.OPEN"."""
    breaker = CircuitBreaker("payments", BreakerConfig(consecutive_failures=1), clock=FakeClock())
    log = logging.getLogger("tests.listener")
    breaker.on_state_change(lambda name, old, new: log.warning("%s: %s -> %s", name, old, new))
    with caplog.at_level(logging.WARNING, logger="tests.listener"):
        breaker.acquire().failure()
    assert caplog.messages == ["payments: CLOSED -> OPEN"]
    assert f"{State.HALF_OPEN}|{Mode.SHADOW}|{WindowType.TIME:>5}" == "HALF_OPEN|shadow| time"
    assert State("OPEN") is State.OPEN and State.OPEN == "OPEN"  # still a str enum
