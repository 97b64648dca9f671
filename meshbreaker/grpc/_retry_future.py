"""RetryingFuture: a sync `.future()` unary call retried by its method's RetryPolicy.

A blocking call is retried in its caller's thread, which waits anyway. A future's caller does not
wait, so its retries are driven by each attempt's done-callback and by one timer thread shared by
every retrying future in the process, which starts each attempt once its backoff has passed
(starting one only calls `.future()`, which returns at once, so no attempt holds the timer up).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import grpc

from meshbreaker._adapter.guard import Guard, release
from meshbreaker._adapter.retrying import next_delay, remaining
from meshbreaker.breaker import CircuitBreaker, Permit
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.grpc._calls import CallBase, FutureBase, raised_below, record_finished
from meshbreaker.retry import RetryRun

logger = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED


class Timer:
    """Runs callables at their due time on one daemon thread, started when first needed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties run in the order they were scheduled
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn()` on the timer thread in `delay` seconds."""
        with self._wake:
            heapq.heappush(self._due, (self._clock() + delay, next(self._order), fn))
            if self._thread is None or not self._thread.is_alive():  # a forked child has none
                self._thread = threading.Thread(
                    target=self._run, name="meshbreaker-retry-timer", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due:
                    self._wake.wait()
                due, _, fn = self._due[0]
                wait = due - self._clock()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._due)
            try:
                fn()
            except Exception:
                logger.exception("meshbreaker: a retry's next attempt failed to start")


TIMER = Timer()

# Starts one attempt with the timeout left of the caller's deadline: the grpc future.
Start = Callable[[float | None], Any]


class RetryingFuture(CallBase, FutureBase):  # type: ignore[misc]
    """One grpc.Call and grpc.Future over a unary call's attempts; done when the last one is.

    Every attempt takes its own permit and is recorded when it ends; a retry refused locally ends
    the call at once with the last attempt's status (never retried, gRFC A6). cancel() cancels
    the attempt in flight or the pending retry. A future the caller drops still runs its attempts
    to the end (the timer holds it until then).
    """

    def __init__(
        self,
        guard: Guard,
        breaker: CircuitBreaker,
        run: RetryRun,
        start: Start,
        call: Any,
        permit: Permit,
    ) -> None:
        self._guard = guard
        self._breaker = breaker
        self._run = run
        self._start = start
        self._lock = threading.Lock()
        self._over = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._stop = False  # cancel() was called: no further attempt
        self._between = False  # cancel() ended the call between attempts
        self._call = call  # the attempt in flight; the final outcome once over
        call.add_done_callback(lambda ended: self._attempt_ended(ended, permit))

    # ----- the retry loop, on grpc's callback thread and the timer's ----------------------------

    def _attempt_ended(self, call: Any, permit: Permit) -> None:
        delay = None
        try:
            record_finished(self._guard, self._breaker, permit, call)
            code = call.code()
            if code is not _OK and not self._stop and not raised_below(call):
                delay = next_delay(
                    self._run,
                    code,
                    call.details(),
                    call.initial_metadata(),
                    call.trailing_metadata(),
                )
        except Exception:  # the call must end whatever happens: result() waits for it
            logger.exception("meshbreaker: deciding a retry of %s failed", self._breaker.name)
        if delay is None:
            self._finish(call)
        else:
            TIMER.call_later(delay, self._next_attempt)

    def _next_attempt(self) -> None:
        if self._stop:
            self._finish(self._call)  # cancel() has finished it unless it raced this retry
            return
        try:
            permit = self._breaker.acquire()
        except Exception as error:  # a refusal is never retried: the last attempt's status stands
            if not isinstance(error, CallNotPermittedError):
                logger.exception("meshbreaker: retrying %s failed", self._breaker.name)
            self._finish(self._call)
            return
        try:
            call = self._start(remaining(self._run))
        except Exception:
            release(permit)
            logger.exception("meshbreaker: retrying %s failed", self._breaker.name)
            self._finish(self._call)  # the last attempt's failure stands
            return
        with self._lock:
            self._call = call
            stop = self._stop
        if stop:
            call.cancel()  # cancel() came while this attempt was being started
        call.add_done_callback(lambda ended: self._attempt_ended(ended, permit))

    def _finish(self, call: Any) -> None:
        with self._lock:
            if self._over.is_set():
                return
            self._call = call
            self._over.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("meshbreaker: a done-callback of %s raised", self._breaker.name)

    # ----- grpc.Future -------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the attempt in flight, or the retry waiting for its backoff."""
        with self._lock:
            if self._over.is_set():
                return False
            self._stop = True
            call = self._call
        if not call.done():
            return bool(call.cancel())  # its end finishes this call, cancelled
        with self._lock:
            if self._over.is_set():
                return False  # its last attempt ended it first
            self._between = True
        self._finish(call)  # the pending retry will not start
        return True

    def cancelled(self) -> bool:
        """Whether cancel() ended the call."""
        return self._over.is_set() and (self._between or bool(self._call.cancelled()))

    def running(self) -> bool:
        """Whether an attempt is in flight or a retry is waiting."""
        return not self._over.is_set()

    def done(self) -> bool:
        """Whether the last attempt has ended (or the call was cancelled)."""
        return self._over.is_set()

    def _final(self, timeout: float | None) -> Any:
        if not self._over.wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._between:
            raise grpc.FutureCancelledError()
        return self._call

    def result(self, timeout: float | None = None) -> Any:
        """The response of the last attempt, or its error raised."""
        return self._final(timeout).result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The last attempt's error, None if it succeeded."""
        return self._final(timeout).exception()  # type: ignore[no-any-return]

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        """The traceback of the last attempt's error."""
        return self._final(timeout).traceback()  # type: ignore[no-any-return]

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call `fn(self)` when the call is done (at once if it is)."""
        if not self.add_callback(lambda: fn(self)):
            fn(self)

    # ----- grpc.Call: what the last attempt says, once over ------------------------------------

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call `callback()` when the call ends; False (not added) if it has."""
        with self._lock:
            if self._over.is_set():
                return False
            self._callbacks.append(callback)
            return True

    def is_active(self) -> bool:
        """Whether the call (an attempt or a retry's wait) is still going."""
        return not self._over.is_set()

    def time_remaining(self) -> float | None:
        """Seconds left of the deadline every attempt shares (None: no deadline)."""
        return remaining(self._run)

    def code(self) -> grpc.StatusCode:
        """The last attempt's code (CANCELLED if cancelled between attempts); waits for it."""
        self._over.wait()
        if self._between:
            return _CANCELLED
        return self._call.code()  # type: ignore[no-any-return]

    def details(self) -> str:
        """The last attempt's details; waits for it."""
        self._over.wait()
        if self._between:
            return "Locally cancelled while waiting to retry"
        return self._call.details()  # type: ignore[no-any-return]

    def initial_metadata(self) -> Any:
        """The last attempt's initial metadata; waits for it."""
        self._over.wait()
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        """The last attempt's trailing metadata; waits for it."""
        self._over.wait()
        return self._call.trailing_metadata()
