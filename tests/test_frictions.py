"""Frictions a new user hit outside the CLI, each kept fixed by a test."""

from __future__ import annotations

import logging

import pytest

from meshbreaker import BreakerConfig, CircuitBreaker, ConfigError, Mode, State, WindowType
from meshbreaker.config import merge_layers
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


def test_an_open_duration_past_the_default_cap_raises_the_cap_as_the_cli_does() -> None:
    """One rule for BreakerConfig and `policy put --open-duration 120`: a cap left at its default
    rises to a longer open duration; a cap that was set must still be >= it."""
    assert BreakerConfig(open_duration=120).open_duration_max == 120.0
    assert BreakerConfig().replace(open_duration=300).open_duration_max == 300.0
    assert BreakerConfig(open_duration=30).open_duration_max == 60.0
    assert merge_layers(BreakerConfig(), [{"open_duration": 120}]).open_duration_max == 120.0
    with pytest.raises(ConfigError, match="open_duration_max: must be >= open_duration"):
        BreakerConfig(open_duration=120, open_duration_max=90)
