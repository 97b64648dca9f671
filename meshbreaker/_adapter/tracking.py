"""Tracker: reports one call's final status on its permit, exactly once."""

from __future__ import annotations

import logging

import grpc

from meshbreaker._adapter.guard import Guard, release
from meshbreaker.breaker import CircuitBreaker, Permit

logger = logging.getLogger(__name__)


class Tracker:
    """Reports one call's final status on its permit, once; the sync and aio trackers extend it."""

    __slots__ = ("_breaker", "_guard", "_permit", "first")

    def __init__(self, guard: Guard, breaker: CircuitBreaker, permit: Permit) -> None:
        self._guard = guard
        self._breaker = breaker
        self._permit = permit
        self.first: float | None = None

    def finish(self, code: grpc.StatusCode | None, details: str | None = None) -> None:
        """Record the final status (`details` for UNAVAILABLE); only the first report counts."""
        if not self._permit.done:
            self._guard.record(self._permit, self._breaker, code, self.first, details=details)

    def first_message(self) -> None:
        """Note the first response message's arrival (the slow-call measure for streams)."""
        try:
            self.first = self._permit.elapsed()
        except Exception:
            logger.exception("meshbreaker: timing the first message failed")
            self.first = 0.0

    def release(self) -> None:
        """The caller gave up on the call: ignore its outcome and free the permit."""
        release(self._permit)
