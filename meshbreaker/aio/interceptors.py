"""grpc.aio client interceptors: a circuit breaker per method, one interceptor object per kind."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import grpc.aio
from grpc.aio import AioRpcError

from meshbreaker._adapter.fallback import Fallback
from meshbreaker._adapter.guard import Guard, MethodInfo, release
from meshbreaker._adapter.replay import ReplayBuffer
from meshbreaker._adapter.retrying import next_delay, remaining, retry_run
from meshbreaker.aio._calls import (
    CallTracker,
    ErrorCall,
    FallbackOnFailureCall,
    RetryingStream,
    TrackedStream,
    TrackedUnaryCall,
    error_details,
    rejection,
)
from meshbreaker.breaker import CircuitBreaker, Permit
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.retry import RetryRun

logger = logging.getLogger(__name__)


class AioBreakerInterceptor:
    """State shared by the per-kind aio interceptors: the Guard and its registry."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    @property
    def registry(self) -> BreakerRegistry:
        """The registry holding the breakers."""
        return self._guard.registry


# Plain functions taking self: each per-kind class below aliases one, with no wrapper frame.
async def _guard_unary(
    self: AioBreakerInterceptor,
    continuation: Any,
    client_call_details: Any,
    request: Any,
    replayable: bool = True,
    streamed: bool = False,
) -> Any:
    """Guard a unary-response call: the call (maybe fallback-wrapped), or its rejection.

    `streamed`: `request` is a request iterator, replayed from a ReplayBuffer on a retry.
    """
    guard = self._guard
    try:
        method = client_call_details.method
        info = guard.methods.get(method) or guard.method_info(method)
        breaker = guard.registry.get(info.name)
        run = None
        if replayable and breaker.retry_budget is not None:
            run = retry_run(breaker, client_call_details.timeout)
        if run is None:
            permit = breaker.acquire()
    except CallNotPermittedError as error:
        return await _not_admitted(continuation, client_call_details, request, error, info.fallback)
    except Exception as error:
        return await _not_admitted(continuation, client_call_details, request, error, None)
    if run is not None:  # outside the try: what the attempts raise is the caller's
        return await retrying(guard, continuation, client_call_details, request, run, streamed)
    try:
        call = await continuation(client_call_details, request)
    except AioRpcError as error:
        guard.record(permit, breaker, error.code(), details=error_details(error))
        raise
    except BaseException:
        release(permit)
        raise
    return track_unary(guard, info, breaker, CallTracker(guard, breaker, permit), call, request)


def track_unary(
    guard: Guard,
    info: MethodInfo,
    breaker: CircuitBreaker,
    tracker: CallTracker,
    call: Any,
    request: Any,
) -> Any:
    """A unary-response call tracked to its end (fallback-wrapped if asked); bare if that fails."""
    try:
        tracker.watch(call)
        tracked = TrackedUnaryCall(call, tracker)
        if info.fallback is not None and guard.fallback_on_failure:
            return FallbackOnFailureCall(tracked, request, info.fallback, guard, breaker)
        return tracked
    except Exception:
        logger.exception("meshbreaker: tracking %s failed", info.name)
        tracker.release()
    return call


def _writes_code() -> Any:
    try:
        from grpc.aio._interceptor import _InterceptedStreamRequestMixin

        return _InterceptedStreamRequestMixin._proxy_writes_as_request_iterator.__code__
    except Exception:  # pragma: no cover - grpc renamed it (the pinning test says so)
        return None


# What grpc.aio hands an interceptor when the caller write()s the requests: its own generator over
# them, which first waits for the interceptors to return the call. A retry loop cannot read it
# before returning, so such calls are never retried. A private grpc name, pinned by
# test_grpcs_write_proxy_is_known: should grpc rename it, no stream-unary call is retried.
WRITES_CODE = _writes_code()


def replayable(request_iterator: Any) -> bool:
    """Whether a stream-unary call's requests can be read by its retries: not grpc's write proxy."""
    code = getattr(request_iterator, "ag_code", None)
    return WRITES_CODE is not None and code is not WRITES_CODE


async def _guard_stream_unary(
    self: AioBreakerInterceptor, continuation: Any, client_call_details: Any, request: Any
) -> Any:
    """Guard a stream-unary call; retried by replaying its requests (gRFC A6's buffer).

    Requests the caller write()s are never retried (see WRITES_CODE).
    """
    replay = replayable(request)
    return await _guard_unary(self, continuation, client_call_details, request, replay, True)


async def retrying(
    guard: Guard,
    continuation: Any,
    details: Any,
    request: Any,
    run: RetryRun,
    streamed: bool = False,
) -> Any:
    """A unary-response call retried by its method's RetryPolicy, each attempt guarded and awaited.

    A retry refused locally ends the call with the last attempt's status (gRFC A6). `streamed`:
    `request` is a request iterator, each attempt's requests replayed from a ReplayBuffer.
    """
    info = guard.methods.get(details.method) or guard.method_info(details.method)
    breaker = guard.registry.get(info.name)
    replay = ReplayBuffer(request, run) if streamed else None
    last: Any = None  # the attempt before this one, over and recorded: its call or its error
    while True:
        try:
            permit = breaker.acquire()
        except CallNotPermittedError as error:  # never retried
            if isinstance(last, AioRpcError):
                raise last from None
            if last is not None:
                return _answer(guard, info, breaker, last, request)
            return await _not_admitted(continuation, details, request, error, info.fallback)
        except Exception as error:
            return await _not_admitted(continuation, details, request, error, None)
        try:
            sent = request if replay is None else replay.attempt_async()
            call = await continuation(details, sent)
            code = await call.code()
        except AioRpcError as error:
            code, text = error.code(), error.details()
            delay = next_delay(run, code, text, error.initial_metadata(), error.trailing_metadata())
            guard.record(permit, breaker, code, details=text)
            if delay is None:
                raise
            last = error
        except BaseException:
            release(permit)
            raise
        else:
            delay, text = None, None
            if code is not grpc.StatusCode.OK:
                text = await call.details()
                delay = next_delay(
                    run,
                    code,
                    text,
                    await call.initial_metadata(),
                    await call.trailing_metadata(),
                )
            guard.record(permit, breaker, code, details=text)
            if delay is None:
                return _answer(guard, info, breaker, call, request)
            last = call
        await asyncio.sleep(delay)
        timeout = remaining(run)
        if timeout is not None:
            details = details._replace(timeout=timeout)


def _answer(
    guard: Guard, info: MethodInfo, breaker: CircuitBreaker, call: Any, request: Any
) -> Any:
    """What the caller gets for a retried call's last attempt: it, or its fallback-on-failure."""
    if info.fallback is not None and guard.fallback_on_failure:
        return FallbackOnFailureCall(call, request, info.fallback, guard, breaker)
    return call


async def _guard_stream(
    self: AioBreakerInterceptor,
    continuation: Any,
    client_call_details: Any,
    request: Any,
    replayable: bool = True,
) -> Any:
    """Guard a response-stream call: the call timed to its first message, or its rejection."""
    guard = self._guard
    try:
        method = client_call_details.method
        info = guard.methods.get(method) or guard.method_info(method)
        breaker = guard.registry.get(info.name)
        run = None
        if replayable and breaker.retry_budget is not None:
            run = retry_run(breaker, client_call_details.timeout)
        permit = breaker.acquire()
    except Exception as error:
        return await _not_admitted(continuation, client_call_details, request, error, None)
    try:
        call = await continuation(client_call_details, request)
    except AioRpcError as error:
        guard.record(permit, breaker, error.code(), details=error_details(error))
        if run is None:
            raise
        call = ErrorCall(error)  # retried from its first read, like any failed first attempt
    except BaseException:
        release(permit)
        raise
    restart = None
    if run is not None:
        restart = functools.partial(
            restart_stream, guard, breaker, continuation, client_call_details, request
        )
    return track_stream(guard, info, breaker, permit, call, run, restart)


def track_stream(
    guard: Guard,
    info: MethodInfo,
    breaker: CircuitBreaker,
    permit: Permit,
    call: Any,
    run: RetryRun | None,
    restart: Any,
) -> Any:
    """A response stream tracked to its end (retried when `run`); the bare call if that fails."""
    try:
        tracker = CallTracker(guard, breaker, permit)
        tracker.watch(call)
        if run is None:
            return TrackedStream(call, tracker)
        return RetryingStream(call, tracker, run, restart)
    except Exception:
        logger.exception("meshbreaker: tracking %s failed", info.name)
        release(permit)
        return call


async def _guard_stream_stream(
    self: AioBreakerInterceptor, continuation: Any, client_call_details: Any, request: Any
) -> Any:
    """Guard a stream-stream call; never retried (its requests may answer its responses)."""
    return await _guard_stream(self, continuation, client_call_details, request, False)


async def restart_stream(
    guard: Guard,
    breaker: Any,
    continuation: Any,
    details: Any,
    request: Any,
    timeout: float | None,
) -> tuple[Any, CallTracker] | None:
    """A retry of a response stream: a new permit and call; None if refused (never retried)."""
    try:
        permit = breaker.acquire()
    except CallNotPermittedError:
        return None
    if timeout is not None:
        details = details._replace(timeout=timeout)
    tracker = CallTracker(guard, breaker, permit)
    try:
        call = await continuation(details, request)
    except AioRpcError as error:
        guard.record(permit, breaker, error.code(), details=error_details(error))
        return ErrorCall(error), tracker  # the retry loop decides whether to try again
    except BaseException:
        release(permit)
        raise
    tracker.watch(call)
    return call, tracker


async def _not_admitted(
    continuation: Any,
    client_call_details: Any,
    request: Any,
    error: Exception,
    fallback: Fallback | None,
) -> Any:
    """What a call the breaker did not admit returns: its rejection, or the call made unguarded.

    `fallback` (None for response streams) answers a rejection. When meshbreaker itself failed,
    the RPC goes on unguarded: the breaker's bookkeeping never breaks a call.
    """
    refused = refusal(error, fallback, request, client_call_details.method)
    if refused is not None:
        return refused
    return await continuation(client_call_details, request)


def refusal(error: Exception, fallback: Fallback | None, request: Any, method: Any) -> Any:
    """A rejected call's RejectedCall or FallbackCall; None (logged) when the call must go on.

    None when meshbreaker itself failed (`error` is no rejection, or building it failed): the
    breaker's bookkeeping never breaks a call.
    """
    if isinstance(error, CallNotPermittedError):
        try:
            return rejection(error, fallback, request)
        except Exception:
            logger.exception("meshbreaker: building the rejection failed; calling through")
    else:
        logger.error("meshbreaker: guarding %s failed; calling through", method, exc_info=error)
    return None


class UnaryUnaryBreakerInterceptor(AioBreakerInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    """Guards unary-unary calls on a grpc.aio channel."""

    intercept_unary_unary = _guard_unary


class UnaryStreamBreakerInterceptor(AioBreakerInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Guards unary-stream calls on a grpc.aio channel."""

    intercept_unary_stream = _guard_stream


class StreamUnaryBreakerInterceptor(AioBreakerInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """Guards stream-unary calls on a grpc.aio channel."""

    intercept_stream_unary = _guard_stream_unary  # type: ignore[assignment]


class StreamStreamBreakerInterceptor(AioBreakerInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Guards stream-stream calls on a grpc.aio channel."""

    intercept_stream_stream = _guard_stream_stream  # type: ignore[assignment]


def breaker_interceptors(
    registry: BreakerRegistry | None = None,
    *,
    target: str | None = None,
    fallbacks: Mapping[str, Fallback] | None = None,
    fallback_on_failure: bool = False,
    failure_codes: Iterable[str | grpc.StatusCode] | None = None,
    ignored_codes: Iterable[str | grpc.StatusCode] | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind sharing one registry (a channel files each under one kind)."""
    guard = Guard(
        registry,
        target=target,
        fallbacks=fallbacks,
        fallback_on_failure=fallback_on_failure,
        failure_codes=failure_codes,
        ignored_codes=ignored_codes,
    )
    return [
        UnaryUnaryBreakerInterceptor(guard),
        UnaryStreamBreakerInterceptor(guard),
        StreamUnaryBreakerInterceptor(guard),
        StreamStreamBreakerInterceptor(guard),
    ]
