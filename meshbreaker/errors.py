"""The exception hierarchy: everything meshbreaker raises derives from MeshbreakerError."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshbreaker._types import State


class MeshbreakerError(Exception):
    """Root of every error meshbreaker raises."""


class ConfigError(MeshbreakerError, ValueError):
    """A configuration value is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CallNotPermittedError(MeshbreakerError):
    """The breaker rejected the call without running it.

    Built as `CallNotPermittedError(name, state, retry_after)`. The fields live in `args`, so
    construction runs no Python code: a rejection has to be cheaper than the call it saves.
    A subclass whose other bases reset `args` must set it again.
    """

    args: tuple[str, State, float]

    @property
    def name(self) -> str:
        """The breaker's name (for gRPC: the method, maybe prefixed by a target)."""
        return self.args[0]

    @property
    def state(self) -> State:
        """The state that rejected the call."""
        return self.args[1]

    @property
    def retry_after(self) -> float:
        """Seconds until the next probe may go (0 when unknown, inf when forced open)."""
        return self.args[2]

    def __str__(self) -> str:
        name, state, retry_after = self.args
        if retry_after == math.inf:
            return f"circuit breaker '{name}' is {state.value} by an operator override"
        return f"circuit breaker '{name}' is {state.value}; next probe in {retry_after:.3f}s"


class BulkheadFullError(CallNotPermittedError):
    """The breaker's max_concurrent_calls are all in flight."""

    def __str__(self) -> str:
        return f"circuit breaker '{self.args[0]}' bulkhead is full (max_concurrent_calls reached)"


class CliError(MeshbreakerError):
    """A user-facing error of the `meshbreaker` command: printed as one line, exit status 1."""
