"""The sync call objects the interceptor hands back answer grpc's call API and free permits."""

from __future__ import annotations

import gc
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import pytest

from meshbreaker._adapter.guard import Guard
from meshbreaker.config import State
from meshbreaker.grpc import BreakerInterceptor
from meshbreaker.grpc.interceptor import CallDetails
from meshbreaker.registry import BreakerRegistry
from meshbreaker.retry import RetryPolicy
from tests.grpc.broken_registries import UnclassifiableBreaker
from tests.grpc.bytes_server import BIDI, CONFIG, SERVER_STREAM, UNARY, BytesServer
from tests.server_support import wait_until

CLOSED_CONFIG = CONFIG.replace(consecutive_failures=0)  # never trips: every call reaches the server
Connect = Callable[..., grpc.Channel]


def unary(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(UNARY)


def bidi(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable[bytes, bytes]:
    return channel.stream_stream(BIDI)


def server_stream(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(SERVER_STREAM)


@pytest.fixture
def connect(server: BytesServer) -> Iterator[Connect]:
    """connect(*interceptors) -> a channel to the test server through them, closed at teardown."""
    channels: list[grpc.Channel] = []

    def make(*interceptors: Any) -> grpc.Channel:
        channel = grpc.insecure_channel(server.target)
        channels.append(channel)
        return grpc.intercept_channel(channel, *interceptors)

    yield make
    for channel in channels:
        channel.close()


def counts(registry: BreakerRegistry, method: str) -> tuple[int, int, int]:
    """(successful, failed, ignored) of `method`'s breaker."""
    snapshot = registry.get(method).snapshot()
    return snapshot.successful, snapshot.failed, snapshot.ignored


def trip(channel: grpc.Channel, registry: BreakerRegistry) -> None:
    """Opens the breaker of UNARY with two UNAVAILABLE answers."""
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            unary(channel)(b"fail:UNAVAILABLE")
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert registry.get(UNARY).state is State.OPEN


def test_a_rejected_call_is_a_terminated_call(connect: Connect, registry: BreakerRegistry) -> None:
    channel = connect(BreakerInterceptor(registry))
    trip(channel, registry)
    future = unary(channel).future(b"hello")
    assert future.initial_metadata() == ()  # no server was contacted
    assert future.add_callback(lambda: None) is False  # terminated already: grpc's answer
    assert future.is_active() is False and future.running() is False and future.done() is True
    assert future.time_remaining() is None
    assert future.cancel() is False and future.cancelled() is False
    assert future.debug_error_string() == future.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as raised:
        future.result()
    assert raised.value is cast(object, future)  # the rejection is the future itself
    assert future.traceback() is future.__traceback__  # type: ignore[attr-defined]


def test_a_fallback_for_a_rejected_call_reads_as_a_call_no_server_answered(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(BreakerInterceptor(registry, fallbacks={UNARY: lambda r, e: b"cached"}))
    trip(channel, registry)
    response, call = unary(channel).with_call(b"hello")
    assert response == b"cached" and call.code() is grpc.StatusCode.OK
    assert call.initial_metadata() == ()  # no server was called
    assert tuple(call.trailing_metadata() or ()) == (
        ("x-meshbreaker-state", "OPEN"),
        ("x-meshbreaker-fallback", "rejected"),
    )


def test_a_future_covered_by_a_fallback_reads_as_the_fallbacks_answer(
    connect: Connect, server: BytesServer
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    channel = connect(
        BreakerInterceptor(
            registry, fallbacks={UNARY: lambda r, e: b"cached"}, fallback_on_failure=True
        )
    )
    future = unary(channel).future(b"fail:INTERNAL")
    assert future.result(timeout=10) == b"cached"
    assert future.code() is grpc.StatusCode.OK
    assert future.details() == "meshbreaker: fallback used (failure)"
    assert future.exception() is None and future.traceback() is None
    assert ("x-test-initial", "server") in tuple(future.initial_metadata() or ())
    trailing = tuple(future.trailing_metadata() or ())
    assert ("x-meshbreaker-fallback", "failure") in trailing
    assert ("x-test-trailer", "server") in trailing  # what the server sent is kept
    answered = unary(channel).future(b"fine")
    assert answered.result(timeout=10) == b"fine"
    assert (answered.code(), answered.details()) == (grpc.StatusCode.OK, "")
    assert answered.exception() is None and answered.traceback() is None
    not_covered = unary(channel).future(b"fail:NOT_FOUND")  # not a failure
    error = not_covered.exception(timeout=10)
    assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.NOT_FOUND
    assert not_covered.code() is grpc.StatusCode.NOT_FOUND
    assert not_covered.details() == "boom NOT_FOUND"
    assert not_covered.traceback() is not None
    assert wait_until(lambda: counts(registry, UNARY) == (2, 1, 0), timeout=10)


def test_a_fallback_that_raises_shows_its_error_on_the_future(connect: Connect) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)

    def fallback(request: bytes, error: BaseException) -> bytes:
        raise LookupError("no cached answer")

    channel = connect(
        BreakerInterceptor(registry, fallbacks={UNARY: fallback}, fallback_on_failure=True)
    )
    future = unary(channel).future(b"fail:INTERNAL")
    error = future.exception(timeout=10)
    assert isinstance(error, LookupError)
    assert future.code() is grpc.StatusCode.UNKNOWN
    frames = traceback.extract_tb(future.traceback())
    assert frames and frames[-1].name == "fallback"
    with pytest.raises(LookupError):
        future.result()


def test_a_raising_continuation_gives_the_stream_permit_back(server: BytesServer) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    plain = grpc.insecure_channel(server.target)
    channel = grpc.intercept_channel(plain, BreakerInterceptor(registry))
    plain.close()  # grpc's own continuation now raises; grpc hands the caller the error
    for _ in range(2):  # a kept slot would make the second a RESOURCE_EXHAUSTED rejection
        with pytest.raises(ValueError, match="closed"):
            next(server_stream(channel)(b"n:1"))
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.ignored, snapshot.rejected) == (2, 0)


def test_a_stream_that_ends_unread_is_still_recorded(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(BreakerInterceptor(registry))
    held: list[Any] = [
        server_stream(channel)(b"n:0"),
        server_stream(channel)(b"fail-after:0:UNAVAILABLE"),
    ]
    assert wait_until(lambda: counts(registry, SERVER_STREAM) == (1, 1, 0), timeout=10)
    assert all(stream.done() for stream in held)


def test_a_dropped_stream_frees_its_permit_at_once(
    connect: Connect, registry: BreakerRegistry, server: BytesServer
) -> None:
    registry.set_policy(SERVER_STREAM, CLOSED_CONFIG.replace(max_concurrent_calls=1))
    channel = connect(BreakerInterceptor(registry))
    stream = server_stream(channel)(b"forever")
    assert next(stream) == b"m0"
    del stream  # the last reference: grpc cancels the call; no garbage collection needed
    assert counts(registry, SERVER_STREAM) == (0, 0, 1)
    assert list(server_stream(channel)(b"n:1")) == [b"m0"]  # the slot is free


def test_an_outcome_a_finalizer_cannot_record_still_frees_the_permit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A dropped stream that had ended is recorded from its finalizer (quiet=True); if that
    # fails, the permit is given back all the same, and nothing is formatted at the GC's pace.
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    permit = registry.get(UNARY).acquire()
    unclassifiable: Any = UnclassifiableBreaker()  # reading its config raises
    Guard(registry).record(permit, unclassifiable, grpc.StatusCode.INTERNAL, quiet=True)
    assert permit.done
    assert counts(registry, UNARY) == (0, 0, 1)
    assert not [record for record in caplog.records if record.exc_info]


def test_an_outcome_that_cannot_be_recorded_is_logged_and_frees_the_permit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Outside a finalizer the failure is logged with its traceback, for whoever debugs it.
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    permit = registry.get(UNARY).acquire()
    unclassifiable: Any = UnclassifiableBreaker()  # reading its config raises
    Guard(registry).record(permit, unclassifiable, grpc.StatusCode.INTERNAL)
    assert permit.done
    assert counts(registry, UNARY) == (0, 0, 1)
    logged = [
        r
        for r in caplog.records
        if r.getMessage() == "meshbreaker: recording the outcome of broken failed"
    ]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_cancelling_a_stream_frees_its_permit_at_once(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(BreakerInterceptor(registry))
    stream = server_stream(channel)(b"forever")
    assert next(stream) == b"m0"
    assert stream.cancel()
    assert counts(registry, SERVER_STREAM) == (0, 0, 1)  # not when grpc's callback comes


def test_a_failed_stream_answers_the_call_api_like_grpcs_own(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(BreakerInterceptor(registry))
    stream = bidi(channel)(iter([b"x", b"fail:INTERNAL"]))
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert (stream.code(), stream.details()) == (grpc.StatusCode.INTERNAL, "boom INTERNAL")
    assert ("x-test-trailer", "server") in tuple(stream.trailing_metadata() or ())
    error = stream.exception()  # type: ignore[attr-defined]
    assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.INTERNAL
    assert stream.done() and not stream.running() and not stream.is_active()  # type: ignore[attr-defined]
    assert "boom INTERNAL" in repr(stream) and str(stream) == repr(stream)  # as grpc shows it


class _NotACall(grpc.RpcError):
    """An RpcError that is no grpc.Call, as a lower layer may raise in place of grpc's own."""


class _LateCallbacks:
    """A lower layer's stream that reports its end only when told to (`call_back`); when
    `converting`, it raises _NotACall in place of grpc's error."""

    def __init__(self, call: Any, converting: bool) -> None:
        self._call = call
        self._converting = converting
        self._callbacks: list[Callable[[], None]] = []
        self._called_back = False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def done(self) -> bool:
        return self._called_back

    def call_back(self) -> None:
        self._called_back = True
        for callback in self._callbacks:
            callback()

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as error:
            if not self._converting:
                raise
            raise _NotACall(str(error)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class CallingBackLate(grpc.UnaryStreamClientInterceptor):
    """Below the breaker: hands each stream up as a _LateCallbacks (`streams`)."""

    def __init__(self, converting: bool) -> None:
        self.streams: list[_LateCallbacks] = []
        self._converting = converting

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.streams.append(_LateCallbacks(continuation(details, request), self._converting))
        return self.streams[-1]


@pytest.mark.parametrize("converting", [False, True], ids=["grpcs-error", "an-error-no-call"])
def test_a_stream_failure_is_counted_before_the_caller_sees_it(
    connect: Connect, converting: bool
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    below = CallingBackLate(converting)
    stream = server_stream(connect(BreakerInterceptor(registry), below))(b"fail-after:0:INTERNAL")
    with pytest.raises(_NotACall if converting else grpc.RpcError):
        next(stream)
    assert counts(registry, SERVER_STREAM) == (0, 1, 0)  # before the layer below reports the end
    below.streams[0].call_back()
    assert counts(registry, SERVER_STREAM) == (0, 1, 0)  # once


def test_a_failed_future_runs_its_fallback_once_for_concurrent_readers(connect: Connect) -> None:
    ran: list[bytes] = []

    def fallback(request: bytes, error: BaseException) -> bytes:
        ran.append(request)
        time.sleep(0.05)  # long enough for every reader to arrive while it runs
        return b"cached"

    registry = BreakerRegistry(CLOSED_CONFIG)
    channel = connect(
        BreakerInterceptor(registry, fallbacks={UNARY: fallback}, fallback_on_failure=True)
    )
    future = unary(channel).future(b"fail:INTERNAL")
    assert wait_until(future.done, timeout=10)
    readers = 4
    start = threading.Barrier(readers)
    answers: list[bytes] = []

    def read() -> None:
        start.wait(10)
        answers.append(future.result(timeout=10))

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == [b"cached"] * readers and ran == [b"fail:INTERNAL"]


def test_next_on_a_retried_stream_retries_like_iteration(connect: Connect) -> None:
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(CLOSED_CONFIG.replace(retry=fast, idempotent=True))
    channel = connect(BreakerInterceptor(registry))
    stream = server_stream(channel)(b"flaky:1:UNAVAILABLE")  # fails once, then answers
    assert stream.next() == b"flaky:1:UNAVAILABLE"  # type: ignore[attr-defined]
    assert registry.get(SERVER_STREAM).snapshot().failed == 1  # the attempt retried


def test_a_call_in_flight_answers_the_call_api_through_its_proxy(
    connect: Connect, server: BytesServer
) -> None:
    # A future covered by a fallback on failure and a response stream are proxies of grpc's
    # call: while it runs, every question reaches it, and cancel() cancels it.
    registry = BreakerRegistry(CLOSED_CONFIG)
    channel = connect(
        BreakerInterceptor(registry, fallbacks={UNARY: lambda r, e: b"c"}, fallback_on_failure=True)
    )
    for make in (unary(channel).future, server_stream(channel)):
        server.expect_entries()
        call: Any = make(b"block", timeout=60)
        assert server.entered.acquire(True, 30)
        assert call.running() is True and call.done() is False and call.is_active() is True
        remaining = call.time_remaining()
        assert remaining is not None and 0 < remaining <= 60
        ended = threading.Event()
        assert call.add_callback(ended.set) is True
        assert call.cancel() is True
        assert ended.wait(10) and call.cancelled() is True and call.running() is False
        assert call.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(grpc.FutureCancelledError):
            call.result()  # as grpc's own cancelled future: no fallback covers a cancellation
    assert counts(registry, UNARY) == counts(registry, SERVER_STREAM) == (0, 0, 1)


class _Unwatchable:
    """A call from below that takes no callback (a lower interceptor's own call object)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def done(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        raise RuntimeError("takes no callback")

    add_done_callback = add_callback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class AnsweringUnwatchably(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return _Unwatchable(continuation(details, request))


@pytest.mark.parametrize("retried", [False, True], ids=["plain", "retry-policy"])
def test_a_future_meshbreaker_cannot_watch_goes_through_and_frees_its_slot(
    connect: Connect, caplog: pytest.LogCaptureFixture, retried: bool
) -> None:
    config = CLOSED_CONFIG.replace(max_concurrent_calls=1)
    if retried:
        fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
        config = config.replace(retry=fast, idempotent=True)
    registry = BreakerRegistry(config)
    channel = connect(BreakerInterceptor(registry), AnsweringUnwatchably())
    for _ in range(2):  # a kept slot would make the second a RESOURCE_EXHAUSTED rejection
        assert unary(channel).future(b"hello").result(timeout=10) == b"hello"
    assert counts(registry, UNARY) == (0, 0, 2)
    failed = "retrying" if retried else "tracking"
    assert f"meshbreaker: {failed} {UNARY} failed" in caplog.text


class _UnwatchableStream(_Unwatchable):
    """A response stream from below that takes no callback."""

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return next(self._call)


class StreamingUnwatchably(grpc.UnaryStreamClientInterceptor):
    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return _UnwatchableStream(continuation(details, request))


def test_a_stream_meshbreaker_cannot_watch_goes_through_and_frees_its_slot(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    channel = connect(BreakerInterceptor(registry), StreamingUnwatchably())
    for _ in range(2):  # a kept slot would make the second a RESOURCE_EXHAUSTED rejection
        assert list(server_stream(channel)(b"n:2")) == [b"m0", b"m1"]
    assert f"meshbreaker: tracking {SERVER_STREAM} failed" in caplog.text


class _FutureOnly:
    """A call from below that is a grpc.Future without grpc.Call's add_callback."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def add_callback(self, callback: Any) -> bool:
        raise AttributeError("add_callback")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class AnsweringFuturesOnly(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return _FutureOnly(continuation(details, request))


def test_a_future_without_add_callback_is_counted_through_its_done_callback(
    connect: Connect,
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    channel = connect(BreakerInterceptor(registry), AnsweringFuturesOnly())
    assert unary(channel).future(b"hello").result(timeout=10) == b"hello"
    failed = unary(channel).future(b"fail:INTERNAL")
    assert cast(grpc.Call, failed.exception(timeout=10)).code() is grpc.StatusCode.INTERNAL
    assert wait_until(lambda: counts(registry, UNARY) == (1, 1, 0))


class CancellingAsTheRetryStarts(grpc.UnaryUnaryClientInterceptor):
    """Below the breaker: the caller cancels its future while the retry's attempt is starting,
    and that attempt would wait on the server until cancelled."""

    def __init__(self) -> None:
        self.future: Any = None
        self.held = threading.Event()  # the caller holds its future
        self.attempts = 0

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.attempts += 1
        if self.attempts == 1:
            return continuation(details, request)
        assert self.held.wait(10)
        self.future.cancel()
        return continuation(details, b"deadline")


def test_a_future_cancelled_as_its_retry_starts_cancels_that_attempt(connect: Connect) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(CLOSED_CONFIG.replace(retry=policy, idempotent=True))
    below = CancellingAsTheRetryStarts()
    channel = connect(BreakerInterceptor(registry), below)
    below.future = unary(channel).future(b"fail:UNAVAILABLE")
    below.held.set()
    # The first attempt failed; the second, left running, would hold the server until its end.
    assert wait_until(lambda: counts(registry, UNARY) == (0, 1, 1))
    assert below.future.cancelled() and below.attempts == 2


def _read_to_the_end(stream: Any) -> grpc.StatusCode:
    """Reads `stream` to its end; its code (no exception kept, which would hold the stream)."""
    try:
        for _ in stream:
            pass
    except grpc.RpcError as error:
        return cast(grpc.Call, error).code()
    return grpc.StatusCode.OK


def test_a_dropped_stream_already_recorded_is_not_counted_again(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(BreakerInterceptor(registry))
    stream = server_stream(channel)(b"drop")  # ends as a balancer's drop words it
    assert _read_to_the_end(stream) is grpc.StatusCode.UNAVAILABLE
    assert registry.get(SERVER_STREAM).snapshot().rejected == 1  # a local refusal
    del stream  # dropped by the caller: its finalizer finds it recorded
    gc.collect()
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.rejected, snapshot.failed, snapshot.ignored) == (1, 0, 1)


def test_a_dropped_future_frees_its_permit(connect: Connect, server: BytesServer) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    channel = connect(BreakerInterceptor(registry))
    server.expect_entries()
    future = unary(channel).future(b"block")
    assert server.entered.acquire(True, 30)
    del future  # grpc cancels a call dropped in flight; its permit goes with it
    gc.collect()
    assert wait_until(lambda: counts(registry, UNARY) == (0, 0, 1))
    assert unary(channel)(b"hello", timeout=30) == b"hello"  # the slot is free


def test_a_stream_retry_that_cannot_be_made_raises_why_and_frees_its_slot(
    server: BytesServer,
) -> None:
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    config = CLOSED_CONFIG.replace(retry=fast, idempotent=True, max_concurrent_calls=1)
    registry = BreakerRegistry(config)
    error = LookupError("raised making the retry")
    made: list[Any] = []
    with grpc.insecure_channel(server.target) as plain:

        def continuation(details: Any, request: Any) -> Any:  # grpc's, then raising
            if made:
                raise error
            made.append(plain.unary_stream(SERVER_STREAM)(request))
            return made[-1]

        details = CallDetails(SERVER_STREAM, None, None, None, None, None)
        stream = BreakerInterceptor(registry).intercept_unary_stream(
            continuation, details, b"flaky:1:UNAVAILABLE"
        )
        with pytest.raises(LookupError) as raised:
            next(stream)
        assert raised.value is error
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.failed, snapshot.ignored, snapshot.rejected) == (1, 1, 0)
