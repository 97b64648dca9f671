"""The objects the sync interceptor hands back: rejections, fallback results, tracked streams."""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc

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
from meshbreaker.breaker import CircuitBreaker, Permit
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ThrottledError
from meshbreaker.retry import RetryRun

logger = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# grpc's stubs type these ABCs narrowly (generic Future, _Metadatum tuples); the call objects
# here implement grpc's runtime protocol, so they subclass untyped aliases.
RpcErrorBase: Any = grpc.RpcError
CallBase: Any = grpc.Call
FutureBase: Any = grpc.Future


class _FinishedCall(CallBase, FutureBase):  # type: ignore[misc]
    """A call over before the caller sees it: what grpc.Call and grpc.Future answer once done."""

    def is_active(self) -> bool:
        """False."""
        return False

    def time_remaining(self) -> float | None:
        """None: there is no deadline to run down."""
        return None

    def cancel(self) -> bool:
        """False: nothing to cancel."""
        return False

    def cancelled(self) -> bool:
        """False."""
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """False: the call has already terminated."""
        return False

    def running(self) -> bool:
        """False."""
        return False

    def done(self) -> bool:
        """True."""
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Calls `fn(self)` at once: the call is done."""
        fn(self)


class RejectedCall(CallNotPermittedError, RpcErrorBase, _FinishedCall):  # type: ignore[misc]
    """A call the breaker rejected: an RpcError, Call, Future and response iterator in one."""

    def code(self) -> grpc.StatusCode:
        """UNAVAILABLE (RESOURCE_EXHAUSTED for a full bulkhead)."""
        return rejection_code(self)

    def details(self) -> str:
        """The method, the breaker state and the time to the next probe."""
        return rejection_details(self)

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        """Empty: no server was contacted."""
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """(("x-meshbreaker-state", state),)."""
        return rejection_metadata(self)

    def debug_error_string(self) -> str:
        """The details; there is no transport error."""
        return self.details()

    def result(self, timeout: float | None = None) -> Any:
        """Raises the rejection."""
        raise self

    def exception(self, timeout: float | None = None) -> BaseException:
        """The rejection itself."""
        return self

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        """The traceback of the rejection once raised."""
        return self.__traceback__

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise self

    next = __next__  # grpc's response iterators offer next() too


class RejectedBulkheadCall(BulkheadFullError, RejectedCall):
    """A call rejected because max_concurrent_calls are in flight (RESOURCE_EXHAUSTED)."""


class RejectedThrottledCall(ThrottledError, RejectedCall):
    """A call adaptive throttling refused locally (UNAVAILABLE, x-meshbreaker-state THROTTLED)."""


_REJECTED_KINDS: dict[type[CallNotPermittedError], type[RejectedCall]] = {
    BulkheadFullError: RejectedBulkheadCall,
    ThrottledError: RejectedThrottledCall,
}


class FailedCall(RpcErrorBase, _FinishedCall):  # type: ignore[misc]
    """An exception raised below the breaker, handed back as grpc.intercept_channel does.

    What an intercepted channel's `.future()` and response streams return when the channel or an
    interceptor below raises something that is not a grpc.RpcError: a finished call with code
    INTERNAL whose result() and iteration raise that exception, unchanged.
    """

    def __init__(self, exception: Exception, traceback: types.TracebackType | None) -> None:
        super().__init__()
        self._exception = exception
        self._traceback = traceback

    def code(self) -> grpc.StatusCode:
        """INTERNAL, as grpc says of an exception raised while intercepting."""
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        """grpc's own words for it."""
        return "Exception raised while intercepting the RPC"

    def initial_metadata(self) -> None:
        """None: no server answered."""
        return None

    def trailing_metadata(self) -> None:
        """None: no server answered."""
        return None

    def result(self, timeout: float | None = None) -> Any:
        """Raises the exception."""
        raise self._exception

    def exception(self, timeout: float | None = None) -> BaseException:
        """The exception."""
        return self._exception

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        """Where it was raised."""
        return self._traceback

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise self._exception

    next = __next__


def grpc_types(module: str, *names: str) -> tuple[type, ...]:
    """The classes `names` of grpc's `module` that exist (private names may go in a release)."""
    found = (getattr(importlib.import_module(module), name, None) for name in names)
    return tuple(kind for kind in found if isinstance(kind, type))


# An exception raised below the breaker, as a call: grpc.intercept_channel's own (private, pinned
# by test_grpcs_failure_outcome_type) and a guarded channel's. Not the dependency's answer, so the
# breaker ignores it and never retries it (DESIGN.md §4).
RAISED_BELOW = (*grpc_types("grpc._interceptor", "_FailureOutcome"), FailedCall)


def raised_below(call: Any) -> bool:
    """Whether `call` stands for an exception raised below the breaker, not for a status."""
    return isinstance(call, RAISED_BELOW)


def record_finished(
    guard: Guard,
    breaker: CircuitBreaker,
    permit: Permit,
    call: Any,
    duration: float | None = None,
    *,
    quiet: bool = False,
) -> None:
    """Record a finished call's status on `permit` (details only for UNAVAILABLE: a drop?).

    An exception raised below the breaker is no status: its permit is released, never counted.
    """
    code = call.code()
    if code is _OK:
        guard.record(permit, breaker, code, duration, quiet=quiet)
    elif not isinstance(call, RAISED_BELOW):
        details = call.details() if code is _UNAVAILABLE else None
        guard.record(permit, breaker, code, duration, quiet=quiet, details=details)
    elif quiet:  # a finalizer: no traceback formatting while the garbage collector runs
        with contextlib.suppress(Exception):
            permit.ignore()
    else:
        release(permit)


class FallbackCall(_FinishedCall):
    """A finished unary call whose result came from a fallback instead of the server."""

    def __init__(self, result: FallbackResult, source: grpc.Call | None) -> None:
        self._result = result
        self._source = source  # the call that failed; None when the server was never called

    def result(self, timeout: float | None = None) -> Any:
        """The fallback's response (or the exception it raised)."""
        return self._result.response()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """None, or the exception the fallback raised."""
        return self._result.error

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        """The traceback of the fallback's exception, if any."""
        error = self._result.error
        return None if error is None else error.__traceback__

    def code(self) -> grpc.StatusCode:
        """OK when the fallback answered, UNKNOWN when it raised."""
        return self._result.code

    def details(self) -> str:
        """Says a fallback answered and why."""
        return self._result.details

    def initial_metadata(self) -> Any:
        """The server's initial metadata when the server was called, else empty."""
        return self._source.initial_metadata() if self._source is not None else ()

    def trailing_metadata(self) -> Any:
        """The server's trailing metadata (if any) plus the fallback markers."""
        server = self._source.trailing_metadata() if self._source is not None else None
        return self._result.trailing_metadata(server)


def rejection(
    error: CallNotPermittedError, fallback: Fallback | None, request: Any
) -> RejectedCall | FallbackCall:
    """What a rejected call returns: the RejectedCall, or `fallback`'s answer to it."""
    kind = _REJECTED_KINDS.get(type(error), RejectedCall)
    rejected = kind(error.name, error.state, error.retry_after)
    if fallback is None:
        return rejected
    reason = fallback_reason(error)
    return FallbackCall(run_fallback(fallback, request, rejected, reason, error.state), None)


class _CallProxy(CallBase, FutureBase):  # type: ignore[misc]
    """Passes grpc.Call and grpc.Future through to `_call`; subclasses change what differs."""

    _call: Any

    def initial_metadata(self) -> Any:
        """See grpc.Call.initial_metadata."""
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        """See grpc.Call.trailing_metadata."""
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        """See grpc.Call.code."""
        return self._call.code()  # type: ignore[no-any-return]

    def details(self) -> str:
        """See grpc.Call.details."""
        return self._call.details()  # type: ignore[no-any-return]

    def is_active(self) -> bool:
        """See grpc.RpcContext.is_active."""
        return self._call.is_active()  # type: ignore[no-any-return]

    def time_remaining(self) -> float | None:
        """See grpc.RpcContext.time_remaining."""
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """See grpc.RpcContext.add_callback."""
        return self._call.add_callback(callback)  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """See grpc.Future.cancel."""
        return self._call.cancel()  # type: ignore[no-any-return]

    def cancelled(self) -> bool:
        """See grpc.Future.cancelled."""
        return self._call.cancelled()  # type: ignore[no-any-return]

    def running(self) -> bool:
        """See grpc.Future.running."""
        return self._call.running()  # type: ignore[no-any-return]

    def done(self) -> bool:
        """See grpc.Future.done."""
        return self._call.done()  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None) -> Any:
        """See grpc.Future.result."""
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """See grpc.Future.exception."""
        return self._call.exception(timeout)  # type: ignore[no-any-return]

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        """See grpc.Future.traceback."""
        return self._call.traceback(timeout)  # type: ignore[no-any-return]

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Calls `fn(self)` when the call is done."""
        self._call.add_done_callback(lambda _call: fn(self))


class FallbackOnFailureCall(_CallProxy):
    """An in-flight unary call that turns into its fallback's response if it fails."""

    def __init__(
        self,
        call: Any,
        request: Any,
        fallback: Fallback,
        guard: Guard,
        breaker: CircuitBreaker,
    ) -> None:
        self._call = call
        self._request = request
        self._fallback = fallback
        self._guard = guard
        self._breaker = breaker
        self._lock = threading.Lock()
        self._resolved: FallbackCall | None = None
        self._checked = False

    def _resolve(self, timeout: float | None = None) -> FallbackCall | None:
        """The fallback outcome if the call failed (computed once), else None."""
        if not self._checked:
            try:
                error = self._call.exception(timeout)
            except grpc.FutureCancelledError:
                return None  # cancelled: no failure to cover, the call answers for itself
            with self._lock:
                if not self._checked:
                    if error is not None and self._failed(error):
                        result = run_fallback(
                            self._fallback, self._request, error, "failure", self._breaker.state
                        )
                        self._resolved = FallbackCall(result, self._call)
                    self._checked = True
        return self._resolved

    def _failed(self, error: BaseException) -> bool:
        # An exception raised below the breaker (no grpc.Call) is the caller's, never covered.
        return isinstance(error, grpc.Call) and self._guard.fallback_applies(
            self._breaker, error.code()
        )

    def result(self, timeout: float | None = None) -> Any:
        """The response, or the fallback's response when the call failed."""
        resolved = self._resolve(timeout)
        return resolved.result() if resolved is not None else self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's exception unless the fallback covered it."""
        resolved = self._resolve(timeout)
        if resolved is not None:
            return resolved.exception()
        return self._call.exception(timeout)  # type: ignore[no-any-return]

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        """The traceback matching exception()."""
        resolved = self._resolve(timeout)
        if resolved is not None:
            return resolved.traceback()
        return self._call.traceback(timeout)  # type: ignore[no-any-return]

    def code(self) -> grpc.StatusCode:
        """The call's code, or the fallback's (OK) when the fallback covered a failure."""
        resolved = self._resolve()
        return resolved.code() if resolved is not None else self._call.code()

    def details(self) -> str:
        """The call's details, or the fallback's."""
        resolved = self._resolve()
        return resolved.details() if resolved is not None else self._call.details()

    def trailing_metadata(self) -> Any:
        """The server's trailing metadata, plus the fallback markers if a fallback answered."""
        resolved = self._resolve()
        return (
            resolved.trailing_metadata() if resolved is not None else self._call.trailing_metadata()
        )


class CallTracker(Tracker):
    """Tracks a sync call through grpc's termination callback, holding the call only weakly."""

    __slots__ = ("_call",)

    def finish_call(self, call: Any) -> None:
        """Record a finished call's status, unless an earlier report did."""
        if not self._permit.done:
            record_finished(self._guard, self._breaker, self._permit, call, self.first)

    def watch(self, call: Any) -> None:
        """Report when `call` terminates (at once if it already has)."""
        if call.done():
            self.finish_call(call)
            return
        # add_callback, not add_done_callback: grpc binds the call into a done-callback, which
        # would keep an abandoned call reachable from the channel and stop its cancel-on-GC.
        self._call: weakref.ref[Any] = weakref.ref(call)
        try:
            added = call.add_callback(self.on_done)
        except (AttributeError, NotImplementedError):
            call.add_done_callback(self.on_done_future)
            return
        if not added:
            self.finish_call(call)

    def on_done(self) -> None:
        """grpc's termination callback."""
        call = self._call()
        if call is None:
            release(self._permit)  # collected before it ended: cancelled on GC
        else:
            self.finish_call(call)

    def on_done_future(self, call: Any) -> None:
        """A done-callback, for call objects without add_callback."""
        self.finish_call(call)

    def abandoned(self, call: Any) -> None:
        """The caller dropped the call: record its status if it ended, else release the permit."""
        permit = self._permit
        if permit.done:
            return
        if call.done():
            record_finished(self._guard, self._breaker, permit, call, self.first, quiet=True)
        else:
            permit.ignore()


class TrackedStream(RpcErrorBase, _CallProxy):  # type: ignore[misc]
    """A response stream passed through unchanged that notes its first message and its end."""

    def __init__(self, call: Any, tracker: CallTracker) -> None:
        self._call = call
        self._next = call.__next__
        self._tracker = tracker

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            response = self._next()
        except StopIteration:
            self._tracker.finish(_OK)
            raise
        except grpc.RpcError as error:
            self._ended(error)
            raise
        if self._tracker.first is None:
            self._tracker.first_message()
        return response

    next = __next__  # grpc's response iterators offer next() too

    def _ended(self, error: grpc.RpcError) -> None:
        if isinstance(error, grpc.Call):
            try:
                self._tracker.finish_call(error)
                return
            except Exception:  # its status could not be read: counted as an error with none
                pass
        self._tracker.finish(None)

    def __del__(self) -> None:
        # Dropped by the caller: the call is cancelled on GC, so its permit must go now.
        # Finalizers run inside the garbage collector: no logging with tracebacks here.
        with contextlib.suppress(Exception):
            self._tracker.abandoned(self._call)

    def cancel(self) -> bool:
        """Cancels the call and frees its permit at once (a cancelled call is ignored)."""
        cancelled = bool(self._call.cancel())
        if cancelled:
            self._tracker.release()
        return cancelled

    def debug_error_string(self) -> str:
        """The underlying call's debug error string."""
        return self._call.debug_error_string()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return repr(self._call)

    def __str__(self) -> str:
        return str(self._call)


class RetryingStream(TrackedStream):
    """A response stream retried by its method's RetryPolicy until its first message arrives."""

    def __init__(
        self,
        call: Any,
        tracker: CallTracker,
        run: RetryRun,
        restart: Callable[[float | None], tuple[Any, CallTracker] | None],
    ) -> None:
        super().__init__(call, tracker)
        self._run = run
        self._restart = restart

    def __next__(self) -> Any:
        while True:
            try:
                return TrackedStream.__next__(self)
            except grpc.RpcError as error:
                if self._tracker.first is not None or not isinstance(error, grpc.Call):
                    raise  # after a message the caller has seen part of the answer
                delay = next_delay(
                    self._run,
                    error.code(),
                    error.details(),
                    error.initial_metadata(),
                    error.trailing_metadata(),
                )
                if delay is None:
                    raise
                time.sleep(delay)
                restarted = self._restart(remaining(self._run))
                if restarted is None:  # refused locally: the last attempt's status stands (A6)
                    raise
            call, tracker = restarted
            self._call, self._next, self._tracker = call, call.__next__, tracker

    next = __next__
