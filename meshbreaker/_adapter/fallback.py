"""FallbackResult: what a user's fallback answered, the same for sync and aio calls."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from meshbreaker._adapter.rejection import FALLBACK_METADATA_KEY, STATE_METADATA_KEY
from meshbreaker._types import State

logger = logging.getLogger(__name__)

Fallback = Callable[[Any, BaseException], Any]
Metadatum = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class FallbackResult:
    """A fallback's response (or the exception it raised), why it ran and in which state."""

    ok: bool
    value: Any
    # "rejected": the breaker refused the call; "throttled": adaptive throttling did;
    # "failure": the call failed
    reason: str
    state: State

    def response(self) -> Any:
        """The fallback's response; raises what the fallback raised."""
        if self.ok:
            return self.value
        raise self.value

    @property
    def error(self) -> BaseException | None:
        """None, or the exception the fallback raised."""
        return None if self.ok else self.value

    @property
    def code(self) -> grpc.StatusCode:
        """OK when the fallback answered, UNKNOWN when it raised."""
        return grpc.StatusCode.OK if self.ok else grpc.StatusCode.UNKNOWN

    @property
    def details(self) -> str:
        """Says a fallback answered and why."""
        return f"meshbreaker: fallback used ({self.reason})"

    def trailing_metadata(self, server: Iterable[Metadatum] | None) -> tuple[Metadatum, ...]:
        """The server's trailing metadata (None when it was never called) plus the markers."""
        markers = ((STATE_METADATA_KEY, self.state.value), (FALLBACK_METADATA_KEY, self.reason))
        return (*tuple(server or ()), *markers)


def run_fallback(
    fallback: Fallback, request: Any, error: BaseException, reason: str, state: State
) -> FallbackResult:
    """Call the user's fallback for `request`; what it returned or raised, never raising."""
    try:
        return FallbackResult(True, fallback(request, error), reason, state)
    except Exception as exception:
        logger.debug("meshbreaker: fallback raised", exc_info=True)
        return FallbackResult(False, exception, reason, state)
