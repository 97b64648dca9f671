"""BreakerInterceptor: a circuit breaker per method on a sync grpc channel, all four call kinds."""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from meshbreaker._adapter.fallback import Fallback
from meshbreaker._adapter.guard import Guard, MethodInfo, release
from meshbreaker._adapter.replay import ReplayBuffer
from meshbreaker._adapter.retrying import next_delay, remaining, retry_run
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.grpc._calls import (
    CallTracker,
    FailedCall,
    FallbackOnFailureCall,
    RetryingStream,
    TrackedStream,
    grpc_types,
    raised_below,
    record_finished,
    rejection,
)
from meshbreaker.grpc._retry_future import RetryingFuture
from meshbreaker.registry import BreakerRegistry
from meshbreaker.retry import RetryRun

logger = logging.getLogger(__name__)


# What grpc's blocking unary path (a call, .with_call()) hands an interceptor: its attempt, over.
# .future() hands over a live rendezvous instead, even when it has already ended. Only the blocking
# path may sleep through a backoff in the caller's thread; anything else is a RetryingFuture, which
# never blocks .future(). Private grpc names, pinned by test_grpcs_blocking_outcome_types: should
# grpc rename them, blocking calls are retried as futures (correct, one timer wait per attempt).
# A guarded channel's blocking path hands over its own FailedCall where grpc has _FailureOutcome.
BLOCKING_OUTCOMES = grpc_types("grpc._interceptor", "_UnaryOutcome", "_FailureOutcome")
BLOCKING_OUTCOMES += (*grpc_types("grpc._channel", "_InactiveRpcError"), FailedCall)


def _blocking(call: Any) -> bool:
    """Whether grpc's blocking path handed over `call` (see BLOCKING_OUTCOMES)."""
    return isinstance(call, BLOCKING_OUTCOMES)


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

    def _unary(
        self,
        continuation: Continuation,
        details: Any,
        request: Any,
        streamed: bool = False,
    ) -> Any:
        """Guard a unary-response call: the call (maybe fallback-wrapped), or its rejection.

        `streamed`: `request` is a request iterator, replayed from a ReplayBuffer on a retry.
        """
        guard = self._guard
        try:
            method = details.method
            info = guard.methods.get(method) or guard.method_info(method)
            breaker = guard.registry.get(info.name)
            run = None
            if breaker.retry_budget is not None:  # a unary response: retried before it is read
                run = retry_run(breaker, details.timeout)
            if run is None:
                permit = breaker.acquire()
        except CallNotPermittedError as error:
            return not_admitted(continuation, details, request, error, info.fallback)
        except Exception as error:
            return not_admitted(continuation, details, request, error, None)
        if run is not None:  # outside the try: what the attempts raise is the caller's
            replay = ReplayBuffer(request, run) if streamed else None
            return self._retrying(continuation, details, request, info, breaker, run, replay)
        try:
            call = continuation(details, request)
        except BaseException:
            release(permit)
            raise
        return self._tracked(call, request, info, breaker, permit, details)

    def _tracked(
        self, call: Any, request: Any, info: MethodInfo, breaker: Any, permit: Any, details: Any
    ) -> Any:
        """A unary-response call tracked to its end (recorded at once when already over)."""
        guard = self._guard
        try:
            if call.done():  # the blocking path: grpc hands over a finished call
                record_finished(guard, breaker, permit, call)
            else:
                CallTracker(guard, breaker, permit).watch(call)
            return self._answer(call, request, info, breaker)
        except Exception:
            logger.exception("meshbreaker: tracking %s failed", details.method)
            release(permit)
        return call

    def _answer(self, call: Any, request: Any, info: MethodInfo, breaker: Any) -> Any:
        """What the caller gets for a tracked `call`: the call, or its fallback-on-failure."""
        guard = self._guard
        if info.fallback is not None and guard.fallback_on_failure:
            return FallbackOnFailureCall(call, request, info.fallback, guard, breaker)
        return call

    def _retrying(
        self,
        continuation: Continuation,
        details: Any,
        request: Any,
        info: MethodInfo,
        breaker: Any,
        run: RetryRun,
        replay: ReplayBuffer | None,
    ) -> Any:
        """A unary-response call retried by its method's RetryPolicy, each attempt guarded.

        Blocking calls and `.with_call()` are retried here, in the caller's thread (grpc hands
        over their attempts finished); a `.future()` becomes a RetryingFuture, retried from its
        attempts' done-callbacks and the shared timer thread. A retry refused locally ends the
        call with the last attempt's status (gRFC A6), not the refusal.
        """
        last = None  # the attempt before this one, finished and recorded
        while True:
            try:
                permit = breaker.acquire()
            except CallNotPermittedError as error:  # never retried
                if last is not None:
                    return self._answer(last, request, info, breaker)
                return not_admitted(continuation, details, request, error, info.fallback)
            except Exception as error:
                return not_admitted(continuation, details, request, error, None)
            try:
                call = continuation(details, request if replay is None else replay.attempt())
            except BaseException:
                release(permit)
                raise
            if not _blocking(call):
                args = (continuation, details, request, info, breaker, run, call, permit, replay)
                return self._future(*args)
            code = call.code()
            delay = None
            if code is not grpc.StatusCode.OK and not raised_below(call):
                delay = next_delay(
                    run, code, call.details(), call.initial_metadata(), call.trailing_metadata()
                )
            if delay is None:
                return self._tracked(call, request, info, breaker, permit, details)
            self._guard.record(permit, breaker, code)
            last = call
            time.sleep(delay)
            details = _with_timeout(details, remaining(run))

    def _future(
        self,
        continuation: Continuation,
        details: Any,
        request: Any,
        info: MethodInfo,
        breaker: Any,
        run: RetryRun,
        call: Any,
        permit: Any,
        replay: ReplayBuffer | None,
    ) -> Any:
        """A `.future()` call whose first attempt is in flight, retried as a RetryingFuture."""
        guard = self._guard

        def start(timeout: float | None) -> Any:
            sent = request if replay is None else replay.attempt()
            return continuation(_with_timeout(details, timeout), sent)

        try:
            future = RetryingFuture(
                guard,
                breaker,
                run,
                start,
                call,
                permit,
            )
            return self._answer(future, request, info, breaker)
        except Exception:
            logger.exception("meshbreaker: retrying %s failed", details.method)
            release(permit)
            return call

    def _stream(
        self, continuation: Continuation, details: Any, request: Any, replayable: bool = True
    ) -> Any:
        """Guard a response-stream call: the call tracked to its end, or its rejection."""
        guard = self._guard
        try:
            method = details.method
            info = guard.methods.get(method) or guard.method_info(method)
            breaker = guard.registry.get(info.name)
            run = None
            if replayable and breaker.retry_budget is not None:
                run = retry_run(breaker, details.timeout)
            permit = breaker.acquire()
        except Exception as error:
            return not_admitted(continuation, details, request, error, None)
        try:
            call = continuation(details, request)
        except BaseException:
            release(permit)
            raise
        try:
            tracker = CallTracker(guard, breaker, permit)
            if run is None:
                stream = TrackedStream(call, tracker)
            else:
                restart = functools.partial(
                    _restart_stream, guard, breaker, continuation, details, request
                )
                stream = RetryingStream(call, tracker, run, restart)
            tracker.watch(call)
            return stream
        except Exception:
            logger.exception("meshbreaker: tracking %s failed", details.method)
            release(permit)
            return call

    def intercept_stream_stream(
        self, continuation: Continuation, details: Any, request_iterator: Any
    ) -> Any:
        """Guard a stream-stream call; never retried (its requests may answer its responses)."""
        return self._stream(continuation, details, request_iterator, False)

    # Aliases, not wrappers: one Python frame less on every call.
    intercept_unary_unary = _unary  # type: ignore[assignment]

    def intercept_stream_unary(
        self, continuation: Continuation, details: Any, request_iterator: Any
    ) -> Any:
        """Guard a stream-unary call; retried by replaying its requests (gRFC A6's buffer)."""
        return self._unary(continuation, details, request_iterator, streamed=True)

    intercept_unary_stream = _stream  # type: ignore[assignment]


class CallDetails(
    collections.namedtuple(
        "CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """A retry's call details: the caller's, with what is left of the deadline."""


def _with_timeout(details: Any, timeout: float | None) -> Any:
    if timeout is None:
        return details
    return CallDetails(
        details.method,
        timeout,
        details.metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _restart_stream(
    guard: Guard,
    breaker: Any,
    continuation: Continuation,
    details: Any,
    request: Any,
    timeout: float | None,
) -> tuple[Any, CallTracker] | None:
    """A retry of a response stream: a new permit and call; None if refused (never retried)."""
    try:
        permit = breaker.acquire()
    except CallNotPermittedError:
        return None
    try:
        call = continuation(_with_timeout(details, timeout), request)
    except BaseException:
        release(permit)
        raise
    tracker = CallTracker(guard, breaker, permit)
    tracker.watch(call)
    return call, tracker


def not_admitted(
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
