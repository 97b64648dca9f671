"""meshbreaker: circuit breakers for gRPC in Python, per method, steered by a control plane."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshbreaker.breaker import (
    BreakerObservation,
    BreakerSnapshot,
    CallResult,
    CircuitBreaker,
    Outcome,
    Permit,
)
from meshbreaker.config import BreakerConfig, Mode, State, WindowType
from meshbreaker.decorate import circuit
from meshbreaker.errors import (
    BulkheadFullError,
    CallNotPermittedError,
    ConfigError,
    MeshbreakerError,
    ThrottledError,
)
from meshbreaker.events import BreakerEvent, EventKind
from meshbreaker.registry import BreakerRegistry

# The one place the version is written: pyproject.toml reads it from here (hatch).
__version__ = "0.1.0"

if TYPE_CHECKING:
    from meshbreaker.grpc import BreakerInterceptor

__all__ = [
    "BreakerConfig",
    "BreakerEvent",
    "BreakerInterceptor",
    "BreakerObservation",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BulkheadFullError",
    "CallNotPermittedError",
    "CallResult",
    "CircuitBreaker",
    "ConfigError",
    "EventKind",
    "MeshbreakerError",
    "Mode",
    "Outcome",
    "Permit",
    "State",
    "ThrottledError",
    "WindowType",
    "circuit",
]


def __getattr__(name: str) -> Any:
    # The engine must import without grpc; the adapter is loaded only when asked for.
    if name == "BreakerInterceptor":
        from meshbreaker.grpc import BreakerInterceptor

        return BreakerInterceptor
    raise AttributeError(f"module 'meshbreaker' has no attribute {name!r}")
