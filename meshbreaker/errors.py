"""The exception hierarchy: everything meshbreaker raises derives from MeshbreakerError.

One tree, written here: the engine's errors, the control plane's (store, agent) and the CLI's.
Only the gRPC shells subclass CallNotPermittedError elsewhere, to add grpc's own error types.
"""

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


class ThrottledError(CallNotPermittedError):
    """Adaptive throttling refused the call locally: the dependency accepts too few calls.

    Not a breaker rejection: counted apart, and never retried.
    """

    def __str__(self) -> str:
        return (
            f"adaptive throttling refused a call to '{self.args[0]}' locally "
            "(the dependency accepts too few of the calls sent to it)"
        )


class CliError(MeshbreakerError):
    """A user-facing error of the `meshbreaker` command: printed as one line, exit status 1."""


class AgentError(MeshbreakerError):
    """The agent was misused (e.g. started after being stopped)."""


class StoreError(MeshbreakerError):
    """A store operation was refused; nothing was written."""


class RevisionMismatchError(StoreError):
    """The store revision is not the expected one (compare-and-set failed)."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected store revision {expected}, but it is {actual}")
        self.expected = expected
        self.actual = actual


class PolicyNotFoundError(StoreError):
    """No policy has that id."""

    def __init__(self, policy_id: str) -> None:
        super().__init__(f"no policy with id {policy_id!r}")
        self.policy_id = policy_id


class ClusterNotFoundError(StoreError):
    """No xDS cluster has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no xDS cluster named {name!r}")
        self.name = name


class EndpointLimitError(StoreError):
    """An xDS cluster holds as many endpoints as it may: no more can register."""

    def __init__(self, cluster: str, limit: int) -> None:
        super().__init__(
            f"xDS cluster {cluster!r} holds {limit} endpoints, the most it may: "
            "deregister some, or split the servers over several clusters"
        )
        self.cluster = cluster
        self.limit = limit


class StoreUnavailableError(StoreError):
    """The store cannot be reached (or did not answer in time); nothing is known to be written."""


class CompactedError(StoreError):
    """The changes after `since_revision` are no longer in the history: re-list instead."""

    def __init__(self, since_revision: int, compacted_revision: int) -> None:
        super().__init__(
            f"changes after revision {since_revision} are compacted (history starts after"
            f" revision {compacted_revision}): re-list"
        )
        self.since_revision = since_revision
        self.compacted_revision = compacted_revision


class SelectorConflictError(StoreError):
    """Another policy already has exactly this selector."""

    def __init__(self, policy_id: str, other_id: str) -> None:
        super().__init__(f"policy {policy_id!r} has the same selector as policy {other_id!r}")
        self.policy_id = policy_id
        self.other_id = other_id
