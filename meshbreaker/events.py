"""What a breaker tells its listeners: call results, and events of one small kind-tagged shape."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from meshbreaker._types import Outcome, State


@dataclass(frozen=True, slots=True)
class CallResult:
    """One finished call, as seen by on_call_result listeners."""

    name: str
    outcome: Outcome
    duration: float
    slow: bool


class EventKind(str, enum.Enum):
    """What happened to a breaker."""

    TRANSITION = "transition"  # the state changed (`previous` -> `state`)
    NOT_PERMITTED = "not_permitted"  # a call was rejected (`state` rejected it)
    RESET = "reset"  # reset(): back to CLOSED with a fresh window
    CONFIG_UPDATED = "config_updated"  # update_config() applied a new config


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """One event of one breaker, as seen by on_event listeners."""

    kind: EventKind
    name: str
    state: State
    at: float  # by the breaker's clock
    previous: State | None = None  # TRANSITION only


StateListener = Callable[[str, State, State], None]
CallResultListener = Callable[[CallResult], None]
EventListener = Callable[[BreakerEvent], None]
