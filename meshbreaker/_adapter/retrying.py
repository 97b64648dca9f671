"""Retries for the sync and aio shells: when a method retries, and what one attempt's end says.

The shells only loop (sleeping with time.sleep or asyncio.sleep); every decision is here and in
meshbreaker.retry. Every attempt takes its own permit, so it passes the breaker, the throttle and
the bulkhead; a local refusal is never retried (the shells return it at once).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

import grpc

from meshbreaker._adapter.guard import CODE_NAMES, is_lb_drop
from meshbreaker.breaker import CircuitBreaker
from meshbreaker.retry import PUSHBACK_METADATA_KEY, RetryRun, parse_pushback

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# How grpc core words a call that failed before any connection took it: the request never left.
_NOT_CONNECTED: Final = "failed to connect to all addresses"
_MAX_PUSHBACK_VALUES: Final = 4  # more is hostile; parse_pushback reads two as "do not retry"


def retry_run(breaker: CircuitBreaker, timeout: float | None) -> RetryRun | None:
    """The retries of one call to `breaker`'s method, or None when its policy retries nothing.

    `timeout` is the caller's (seconds, None = none): the deadline every attempt shares.
    """
    config = breaker.config
    policy, budget = config.retry, breaker.retry_budget
    if policy is None or budget is None or policy.max_attempts < 2:
        return None
    deadline = None if timeout is None else time.monotonic() + timeout
    return RetryRun(policy, budget, idempotent=config.idempotent, deadline=deadline)


def next_delay(
    run: RetryRun,
    code: grpc.StatusCode | None,
    details: str | None,
    initial_metadata: Iterable[Any] | None,
    trailing_metadata: Iterable[Any] | None,
) -> float | None:
    """Seconds before the next attempt after one that ended with `code`; None = do not retry."""
    if code is None or is_lb_drop(code, details):
        return None  # a balancer's drop is a local refusal: never retried
    unsent = (
        code is _UNAVAILABLE
        and not tuple(initial_metadata or ())
        and (details or "").startswith(_NOT_CONNECTED)
    )
    pushback = parse_pushback(_pushback_values(trailing_metadata))
    name = CODE_NAMES.get(code, "UNKNOWN")
    return run.next_delay(name, sent=not unsent, pushback=pushback, now=time.monotonic())


def remaining(run: RetryRun) -> float | None:
    """The timeout the next attempt gets: what is left of the shared deadline."""
    if run.deadline is None:
        return None
    return max(run.deadline - time.monotonic(), 0.0)


def _pushback_values(metadata: Iterable[Any] | None) -> list[str]:
    values: list[Any] = []
    for key, value in metadata or ():
        if key == PUSHBACK_METADATA_KEY:
            if len(values) == _MAX_PUSHBACK_VALUES:
                break
            values.append(value.decode("ascii", "replace") if isinstance(value, bytes) else value)
    return [value for value in values if isinstance(value, str)]
