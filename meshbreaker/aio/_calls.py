"""The objects the grpc.aio interceptors hand back: rejections, fallback results, tracked streams.

Each has the name of its sync twin in meshbreaker.grpc._calls; both build on meshbreaker._adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import grpc
from grpc.aio import AioRpcError, Metadata

from meshbreaker._adapter.fallback import Fallback, FallbackResult, run_fallback
from meshbreaker._adapter.guard import Guard, release
from meshbreaker._adapter.rejection import (
    fallback_reason,
    rejection_code,
    rejection_details,
    rejection_metadata,
)
from meshbreaker._adapter.retrying import next_delay, remaining
from meshbreaker._adapter.tracking import Tracker
from meshbreaker._types import State
from meshbreaker.breaker import CircuitBreaker
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ThrottledError
from meshbreaker.retry import RetryRun

logger = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DoneCallback = Any


class RejectedError(CallNotPermittedError, AioRpcError):
    """The error a rejected grpc.aio call raises: an AioRpcError and a CallNotPermittedError."""

    def __init__(self, name: str, state: State, retry_after: float) -> None:
        # AioRpcError.__init__ resets `args`, where CallNotPermittedError keeps its fields.
        CallNotPermittedError.__init__(self, name, state, retry_after)
        code, details = rejection_code(self), rejection_details(self)
        AioRpcError.__init__(
            self, code, Metadata(), Metadata(*rejection_metadata(self)), details, None
        )
        self.args = (name, state, retry_after)

    def __reduce__(self) -> tuple[Any, ...]:
        # AioRpcError.__reduce__ would rebuild it from the gRPC fields instead.
        return (type(self), self.args)


class RejectedBulkheadError(BulkheadFullError, RejectedError):
    """A grpc.aio call rejected because max_concurrent_calls are in flight (RESOURCE_EXHAUSTED)."""


class RejectedThrottledError(ThrottledError, RejectedError):
    """A grpc.aio call adaptive throttling refused locally (UNAVAILABLE, THROTTLED)."""


_REJECTED_KINDS: dict[type[CallNotPermittedError], type[RejectedError]] = {
    BulkheadFullError: RejectedBulkheadError,
    ThrottledError: RejectedThrottledError,
}


class _FinishedCall(
    grpc.aio.UnaryUnaryCall,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryCall,  # type: ignore[type-arg]
    grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
):
    """A call that ended before reaching the network; serves every call kind."""

    def cancel(self) -> bool:
        """False: nothing to cancel."""
        return False

    def cancelled(self) -> bool:
        """False."""
        return False

    def done(self) -> bool:
        """True."""
        return True

    def time_remaining(self) -> float | None:
        """None."""
        return None

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Calls `callback(self)` at once."""
        callback(self)

    async def initial_metadata(self) -> Metadata:
        """Empty: no server was contacted."""
        return Metadata()

    async def wait_for_connection(self) -> None:
        """Nothing to wait for."""

    async def debug_error_string(self) -> str:
        """Empty."""
        return ""

    async def write(self, request: Any) -> None:
        """The call is over: like grpc, refuse the write."""
        raise asyncio.InvalidStateError("RPC already finished.")

    async def done_writing(self) -> None:
        """Nothing to close."""


class _RaisingCall(_FinishedCall):
    """A call over before the caller saw it, whose response is an exception: `_raised`."""

    _raised: BaseException

    async def _raise(self) -> Any:
        raise self._raised

    def __await__(self) -> Generator[Any, None, Any]:
        return self._raise().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        raise self._raised

    async def read(self) -> Any:
        """Raises the call's exception."""
        raise self._raised


class ErrorCall(_RaisingCall):
    """A grpc.aio call that ended with `error` before the caller saw it.

    Awaiting it or reading from it raises the error; its status and metadata are the error's.
    """

    def __init__(self, error: AioRpcError) -> None:
        self.error = self._raised = error

    async def initial_metadata(self) -> Metadata:
        """The error's initial metadata."""
        return self.error.initial_metadata()

    async def trailing_metadata(self) -> Metadata:
        """The error's trailing metadata."""
        return self.error.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        """The error's code."""
        return self.error.code()

    async def details(self) -> str:
        """The error's details."""
        return self.error.details() or ""

    async def debug_error_string(self) -> str:
        """The error's debug string."""
        return self.error.debug_error_string() or ""


class RejectedCall(ErrorCall):
    """A rejected grpc.aio call: awaiting it or reading from it raises its RejectedError.

    Its code is UNAVAILABLE (RESOURCE_EXHAUSTED for a full bulkhead), its details name the
    method, the state and the time to the next probe, its trailers carry x-meshbreaker-state.
    """

    error: RejectedError

    def __init__(self, error: RejectedError) -> None:
        super().__init__(error)


class FailedCall(_RaisingCall):
    """An exception raised below the breaker, handed back as an intercepted grpc.aio call does.

    grpc.aio runs interceptors in a task, so what the channel or an interceptor below raises
    (other than an AioRpcError) comes out where the call is used: awaiting it, reading it,
    writing to it or asking its status raises that exception, unchanged.
    """

    def __init__(self, exception: Exception) -> None:
        self.exception = self._raised = exception

    async def _status(self) -> Any:
        """Raises the exception, as an intercepted call asked for its status or metadata does."""
        raise self.exception

    initial_metadata = trailing_metadata = code = details = _status
    debug_error_string = wait_for_connection = done_writing = _status

    async def write(self, request: Any) -> None:
        """Raises the exception."""
        raise self.exception


class FallbackCall(_FinishedCall):
    """A unary-response call answered by a fallback instead of the server."""

    def __init__(self, result: FallbackResult, source: Any = None) -> None:
        self._result = result
        self._source = source  # the call that failed; None when the server was never called

    async def initial_metadata(self) -> Metadata:
        """The server's initial metadata when the server was called, else empty."""
        if self._source is None:
            return Metadata()
        return await self._source.initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> Metadata:
        """The server's trailing metadata (if any) plus the fallback markers."""
        server = None if self._source is None else await self._source.trailing_metadata()
        return Metadata(*self._result.trailing_metadata(server))

    async def code(self) -> grpc.StatusCode:
        """OK when the fallback answered, UNKNOWN when it raised."""
        return self._result.code

    async def details(self) -> str:
        """Says a fallback answered and why."""
        return self._result.details

    async def _response(self) -> Any:
        return self._result.response()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration

    async def read(self) -> Any:
        """No stream: EOF."""
        return grpc.aio.EOF


def rejected_error(error: CallNotPermittedError) -> RejectedError:
    """The AioRpcError a refused call raises."""
    kind = _REJECTED_KINDS.get(type(error), RejectedError)
    return kind(error.name, error.state, error.retry_after)


def rejection(
    error: CallNotPermittedError, fallback: Fallback | None, request: Any
) -> RejectedCall | FallbackCall:
    """What a rejected call returns: the RejectedCall, or `fallback`'s answer to its error."""
    rejected = rejected_error(error)
    if fallback is None:
        return RejectedCall(rejected)
    reason = fallback_reason(error)
    return FallbackCall(run_fallback(fallback, request, rejected, reason, error.state))


class _CallProxy:
    """Passes a grpc.aio call through to `_call`; subclasses change what differs."""

    _call: Any

    def cancel(self) -> bool:
        """Cancels the call."""
        return self._call.cancel()  # type: ignore[no-any-return]

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return self._call.cancelled()  # type: ignore[no-any-return]

    def done(self) -> bool:
        """Whether the call is done."""
        return self._call.done()  # type: ignore[no-any-return]

    def time_remaining(self) -> float | None:
        """The call's remaining time."""
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Calls `callback(self)` when the call is done."""
        self._call.add_done_callback(lambda _call: callback(self))

    async def initial_metadata(self) -> Metadata:
        """The server's initial metadata."""
        return await self._call.initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> Metadata:
        """The server's trailing metadata."""
        return await self._call.trailing_metadata()  # type: ignore[no-any-return]

    async def code(self) -> grpc.StatusCode:
        """The call's status code."""
        return await self._call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        """The call's status details."""
        return await self._call.details()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        """Waits for the call's connection."""
        await self._call.wait_for_connection()

    async def write(self, request: Any) -> None:
        """Writes to the request stream."""
        await self._call.write(request)

    async def done_writing(self) -> None:
        """Closes the request stream."""
        await self._call.done_writing()

    @property
    def _done_writing_flag(self) -> bool:
        # grpc's intercepted stream calls read this in write() from the call they were handed.
        return bool(self._call._done_writing_flag)


class TrackedUnaryCall(
    _CallProxy,
    grpc.aio.UnaryUnaryCall,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryCall,  # type: ignore[type-arg]
):
    """A unary-response call passed through, its outcome counted before the caller's await returns.

    grpc.aio may run a call's done-callbacks after the awaiting task has resumed; counting here
    too means a caller that has its answer also sees it in the breaker (the callback stays as the
    safety net for calls nobody awaits, and only the first report counts).
    """

    def __init__(self, call: Any, tracker: CallTracker) -> None:
        self._call = call
        self._tracker = tracker

    def __await__(self) -> Generator[Any, None, Any]:
        # A generator, not a coroutine's __await__: one frame and no coroutine per call.
        try:
            response = yield from self._call.__await__()
        except AioRpcError as error:
            self._tracker.finish(error.code(), error_details(error))
            raise
        except Exception:  # raised below the breaker: no status, never counted
            self._tracker.release()
            raise
        self._tracker.finish(_OK)
        return response


class FallbackOnFailureCall(
    _CallProxy,
    grpc.aio.UnaryUnaryCall,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryCall,  # type: ignore[type-arg]
):
    """An in-flight unary-response call that turns into its fallback's response if it fails."""

    def __init__(
        self, call: Any, request: Any, fallback: Fallback, guard: Guard, breaker: CircuitBreaker
    ) -> None:
        self._call = call
        self._request = request
        self._fallback = fallback
        self._guard = guard
        self._breaker = breaker
        self._fallback_call: FallbackCall | None = None

    async def _result(self) -> Any:
        try:
            return await self._call
        except AioRpcError as error:
            if self._fallback_call is None:
                if not self._guard.fallback_applies(self._breaker, error.code()):
                    raise
                result = run_fallback(
                    self._fallback, self._request, error, "failure", self._breaker.state
                )
                self._fallback_call = FallbackCall(result, self._call)
            return await self._fallback_call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def trailing_metadata(self) -> Metadata:
        """The server's trailing metadata, plus the fallback markers if a fallback answered."""
        if self._fallback_call is not None:
            return await self._fallback_call.trailing_metadata()
        return await self._call.trailing_metadata()  # type: ignore[no-any-return]

    async def code(self) -> grpc.StatusCode:
        """The call's code, or OK when a fallback answered its failure."""
        if self._fallback_call is not None:
            return await self._fallback_call.code()
        return await self._call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        """The call's details, or the fallback's."""
        if self._fallback_call is not None:
            return await self._fallback_call.details()
        return await self._call.details()  # type: ignore[no-any-return]


def _value_now(coroutine: Any) -> Any:
    """What a coroutine of a done aio call returns, without awaiting (None if it would block)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    return None


def _grpc_calls() -> tuple[frozenset[type], Any]:
    try:
        from grpc._common import CYGRPC_STATUS_CODE_TO_STATUS_CODE
        from grpc._cython import cygrpc
        from grpc.aio import _call

        if not callable(cygrpc._AioCall.add_done_callback):  # free_done's hook
            return frozenset(), {}
        kinds = (_call.UnaryUnaryCall, _call.UnaryStreamCall, _call.StreamUnaryCall)
        return frozenset((*kinds, _call.StreamStreamCall)), CYGRPC_STATUS_CODE_TO_STATUS_CODE
    except Exception:  # pragma: no cover - grpc renamed them (the pinning test says so)
        return frozenset(), {}


# grpc.aio's own call classes, and its map from the core's status codes to grpc.StatusCode. Such a
# call keeps its final status in its cython call (`_cython_call._status`), set before grpc runs
# its done-callbacks; read there, a done-callback costs a fifth of running code()'s coroutine to
# its end (two coroutines and a StopIteration each). Private grpc names, pinned by
# test_done_status_reads_as_code_and_details: should grpc rename them, GRPC_CALLS is empty, every
# status is read through code() and no call is handed over unproxied (free_done).
GRPC_CALLS, _CORE_CODES = _grpc_calls()
_CORE_OK = next((core for core, code in _CORE_CODES.items() if code is _OK), None)


def error_details(error: AioRpcError) -> str | None:
    """An AioRpcError's details when its code is UNAVAILABLE."""
    return error.details() if error.code() is _UNAVAILABLE else None


# Strong references to the rare status reads that could not complete synchronously.
_pending: set[asyncio.Future[None]] = set()


class CallTracker(Tracker):
    """Tracks a grpc.aio call through its done-callback."""

    __slots__ = ()

    def watch(self, call: Any) -> None:
        """Report when `call` is done (at once if it already is)."""
        if type(call) in GRPC_CALLS:  # grpc calls back at once if the call is done already
            call.add_done_callback(self.on_done)
        elif call.done():
            self.on_done(call)
        else:
            call.add_done_callback(self.on_done)

    def on_done(self, call: Any) -> None:
        """The call's done-callback: done-callbacks are sync while code() is a coroutine."""
        if not self._permit.done:
            self._report(call)

    def _report(self, call: Any) -> None:
        """Report the status of `call`, done (later, in a task, if reading it would block)."""
        try:
            status = call._cython_call._status if type(call) in GRPC_CALLS else None
            if status is not None:  # grpc sets it before it runs the done-callbacks
                code = _CORE_CODES[status.code()]
            else:
                code = _value_now(call.code())  # None if it would block
                if code is None:
                    _pending.add(task := asyncio.ensure_future(self._finish_later(call)))
                    task.add_done_callback(_pending.discard)
                    return
            details = None
            if code is _UNAVAILABLE:  # a balancer's drop?
                details = status.details() if status is not None else _value_now(call.details())
        except Exception:  # the call raised something below the breaker: no status to count
            self.release()
            return
        self.finish(code, details)

    async def _finish_later(self, call: Any) -> None:
        try:
            code = await call.code()
            self.finish(code, await call.details() if code is _UNAVAILABLE else None)
        except Exception:  # raised below the breaker: no status to count
            self.release()
        except BaseException:
            self.release()
            raise


class FreeCallTracker(CallTracker):
    """A CallTracker for a call CircuitBreaker.admit_free() admitted: no Permit, one report.

    A flag stands in for the Permit's lock-free once-only report, which is for threads: every
    report of a grpc.aio call comes on its event loop's thread (its await, its done-callback,
    the task that reads a status later, a caller's cancel), so no two race. Unary responses
    only: no first message is timed.
    """

    __slots__ = ("_generation", "_start")

    def __init__(
        self, guard: Guard, breaker: CircuitBreaker, generation: int, start: float
    ) -> None:
        self._guard = guard
        self._breaker = breaker
        self._generation: int | None = generation  # None once reported
        self._start = start
        self.first = None

    def on_done(self, call: Any) -> None:
        """The call's done-callback (CallTracker's), for a call not reported yet."""
        if self._generation is not None:
            self._report(call)

    def finish(self, code: grpc.StatusCode | None, details: str | None = None) -> None:
        """Record the final status, as CallTracker does; only the first report counts."""
        generation = self._generation
        if generation is None:
            return
        self._generation = None
        breaker = self._breaker
        if code is _OK:
            self._guard.finish_free_ok(breaker, generation, self._start)
        else:
            permit = breaker.permit_for(generation, self._start)
            self._guard.record(permit, breaker, code, details=details)

    def release(self) -> None:
        """The caller gave up on the call, or it raised below the breaker: ignore it, once."""
        generation = self._generation
        if generation is not None:
            self._generation = None
            release(self._breaker.permit_for(generation, self._start))


def free_done(
    guard: Guard, breaker: CircuitBreaker, generation: int, start: float, call: Any
) -> None:
    """The one report of grpc's own unary call admitted freely and handed over unproxied.

    Added to the call's cython call, whose done-callbacks grpc runs as it sets the status, before
    the task awaiting the call resumes: counted before the caller sees the outcome, as
    TrackedUnaryCall counts it. Never raises (an exception here would reach grpc's core).
    """
    try:
        status = call._cython_call._status
        ok = status is not None and status.code() == _CORE_OK
    except Exception:  # pragma: no cover - grpc changed its cython call (the pinning test says so)
        ok = False  # then _report() reads the status its own way, or gives up on it
    if ok:
        guard.finish_free_ok(breaker, generation, start)
    else:
        FreeCallTracker(guard, breaker, generation, start)._report(call)


class TrackedStream(
    _CallProxy,
    grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
):
    """A response stream passed through that notes its first message and its end."""

    def __init__(self, call: Any, tracker: CallTracker) -> None:
        self._call = call
        self._iterator: Any = None
        self._tracker = tracker
        # None until _first() has timed the first message, then `_iterator`'s bound __anext__
        # (a retry replaces `_iterator` only before that). Set early, the first message would go
        # untimed: test_slow_means_total_time_for_unary_and_first_message_for_streams breaks.
        self._next: Callable[[], Awaitable[Any]] | None = None

    def __aiter__(self) -> TrackedStream:
        if self._iterator is None:
            self._iterator = self._call.__aiter__()
        return self

    def __anext__(self) -> Awaitable[Any]:
        next_message = self._next
        if next_message is None:
            return self._first()
        # After the first message the inner awaitable is returned as is: no await, no frame of
        # its own per message, and one attribute read to find the inner __anext__.
        return next_message()

    async def _first(self) -> Any:
        if self._iterator is None:
            self._iterator = self._call.__aiter__()
        try:
            response = await self._iterator.__anext__()
        except StopAsyncIteration:
            self._tracker.finish(_OK)
            raise
        except AioRpcError as error:
            self._tracker.finish(error.code(), error_details(error))
            raise
        except Exception:  # raised below the breaker: no status, never counted
            self._tracker.release()
            raise
        self._tracker.first_message()
        self._next = self._iterator.__anext__
        return response

    async def read(self) -> Any:
        """The next message, or grpc.aio.EOF.

        Read through the iterator, as grpc's intercepted calls read, so read() and `async for`
        may be mixed on a guarded channel exactly as on an intercepted one.
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    def cancel(self) -> bool:
        """Cancels the call and frees its permit at once (a cancelled call is ignored)."""
        cancelled = bool(self._call.cancel())
        if cancelled:
            self._tracker.release()
        return cancelled

    async def debug_error_string(self) -> str:
        """The call's debug error string."""
        return await self._call.debug_error_string()  # type: ignore[no-any-return]


class RetryingStream(TrackedStream):
    """A response stream retried by its method's RetryPolicy until its first message arrives."""

    def __init__(
        self,
        call: Any,
        tracker: CallTracker,
        run: RetryRun,
        restart: Callable[[float | None], Awaitable[tuple[Any, CallTracker] | None]],
    ) -> None:
        super().__init__(call, tracker)
        self._run = run
        self._restart = restart

    async def _first(self) -> Any:
        while True:
            try:
                return await TrackedStream._first(self)
            except AioRpcError as error:
                await self._retry_after(error)

    async def _retry_after(self, error: AioRpcError) -> None:
        """Start the next attempt after `error`, or raise it when no retry is due."""
        if isinstance(error, CallNotPermittedError):
            raise error  # a local refusal: never retried, and no retry drawn from the budget
        delay = next_delay(
            self._run,
            error.code(),
            error.details(),
            error.initial_metadata(),
            error.trailing_metadata(),
        )
        if delay is None:
            raise error
        await asyncio.sleep(delay)
        restarted = await self._restart(remaining(self._run))
        if restarted is None:  # refused locally: the last attempt's status stands (gRFC A6)
            raise error
        self._call, self._tracker, self._iterator = restarted[0], restarted[1], None
