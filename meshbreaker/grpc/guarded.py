"""guarded_channel: a sync grpc.Channel whose multi-callables carry the breaker themselves.

grpc.intercept_channel wraps every call in call details, a continuation closure and an outcome
object before the interceptor even runs: on loopback that costs more than the breaker does.
Here each multi-callable calls BreakerInterceptor's own code (so the two can never differ) with
a continuation straight to the channel's multi-callable, and a blocking unary call with no retry
policy and no fallback-on-failure takes a direct path: acquire, call, record the final code,
which is what the interceptor does with a finished call. A plain unary `__call__` the breaker
admits freely (CircuitBreaker.admit_free) goes further, in one frame with no Permit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from meshbreaker._adapter.fallback import Fallback
from meshbreaker._adapter.guard import Guard, MethodInfo, release
from meshbreaker.breaker import CircuitBreaker, Permit
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.grpc._calls import FailedCall, record_finished
from meshbreaker.grpc.interceptor import BreakerInterceptor, CallDetails, not_admitted
from meshbreaker.registry import BreakerRegistry

_OK = grpc.StatusCode.OK

# grpc's stubs type the multi-callables as generics; these implement them for any message type.
_UnaryUnaryBase: Any = grpc.UnaryUnaryMultiCallable
_UnaryStreamBase: Any = grpc.UnaryStreamMultiCallable
_StreamUnaryBase: Any = grpc.StreamUnaryMultiCallable
_StreamStreamBase: Any = grpc.StreamStreamMultiCallable


def guarded_channel(
    channel: grpc.Channel,
    registry: BreakerRegistry | None = None,
    *,
    target: str | None = None,
    fallbacks: Mapping[str, Fallback] | None = None,
    fallback_on_failure: bool = False,
    failure_codes: Iterable[str | grpc.StatusCode] | None = None,
    ignored_codes: Iterable[str | grpc.StatusCode] | None = None,
) -> grpc.Channel:
    """`channel` with a circuit breaker per method, as BreakerInterceptor gives, at less cost.

    Takes BreakerInterceptor's options and behaves exactly as
    `grpc.intercept_channel(channel, BreakerInterceptor(registry, ...))` does, for every call
    kind and calling form. `channel` may itself be intercepted:
    `guarded_channel(grpc.intercept_channel(channel, tracing), registry)` runs `tracing` inside
    the breaker, on every attempt a retry policy makes.
    """
    if not isinstance(channel, grpc.Channel):
        raise TypeError(f"channel must be a grpc.Channel, got {type(channel).__name__}")
    interceptor = BreakerInterceptor(
        registry,
        target=target,
        fallbacks=fallbacks,
        fallback_on_failure=fallback_on_failure,
        failure_codes=failure_codes,
        ignored_codes=ignored_codes,
    )
    return GuardedChannel(channel, interceptor)


class GuardedChannel(grpc.Channel):
    """A grpc.Channel whose multi-callables guard each call with the interceptor's breakers."""

    def __init__(self, channel: grpc.Channel, interceptor: BreakerInterceptor) -> None:
        self._channel = channel
        self.interceptor = interceptor

    @property
    def registry(self) -> BreakerRegistry:
        """The registry holding the breakers."""
        return self.interceptor.registry

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Subscribes to the wrapped channel's connectivity."""
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Unsubscribes from the wrapped channel's connectivity."""
        self._channel.unsubscribe(callback)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        """A guarded unary-unary multi-callable."""
        inner = _multi(
            self._channel.unary_unary,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )
        return GuardedUnaryUnary(inner, method, self.interceptor)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        """A guarded unary-stream multi-callable."""
        inner = _multi(
            self._channel.unary_stream,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )
        return GuardedUnaryStream(inner, method, self.interceptor)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        """A guarded stream-unary multi-callable (retried by replaying its buffered requests)."""
        inner = _multi(
            self._channel.stream_unary,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )
        return GuardedStreamUnary(inner, method, self.interceptor)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        """A guarded stream-stream multi-callable (never retried)."""
        inner = _multi(
            self._channel.stream_stream,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )
        return GuardedStreamStream(inner, method, self.interceptor)

    def close(self) -> None:
        """Closes the wrapped channel."""
        self._channel.close()

    def __enter__(self) -> GuardedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()


def _multi(
    make: Callable[..., Any], method: str, serializer: Any, deserializer: Any, registered: bool
) -> Any:
    # `_registered_method` only when set: a channel wrapper may not know it.
    if registered:
        return make(method, serializer, deserializer, _registered_method=True)
    return make(method, serializer, deserializer)


def _record_raised(
    guard: Guard, breaker: CircuitBreaker, permit: Permit, error: BaseException
) -> None:
    """Record a blocking call's raised error: its status, or (raised below the breaker) none."""
    if isinstance(error, grpc.RpcError):  # also the call, finished
        record_finished(guard, breaker, permit, error)
    else:
        release(permit)


class _Guarded:
    """What the guarded multi-callables share: the channel's own one, the method and its facts."""

    __slots__ = ("_breaker", "_covered", "_guard", "_info", "_inner", "_interceptor", "_method")

    # Whether a retry policy may make the call again (not a bidi stream: its requests depend on
    # its answers), and whether its requests are a stream, replayed from a ReplayBuffer.
    _replayable = True
    _streamed = False

    def __init__(self, inner: Any, method: str, interceptor: BreakerInterceptor) -> None:
        self._inner = inner
        self._method = method
        self._interceptor = interceptor
        self._guard = guard = interceptor._guard
        info = guard.method_info(method)
        self._info: MethodInfo = info
        # What the hot path reads: the breaker's lookup, and whether a fallback covers failures.
        self._breaker = functools.partial(guard.registry.get, info.name)
        self._covered = info.fallback is not None and guard.fallback_on_failure


class _UnaryResponse(_Guarded):
    """A unary-response call's three forms (blocking, with_call, future) with the breaker."""

    __slots__ = ()

    def _future(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        """A grpc.Future and grpc.Call of the response (a rejection: one already failed)."""
        details = CallDetails(
            self._method, timeout, metadata, credentials, wait_for_ready, compression
        )
        try:
            return self._interceptor._unary(self._future_through, details, request, self._streamed)
        except Exception as error:  # raised below the breaker: as grpc.intercept_channel hands it
            return FailedCall(error, error.__traceback__)

    def _blocking(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
        with_call: bool = True,
    ) -> tuple[Any, Any]:
        """A blocking call: the direct path (no CallDetails built) when only the breaker applies.

        Without `with_call` the direct path calls the channel's own `__call__` and gives no call
        back: a response means the call ended OK, and grpc builds no call object for it.
        """
        guard = self._guard
        info = self._info
        rejected = None
        try:
            breaker = self._breaker()
            direct = not (self._covered or breaker.retry_budget is not None)
            permit = breaker.acquire() if direct else None
        except CallNotPermittedError as error:
            permit, rejected = None, error
        except Exception:
            permit = None  # the interceptor's path logs it and calls through
        if permit is None:
            details = CallDetails(
                self._method, timeout, metadata, credentials, wait_for_ready, compression
            )
            if rejected is not None:
                through = self._blocking_through
                outcome = not_admitted(through, details, request, rejected, info.fallback)
            else:
                outcome = self._interceptor._unary(
                    self._blocking_through, details, request, self._streamed
                )
            return outcome.result(), outcome
        try:
            answer = (self._inner.with_call if with_call else self._inner)(
                request,
                timeout=timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except BaseException as error:
            _record_raised(guard, breaker, permit, error)
            raise
        guard.record(permit, breaker, _OK)
        return answer if with_call else (answer, None)

    def _blocking_through(self, details: Any, request: Any) -> Any:
        """The continuation of a blocking call: its finished call, or its error (also a call)."""
        try:
            return self._inner.with_call(
                request,
                timeout=details.timeout,
                metadata=details.metadata,
                credentials=details.credentials,
                wait_for_ready=details.wait_for_ready,
                compression=details.compression,
            )[1]
        except grpc.RpcError as error:
            return error
        except Exception as error:  # raised below the breaker: what grpc's continuation returns
            return FailedCall(error, error.__traceback__)

    def _future_through(self, details: Any, request: Any) -> Any:
        return self._inner.future(
            request,
            timeout=details.timeout,
            metadata=details.metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )


class GuardedUnaryUnary(_UnaryResponse, _UnaryUnaryBase):  # type: ignore[misc]
    """A unary-unary multi-callable with the breaker; grpc's signatures."""

    __slots__ = ()

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The response, or the call's error raised (a rejection: also a CallNotPermittedError).

        The hot path, in one frame: a call that admit_free() admits (no retry policy, no
        fallback-on-failure) is made and reported here, with no Permit and no CallDetails, as
        _blocking() would; any other goes through _blocking().
        """
        try:
            breaker = self._breaker()
            if self._covered or breaker.retry_budget is not None:
                generation = None
            else:
                start = breaker.clock()
                generation = breaker.admit_free(start)  # reported once below: no Permit guards it
        except Exception:
            generation = None  # _blocking() meets it again, and logs it as the interceptor does
        if generation is None:
            return self._blocking(
                request, timeout, metadata, credentials, wait_for_ready, compression, False
            )[0]
        try:
            # Positional: grpc.UnaryUnaryMultiCallable's own order, and cheaper than keywords.
            response = self._inner(
                request, timeout, metadata, credentials, wait_for_ready, compression
            )
        except BaseException as error:
            _record_raised(self._guard, breaker, breaker.permit_for(generation, start), error)
            raise
        self._guard.finish_free_ok(breaker, generation, start)
        return response

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, grpc.Call]:
        """(response, call), or the call's error raised."""
        return self._blocking(request, timeout, metadata, credentials, wait_for_ready, compression)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """A grpc.Future and grpc.Call of the response (a rejection: one already failed)."""
        return self._future(request, timeout, metadata, credentials, wait_for_ready, compression)


class GuardedStreamUnary(_UnaryResponse, _StreamUnaryBase):  # type: ignore[misc]
    """A stream-unary multi-callable with the breaker; grpc's signatures (`request_iterator`)."""

    __slots__ = ()

    _streamed = True

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The response, or the call's error raised (a rejection: also a CallNotPermittedError)."""
        return self._blocking(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression, False
        )[0]

    def with_call(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, grpc.Call]:
        """(response, call), or the call's error raised."""
        return self._blocking(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """A grpc.Future and grpc.Call of the response (a rejection: one already failed)."""
        return self._future(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamResponse(_Guarded):
    """A response-stream call with the breaker."""

    __slots__ = ()

    def _stream(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        """The response stream (an iterator, grpc.Call and grpc.Future), or its rejection."""
        details = CallDetails(
            self._method, timeout, metadata, credentials, wait_for_ready, compression
        )
        try:
            return self._interceptor._stream(self._through, details, request, self._replayable)
        except Exception as error:  # raised below the breaker: as grpc.intercept_channel hands it
            return FailedCall(error, error.__traceback__)

    def _through(self, details: Any, request: Any) -> Any:
        return self._inner(
            request,
            timeout=details.timeout,
            metadata=details.metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )


class GuardedUnaryStream(_StreamResponse, _UnaryStreamBase):  # type: ignore[misc]
    """A unary-stream multi-callable with the breaker; grpc's signature."""

    __slots__ = ()

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The response stream (an iterator, grpc.Call and grpc.Future), or its rejection."""
        return self._stream(request, timeout, metadata, credentials, wait_for_ready, compression)


class GuardedStreamStream(_StreamResponse, _StreamStreamBase):  # type: ignore[misc]
    """A stream-stream multi-callable with the breaker; grpc's signature (`request_iterator`)."""

    __slots__ = ()

    _replayable = False

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The response stream (an iterator, grpc.Call and grpc.Future), or its rejection."""
        return self._stream(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )
