"""What a refused call tells its caller: status code, details and trailing metadata."""

from __future__ import annotations

import math
from typing import Final

import grpc

from meshbreaker._types import State
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ThrottledError

STATE_METADATA_KEY: Final = "x-meshbreaker-state"
FALLBACK_METADATA_KEY: Final = "x-meshbreaker-fallback"


def rejection_details(error: CallNotPermittedError) -> str:
    """The status details of a rejected call: method, state and time to the next probe."""
    if isinstance(error, ThrottledError):
        return (
            f"meshbreaker: adaptive throttling refused a call to {error.name} locally "
            "(the dependency accepts too few of the calls sent to it)"
        )
    if isinstance(error, BulkheadFullError):
        return (
            f"meshbreaker: bulkhead for {error.name} is full "
            f"(max_concurrent_calls in flight; state {error.state.value})"
        )
    if error.state is State.FORCED_OPEN or math.isinf(error.retry_after):
        probe = "no probe until the FORCED_OPEN override is cleared"
    else:
        probe = f"next probe in {max(error.retry_after, 0.0):.3f}s"
    return f"meshbreaker: circuit breaker for {error.name} is {error.state.value}; {probe}"


def rejection_code(error: CallNotPermittedError) -> grpc.StatusCode:
    """UNAVAILABLE for an open breaker, RESOURCE_EXHAUSTED for a full bulkhead."""
    if isinstance(error, BulkheadFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE


def rejection_metadata(error: CallNotPermittedError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a refused call: (("x-meshbreaker-state", state),).

    The state is the breaker's, or THROTTLED when adaptive throttling refused the call.
    """
    marker = "THROTTLED" if isinstance(error, ThrottledError) else error.state.value
    return ((STATE_METADATA_KEY, marker),)


def fallback_reason(error: CallNotPermittedError) -> str:
    """Why a fallback answers a refused call: "throttled" or "rejected"."""
    return "throttled" if isinstance(error, ThrottledError) else "rejected"
