"""guarded_channel for grpc.aio: a channel whose multi-callables carry the breaker themselves.

A grpc.aio channel runs its interceptors in a task per call, started before the caller awaits
anything. Here a call is admitted, made and tracked synchronously where the caller makes it,
with the interceptors' own admission, tracking and rejection code; only a unary call that its
retry policy may retry runs in a task, the interceptors' retry loop behind a DeferredCall. A unary
call the breaker admits freely is handed back as grpc's own call, counted by free_done.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Generator, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio
from grpc.aio import AioRpcError, ClientCallDetails

from meshbreaker._adapter.fallback import Fallback
from meshbreaker._adapter.guard import Guard, MethodInfo, release
from meshbreaker._adapter.retrying import retry_run
from meshbreaker.aio._calls import (
    GRPC_CALLS,
    CallTracker,
    FailedCall,
    FreeCallTracker,
    free_done,
)
from meshbreaker.aio.interceptors import (
    refusal,
    restart_stream,
    retrying,
    track_stream,
    track_unary,
)
from meshbreaker.registry import BreakerRegistry

logger = logging.getLogger(__name__)

# grpc's stubs type these ABCs as generics; the classes here serve any message type.
_UnaryUnaryBase: Any = grpc.aio.UnaryUnaryMultiCallable
_UnaryStreamBase: Any = grpc.aio.UnaryStreamMultiCallable
_StreamUnaryBase: Any = grpc.aio.StreamUnaryMultiCallable
_StreamStreamBase: Any = grpc.aio.StreamStreamMultiCallable
_CallBase: Any = grpc.aio.UnaryUnaryCall


def guarded_channel(
    channel: grpc.aio.Channel,
    registry: BreakerRegistry | None = None,
    *,
    target: str | None = None,
    fallbacks: Mapping[str, Fallback] | None = None,
    fallback_on_failure: bool = False,
    failure_codes: Iterable[str | grpc.StatusCode] | None = None,
    ignored_codes: Iterable[str | grpc.StatusCode] | None = None,
) -> grpc.aio.Channel:
    """`channel` with a circuit breaker per method, as breaker_interceptors give, at less cost.

    Takes breaker_interceptors' options and behaves exactly as a channel made with
    `interceptors=breaker_interceptors(registry, ...)`, for every call kind. The channel may
    have interceptors of its own: they run inside the breaker, on every attempt.
    """
    if not isinstance(channel, grpc.aio.Channel):
        raise TypeError(f"channel must be a grpc.aio.Channel, got {type(channel).__name__}")
    guard = Guard(
        registry,
        target=target,
        fallbacks=fallbacks,
        fallback_on_failure=fallback_on_failure,
        failure_codes=failure_codes,
        ignored_codes=ignored_codes,
    )
    return GuardedChannel(channel, guard)


class GuardedChannel(grpc.aio.Channel):
    """A grpc.aio channel whose multi-callables guard each call with the Guard's breakers."""

    def __init__(self, channel: grpc.aio.Channel, guard: Guard) -> None:
        self._channel = channel
        self._guard = guard

    @property
    def registry(self) -> BreakerRegistry:
        """The registry holding the breakers."""
        return self._guard.registry

    async def __aenter__(self) -> GuardedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        """Closes the wrapped channel."""
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The wrapped channel's connectivity."""
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Waits for the wrapped channel's connectivity to change."""
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Waits until the wrapped channel is ready."""
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A guarded unary-unary multi-callable."""
        return GuardedUnaryUnary(
            self._channel.unary_unary(method, *args, **kwargs), method, self._guard
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A guarded unary-stream multi-callable."""
        return GuardedUnaryStream(
            self._channel.unary_stream(method, *args, **kwargs), method, self._guard
        )

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A guarded stream-unary multi-callable (retried by replaying its buffered requests)."""
        return GuardedStreamUnary(
            self._channel.stream_unary(method, *args, **kwargs), method, self._guard
        )

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A guarded stream-stream multi-callable (never retried)."""
        return GuardedStreamStream(
            self._channel.stream_stream(method, *args, **kwargs), method, self._guard
        )


class _Guarded:
    """One guarded call, admitted, made and tracked where the caller makes it.

    The subclasses below cross grpc.aio's two request signatures with the two response kinds.
    """

    __slots__ = ("_covered", "_guard", "_info", "_inner", "_method")

    # Whether a retry policy may make the call again (not a bidi stream: its requests may answer
    # its responses), and whether its requests are a stream, replayed from a ReplayBuffer.
    _replayable = True
    _streamed = False
    # Unary responses are retried before the call is handed over (in a DeferredCall) and answered
    # by fallbacks; response streams are retried inside the stream, before its first message.
    _unary_response = True

    def __init__(self, inner: Any, method: str, guard: Guard) -> None:
        # Its bound __call__: calling the object itself with keywords packs them into a dict
        # (a class's __call__ goes through slot_tp_call); the bound method passes them as they are.
        self._inner = inner.__call__
        self._method = method
        self._guard = guard
        info = guard.method_info(method)
        self._info: MethodInfo = info
        self._covered = info.fallback is not None and guard.fallback_on_failure

    def _call(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The call guarded, its refusal, or (if meshbreaker itself failed) the call unguarded.

        Made exactly as the interceptors would make it. Awaiting or reading a refusal raises.

        The hot path: no dict of options, no frame beyond the tracking function (track_unary or
        track_stream, shared with the interceptors). grpc.aio's signature for a unary request
        (the request, then keyword-only options), so that kind calls it with no frame between.
        """
        guard = self._guard
        info = self._info
        generation = None
        try:
            breaker = guard.registry.get(info.name)
            run = None
            if self._replayable and breaker.retry_budget is not None:
                # A request stream the caller write()s (None) cannot be replayed: never retried.
                if request is not None or not self._streamed:
                    run = retry_run(breaker, timeout)
                if run is not None and self._unary_response:
                    # Retried before the caller sees an answer: in a task, like interceptors.
                    details = ClientCallDetails(
                        self._method, timeout, metadata, credentials, wait_for_ready
                    )
                    through = self._through(compression)
                    attempts = retrying(guard, through, details, request, run, self._streamed)
                    return DeferredCall(attempts)
            if self._unary_response and not self._covered:
                start = breaker.clock()
                generation = breaker.admit_free(start)  # then a FreeCallTracker reports it
            permit = breaker.acquire() if generation is None else None
        except Exception as error:
            fallback = info.fallback if self._unary_response else None
            refused = refusal(error, fallback, request, self._method)
            if refused is not None:
                return refused
            permit = generation = None  # meshbreaker failed: the call is made unguarded
        try:
            call = self._inner(
                request,
                timeout=timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except BaseException as error:
            if generation is not None:
                permit = breaker.permit_for(generation, start)
            if permit is not None:
                release(permit)
            if isinstance(error, Exception):  # raised below the breaker: where intercepted has it
                return FailedCall(error)
            raise
        if generation is not None:
            if type(call) in GRPC_CALLS:
                # No proxy to await through: free_done counts it before the caller resumes.
                done = functools.partial(free_done, guard, breaker, generation, start, call)
                call._cython_call.add_done_callback(done)
                return call
            tracker: CallTracker = FreeCallTracker(guard, breaker, generation, start)
            return track_unary(guard, info, breaker, tracker, call, request)
        if permit is None:
            return call
        if self._unary_response:
            tracker = CallTracker(guard, breaker, permit)
            return track_unary(guard, info, breaker, tracker, call, request)
        restart = None
        if run is not None:
            details = ClientCallDetails(
                self._method, timeout, metadata, credentials, wait_for_ready
            )
            through = self._through(compression)
            restart = functools.partial(restart_stream, guard, breaker, through, details, request)
        return track_stream(guard, info, breaker, permit, call, run, restart)

    def _through(self, compression: Any) -> Any:
        """The continuation the interceptors' code calls: this call's channel multi-callable."""

        async def continuation(details: Any, request: Any) -> Any:
            return self._inner(
                request,
                timeout=details.timeout,
                metadata=details.metadata,
                credentials=details.credentials,
                wait_for_ready=details.wait_for_ready,
                compression=compression,
            )

        return continuation


class _StreamResponse(_Guarded):
    """A response stream: tracked to its end, retried before its first message."""

    __slots__ = ()

    _unary_response = False


class _UnaryRequest(_Guarded):
    """grpc.aio's signature for a unary request: the request, then keyword-only options."""

    __slots__ = ()

    __call__ = _Guarded._call  # the same signature (pinned by tests/contract): no extra frame


class _StreamRequest(_Guarded):
    """grpc.aio's signature for a request stream: `request_iterator` (None: write() them)."""

    __slots__ = ()

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The call, or its rejection (awaiting or reading it raises)."""
        return self._call(
            request_iterator,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


class GuardedUnaryUnary(_UnaryRequest, _UnaryUnaryBase):  # type: ignore[misc]
    """A unary-unary multi-callable with the breaker."""

    __slots__ = ()


class GuardedUnaryStream(_UnaryRequest, _StreamResponse, _UnaryStreamBase):  # type: ignore[misc]
    """A unary-stream multi-callable with the breaker."""

    __slots__ = ()


class GuardedStreamUnary(_StreamRequest, _StreamUnaryBase):  # type: ignore[misc]
    """A stream-unary multi-callable with the breaker; its requests replayed on a retry."""

    __slots__ = ()

    _streamed = True


class GuardedStreamStream(_StreamRequest, _StreamResponse, _StreamStreamBase):  # type: ignore[misc]
    """A stream-stream multi-callable with the breaker; never retried."""

    __slots__ = ()

    _replayable = False


class DeferredCall(_CallBase):  # type: ignore[misc]
    """A unary-response call whose attempts run in a task: the call API of the one that answers.

    What the interceptors' retry loop returns (the last attempt, a fallback, a rejection) is
    the call; an AioRpcError it raises is the call's error, as on an intercepted aio channel.
    """

    def __init__(self, attempts: Any) -> None:
        self._task: asyncio.Task[Any] = asyncio.ensure_future(attempts)

    async def _call(self) -> Any:
        return await self._task

    def _error(self) -> AioRpcError | None:
        """The retry loop's error once it has ended with one (None while running or answered)."""
        if not self._task.done() or self._task.cancelled():
            return None
        error = self._task.exception()
        return error if isinstance(error, AioRpcError) else None

    async def _response(self) -> Any:
        return await (await self._task)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    def cancel(self) -> bool:
        """Cancels the attempt in flight, or the retry loop between attempts."""
        if not self._task.done():
            return self._task.cancel()
        if self._task.cancelled() or self._task.exception() is not None:
            return False
        return bool(self._task.result().cancel())

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        if self._task.cancelled():
            return True
        error = self._error()
        if error is not None:
            return error.code() is grpc.StatusCode.CANCELLED
        return (
            self._task.done()
            and self._task.exception() is None
            and bool(self._task.result().cancelled())
        )

    def done(self) -> bool:
        """Whether the call is over."""
        if not self._task.done():
            return False
        if self._task.cancelled() or self._task.exception() is not None:
            return True
        return bool(self._task.result().done())

    def time_remaining(self) -> float | None:
        """The remaining time of the attempt in flight, if it is known."""
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            return self._task.result().time_remaining()  # type: ignore[no-any-return]
        return None

    def add_done_callback(self, callback: Any) -> None:
        """Calls `callback(self)` once the call is over."""

        def answered(task: asyncio.Task[Any]) -> None:
            if task.cancelled() or task.exception() is not None:
                callback(self)
            else:
                task.result().add_done_callback(lambda _call: callback(self))

        self._task.add_done_callback(answered)

    async def initial_metadata(self) -> Any:
        """The answering call's initial metadata."""
        try:
            call = await self._task
        except AioRpcError as error:
            return error.initial_metadata()
        return await call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        """The answering call's trailing metadata."""
        try:
            call = await self._task
        except AioRpcError as error:
            return error.trailing_metadata()
        return await call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        """The answering call's code."""
        try:
            call = await self._task
        except AioRpcError as error:
            return error.code()
        return await call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        """The answering call's details."""
        try:
            call = await self._task
        except AioRpcError as error:
            return error.details() or ""
        return await call.details()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        """Waits until the first attempt has started."""
        try:
            call = await self._task
        except AioRpcError:
            return
        await call.wait_for_connection()

    async def debug_error_string(self) -> str:
        """The answering call's debug error string."""
        try:
            call = await self._task
        except AioRpcError as error:
            return error.debug_error_string() or ""
        return await call.debug_error_string()  # type: ignore[no-any-return]
