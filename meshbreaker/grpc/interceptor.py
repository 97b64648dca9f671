"""BreakerInterceptor: a circuit breaker per method on a sync grpc channel, all four call kinds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from meshbreaker.errors import CallNotPermittedError
from meshbreaker.grpc._calls import (
    FallbackOnFailureFuture,
    TrackedStream,
    Tracker,
    rejected_call,
    rejection_fallback,
)
from meshbreaker.grpc._core import Fallback, Guard, release
from meshbreaker.registry import BreakerRegistry

logger = logging.getLogger(__name__)

Continuation = Callable[[grpc.ClientCallDetails, Any], Any]


class BreakerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Guards every RPC of a channel with the registry's breaker for its method."""

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

    def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        """Guards a unary-unary call."""
        return self._unary(continuation, client_call_details, request)

    def intercept_stream_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        """Guards a stream-unary call."""
        return self._unary(continuation, client_call_details, request_iterator)

    def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        """Guards a unary-stream call."""
        return self._stream(continuation, client_call_details, request)

    def intercept_stream_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        """Guards a stream-stream call."""
        return self._stream(continuation, client_call_details, request_iterator)

    def _unary(
        self, continuation: Continuation, details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        guard = self._guard
        try:
            info = guard.method_info(details.method)
            breaker = guard.breaker(info)
            permit = breaker.acquire()
        except CallNotPermittedError as error:
            try:
                if info.fallback is not None:
                    return rejection_fallback(info.fallback, request, error)
                return rejected_call(error)
            except Exception:
                logger.exception("meshbreaker: building the rejection failed; calling through")
                return continuation(details, request)
        except Exception:
            logger.exception("meshbreaker: guarding %s failed; calling through", details.method)
            return continuation(details, request)
        try:
            call = continuation(details, request)
        except BaseException:
            release(permit)
            raise
        try:
            Tracker(guard, breaker, permit).watch(call)
            if info.fallback is not None and guard.fallback_on_failure:
                return FallbackOnFailureFuture(call, request, info.fallback, guard, breaker)
        except Exception:
            logger.exception("meshbreaker: tracking %s failed", details.method)
            release(permit)
        return call

    def _stream(
        self, continuation: Continuation, details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        guard = self._guard
        try:
            breaker = guard.breaker(guard.method_info(details.method))
            permit = breaker.acquire()
        except CallNotPermittedError as error:
            try:
                return rejected_call(error)
            except Exception:
                logger.exception("meshbreaker: building the rejection failed; calling through")
                return continuation(details, request)
        except Exception:
            logger.exception("meshbreaker: guarding %s failed; calling through", details.method)
            return continuation(details, request)
        try:
            call = continuation(details, request)
        except BaseException:
            release(permit)
            raise
        try:
            tracker = Tracker(guard, breaker, permit)
            stream = TrackedStream(call, tracker)
            tracker.watch(call)
            return stream
        except Exception:
            logger.exception("meshbreaker: tracking %s failed", details.method)
            release(permit)
            return call
