"""BreakerInterceptor: a circuit breaker per method on a sync grpc channel, all four call kinds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from meshbreaker._adapter.fallback import Fallback
from meshbreaker._adapter.guard import Guard, release
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.grpc._calls import (
    CallTracker,
    FallbackOnFailureCall,
    TrackedStream,
    rejection,
)
from meshbreaker.registry import BreakerRegistry

logger = logging.getLogger(__name__)
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

Continuation = Callable[[grpc.ClientCallDetails, Any], Any]


class BreakerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Guards every RPC of a channel with the registry's breaker for its method.

    `fallbacks` ("/pkg.Service/Method" -> fn(request, error) -> response) apply to unary-response
    methods: when the breaker rejects a call, and with `fallback_on_failure` when a call fails.
    `failure_codes` / `ignored_codes` (names or grpc.StatusCode) override the breakers' configs.
    """

    def __init__(
        self,
        registry: BreakerRegistry | None = None,
        *,
        target: str | None = None,
        fallbacks: Mapping[str, Fallback] | None = None,
        fallback_on_failure: bool = False,
        failure_codes: Iterable[str | grpc.StatusCode] | None = None,
        ignored_codes: Iterable[str | grpc.StatusCode] | None = None,
    ) -> None:
        self._guard = Guard(
            registry,
            target=target,
            fallbacks=fallbacks,
            fallback_on_failure=fallback_on_failure,
            failure_codes=failure_codes,
            ignored_codes=ignored_codes,
        )

    @property
    def registry(self) -> BreakerRegistry:
        """The registry holding this interceptor's breakers."""
        return self._guard.registry

    def _unary(self, continuation: Continuation, details: Any, request: Any) -> Any:
        """Guard a unary-response call: the call (maybe fallback-wrapped), or its rejection."""
        guard = self._guard
        try:
            method = details.method
            info = guard.methods.get(method) or guard.method_info(method)
            breaker = guard.registry.get(info.name)
            permit = breaker.acquire()
        except CallNotPermittedError as error:
            return _not_admitted(continuation, details, request, error, info.fallback)
        except Exception as error:
            return _not_admitted(continuation, details, request, error, None)
        try:
            call = continuation(details, request)
        except BaseException:
            release(permit)
            raise
        try:
            if call.done():  # the blocking path: grpc hands over a finished call
                code = call.code()
                drop = call.details() if code is _UNAVAILABLE else None
                guard.record(permit, breaker, code, details=drop)
            else:
                CallTracker(guard, breaker, permit).watch(call)
            if info.fallback is not None and guard.fallback_on_failure:
                return FallbackOnFailureCall(call, request, info.fallback, guard, breaker)
        except Exception:
            logger.exception("meshbreaker: tracking %s failed", details.method)
            release(permit)
        return call

    def _stream(self, continuation: Continuation, details: Any, request: Any) -> Any:
        """Guard a response-stream call: the call tracked to its end, or its rejection."""
        guard = self._guard
        try:
            method = details.method
            info = guard.methods.get(method) or guard.method_info(method)
            breaker = guard.registry.get(info.name)
            permit = breaker.acquire()
        except Exception as error:
            return _not_admitted(continuation, details, request, error, None)
        try:
            call = continuation(details, request)
        except BaseException:
            release(permit)
            raise
        try:
            tracker = CallTracker(guard, breaker, permit)
            stream = TrackedStream(call, tracker)
            tracker.watch(call)
            return stream
        except Exception:
            logger.exception("meshbreaker: tracking %s failed", details.method)
            release(permit)
            return call

    # Aliases, not wrappers: one Python frame less on every call.
    intercept_unary_unary = _unary  # type: ignore[assignment]
    intercept_stream_unary = _unary  # type: ignore[assignment]
    intercept_unary_stream = _stream  # type: ignore[assignment]
    intercept_stream_stream = _stream  # type: ignore[assignment]


def _not_admitted(
    continuation: Continuation,
    details: Any,
    request: Any,
    error: Exception,
    fallback: Fallback | None,
) -> Any:
    """What a call the breaker did not admit returns: its rejection, or the call made unguarded.

    `fallback` (None for response streams) answers a rejection. When meshbreaker itself failed,
    the RPC goes on unguarded: the breaker's bookkeeping never breaks a call.
    """
    if isinstance(error, CallNotPermittedError):
        try:
            return rejection(error, fallback, request)
        except Exception:
            logger.exception("meshbreaker: building the rejection failed; calling through")
    else:
        logger.error(
            "meshbreaker: guarding %s failed; calling through", details.method, exc_info=error
        )
    return continuation(details, request)
