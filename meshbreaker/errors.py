"""The exception hierarchy: everything meshbreaker raises derives from MeshbreakerError."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshbreaker.config import State


class MeshbreakerError(Exception):
    """Root of every error meshbreaker raises."""


class ConfigError(MeshbreakerError, ValueError):
    """A configuration value is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CallNotPermittedError(MeshbreakerError):
    """The breaker rejected the call without running it."""

    # Built on every rejection, so __init__ stores three fields and nothing else;
    # the message is only formatted when somebody reads it.
    def __init__(self, name: str, state: State, retry_after: float) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after == math.inf:
            return f"circuit breaker '{self.name}' is {self.state.value} by an operator override"
        return (
            f"circuit breaker '{self.name}' is {self.state.value}; "
            f"next probe in {self.retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.state, self.retry_after))


class BulkheadFullError(CallNotPermittedError):
    """The breaker's max_concurrent_calls are all in flight."""

    def __str__(self) -> str:
        return f"circuit breaker '{self.name}' bulkhead is full (max_concurrent_calls reached)"
