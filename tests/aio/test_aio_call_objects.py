"""The grpc.aio call objects the interceptors hand back answer the call API like grpc's own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc.aio._interceptor import UnaryUnaryCallResponse

from meshbreaker._adapter.guard import Guard
from meshbreaker.aio import breaker_interceptors, guarded_channel
from meshbreaker.aio._calls import (
    _CORE_CODES,
    GRPC_CALLS,
    CallTracker,
    FailedCall,
    FallbackCall,
    TrackedStream,
    TrackedUnaryCall,
    _grpc_calls,
    rejection,
)
from meshbreaker.config import State
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.retry import RetryPolicy
from tests.contract.drivers import RaisingBelow, aio_below, aio_raising
from tests.grpc.bytes_server import (
    BIDI,
    CLIENT_STREAM,
    CONFIG,
    SERVER_STREAM,
    UNARY,
    BytesServer,
)

Connect = Callable[..., grpc.aio.Channel]
CLOSED_CONFIG = CONFIG.replace(consecutive_failures=0)  # never trips: every call reaches the server


def unary(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(UNARY)


def server_stream(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(SERVER_STREAM)


def client_stream(channel: grpc.aio.Channel) -> grpc.aio.StreamUnaryMultiCallable[bytes, bytes]:
    return channel.stream_unary(CLIENT_STREAM)


def bidi(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable[bytes, bytes]:
    return channel.stream_stream(BIDI)


@pytest.fixture
async def connect(server: BytesServer) -> AsyncIterator[Connect]:
    """connect(**interceptor options) -> an aio channel to the test server, guarded by them."""
    channels: list[grpc.aio.Channel] = []

    def make(registry: BreakerRegistry, **options: Any) -> grpc.aio.Channel:
        interceptors = breaker_interceptors(registry, **options)
        channel = grpc.aio.insecure_channel(server.target, interceptors=interceptors)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `predicate` while letting the event loop run."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def entered(server: BytesServer) -> None:
    """Waits until one more call has entered the server."""
    assert await asyncio.to_thread(server.entered.acquire, True, 10)


async def trip(channel: grpc.aio.Channel, registry: BreakerRegistry, method: str) -> None:
    """Opens the breaker of `method` with two UNAVAILABLE answers."""
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            if method == SERVER_STREAM:
                await server_stream(channel)(b"fail-after:0:UNAVAILABLE").read()
            else:
                await unary(channel)(b"fail:UNAVAILABLE")
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert registry.get(method).state is State.OPEN


def counts(registry: BreakerRegistry, method: str) -> tuple[int, int, int]:
    """(successful, failed, ignored) of `method`'s breaker."""
    snapshot = registry.get(method).snapshot()
    return snapshot.successful, snapshot.failed, snapshot.ignored


# ----- refused calls ------------------------------------------------------------------------


async def test_a_rejected_call_has_no_transport_error_to_tell(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry)
    await trip(channel, registry, UNARY)
    call = unary(channel)(b"hello")
    assert await call.debug_error_string() == ""  # type: ignore[attr-defined]
    assert tuple(await call.initial_metadata()) == ()
    assert call.done() and call.cancelled() is False and call.cancel() is False


async def test_a_fallback_answer_is_a_finished_unary_call(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry, fallbacks={UNARY: lambda request, error: b"cached"})
    await trip(channel, registry, UNARY)
    call = unary(channel)(b"hello")
    assert await call == b"cached"
    assert await call.details() == "meshbreaker: fallback used (rejected)"
    assert tuple(await call.initial_metadata()) == ()  # no server was called
    assert call.done() and not call.cancelled()


async def test_the_call_behind_a_fallback_answer_is_finished_in_every_role() -> None:
    # grpc.aio wraps what an interceptor returns; the object itself serves every call kind.
    error = CallNotPermittedError(UNARY, State.OPEN, 30.0)
    call = rejection(error, lambda request, error: b"cached", b"hello")
    assert isinstance(call, FallbackCall)
    assert await call == b"cached"
    assert await call.read() is grpc.aio.EOF  # no stream to read: at its end at once
    assert await call.debug_error_string() == ""  # no transport error to tell
    initial = await call.initial_metadata()
    assert isinstance(initial, grpc.aio.Metadata) and tuple(initial) == ()  # no server called
    assert [message async for message in call] == []
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(b"more")  # over: refused like grpc refuses a write to a finished call
    await call.done_writing()
    seen: list[Any] = []
    call.add_done_callback(seen.append)
    assert seen == [call]


# ----- fallback on failure ------------------------------------------------------------------


async def test_the_fallback_on_failure_tells_its_own_details_and_markers(
    connect: Connect,
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    channel = connect(registry, fallbacks={UNARY: lambda r, e: b"cached"}, fallback_on_failure=True)
    call = unary(channel)(b"fail:INTERNAL")
    assert await call == b"cached"
    assert await call.code() is grpc.StatusCode.OK
    assert await call.details() == "meshbreaker: fallback used (failure)"
    trailing = tuple(await call.trailing_metadata())
    assert ("x-meshbreaker-fallback", "failure") in trailing
    assert ("x-test-trailer", "server") in trailing  # what the server sent is kept
    assert counts(registry, UNARY) == (0, 1, 0)
    answered = unary(channel)(b"fine")
    assert await answered == b"fine"
    assert (await answered.code(), await answered.details()) == (grpc.StatusCode.OK, "")
    assert ("x-test-trailer", "server") in tuple(await answered.trailing_metadata())


async def test_cancelling_a_fallback_on_failure_call_cancels_the_rpc(
    connect: Connect, server: BytesServer
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    channel = connect(registry, fallbacks={UNARY: lambda r, e: b"cached"}, fallback_on_failure=True)
    call = unary(channel)(b"block")
    await entered(server)
    assert not call.done()
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert call.cancelled() and call.done()
    await wait_for(lambda: counts(registry, UNARY) == (0, 0, 1))  # a cancelled call is ignored


# ----- streams ------------------------------------------------------------------------------


async def test_a_client_stream_written_by_hand_is_guarded(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry)
    call = client_stream(channel)()
    assert not call.done()
    await call.write(b"a")
    await call.write(b"b")
    await call.done_writing()
    assert await call == b"count:2"
    assert call.done()
    await wait_for(lambda: counts(registry, CLIENT_STREAM) == (1, 0, 0))
    failing = client_stream(channel)()
    await failing.write(b"fail:DATA_LOSS")
    await failing.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await failing
    assert raised.value.code() is grpc.StatusCode.DATA_LOSS
    await wait_for(lambda: counts(registry, CLIENT_STREAM) == (1, 1, 0))


async def test_a_bidi_stream_written_by_hand_is_guarded(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry)
    call = bidi(channel)()
    await call.write(b"x")
    assert await call.read() == b"x"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert call.done() and await call.code() is grpc.StatusCode.OK
    assert counts(registry, BIDI) == (1, 0, 0)  # the end read counted it before returning


async def test_reading_a_response_stream_to_its_end_records_one_outcome(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry)
    stream = server_stream(channel)(b"n:2")
    assert [await stream.read() for _ in range(3)] == [b"m0", b"m1", grpc.aio.EOF]
    assert counts(registry, SERVER_STREAM) == (1, 0, 0)
    failing = server_stream(channel)(b"fail-after:1:INTERNAL")
    assert await failing.read() == b"m0"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await failing.read()
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert counts(registry, SERVER_STREAM) == (1, 1, 0)  # counted before the caller saw it


async def test_a_stream_that_ends_unread_is_still_recorded(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry)
    held = [
        server_stream(channel)(b"n:0"),
        server_stream(channel)(b"fail-after:0:UNAVAILABLE"),
    ]
    await wait_for(lambda: counts(registry, SERVER_STREAM) == (1, 1, 0))
    assert all(stream.done() for stream in held)


async def test_cancelling_a_stream_frees_its_permit_at_once(
    connect: Connect, registry: BreakerRegistry
) -> None:
    channel = connect(registry)
    stream = server_stream(channel)(b"forever")
    assert await stream.read() == b"m0"
    assert stream.cancel()
    assert counts(registry, SERVER_STREAM) == (0, 0, 1)  # not when the done-callback comes


# ----- outcomes reach the breaker before the caller ---------------------------------------


@pytest.fixture
async def plain(server: BytesServer) -> AsyncIterator[grpc.aio.Channel]:
    """An aio channel to the test server without interceptors."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


def unwatched(registry: BreakerRegistry, method: str) -> CallTracker:
    """A tracker holding a permit of `method`'s breaker, not watching any done-callback.

    grpc runs a call's done-callbacks when it pleases (here mostly before the awaiting task
    resumes); without them, only the call object itself can have counted the outcome.
    """
    breaker = registry.get(method)
    return CallTracker(Guard(registry), breaker, breaker.acquire())


async def test_a_unary_outcome_is_counted_before_the_await_returns(
    plain: grpc.aio.Channel,
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    failing = TrackedUnaryCall(unary(plain)(b"fail:INTERNAL"), unwatched(registry, UNARY))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await failing
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert counts(registry, UNARY) == (0, 1, 0)
    answered = TrackedUnaryCall(unary(plain)(b"hello"), unwatched(registry, UNARY))
    assert await answered == b"hello"
    assert counts(registry, UNARY) == (1, 1, 0)


async def test_a_call_admitted_freely_is_counted_before_its_caller_sees_the_outcome(
    plain: grpc.aio.Channel,
) -> None:
    # The guarded channel hands grpc's own call over unproxied; free_done, on its cython call,
    # counts the outcome before the awaiting task resumes (TrackedUnaryCall's promise).
    registry = BreakerRegistry(CLOSED_CONFIG)
    method = unary(guarded_channel(plain, registry))
    answered = method(b"hello")
    assert type(answered) in GRPC_CALLS
    assert await answered == b"hello"
    assert counts(registry, UNARY) == (1, 0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(b"fail:INTERNAL")
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert counts(registry, UNARY) == (1, 1, 0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(b"deadline", timeout=0.05)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert counts(registry, UNARY) == (1, 2, 0)
    cancelled = method(b"deadline")
    assert cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert counts(registry, UNARY) == (1, 2, 1)  # the caller's own cancel: ignored


async def test_a_stream_outcome_is_counted_before_the_read_returns(
    plain: grpc.aio.Channel,
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)

    def stream(request: bytes) -> TrackedStream:
        call = server_stream(plain)(request)
        return TrackedStream(call, unwatched(registry, SERVER_STREAM))

    # Up to the first message the stream itself counts the end; after it, the done-callback
    # does (no extra frame per message), so only ends before a first message are checked here.
    read = stream(b"n:0")
    assert await read.read() is grpc.aio.EOF
    assert counts(registry, SERVER_STREAM) == (1, 0, 0)
    failing = stream(b"fail-after:0:INTERNAL")
    with pytest.raises(grpc.aio.AioRpcError):
        await failing.read()
    assert counts(registry, SERVER_STREAM) == (1, 1, 0)
    iterated = stream(b"fail-after:0:INTERNAL")
    with pytest.raises(grpc.aio.AioRpcError):
        [message async for message in iterated]
    assert counts(registry, SERVER_STREAM) == (1, 2, 0)
    empty = stream(b"n:0")
    assert [message async for message in empty] == []
    assert counts(registry, SERVER_STREAM) == (2, 2, 0)


async def test_the_proxies_pass_writes_through_to_the_call(plain: grpc.aio.Channel) -> None:
    # grpc.aio's intercepted calls write through a queue of their own; a caller holding the
    # call object itself writes through the proxy.
    registry = BreakerRegistry(CLOSED_CONFIG)
    call = client_stream(plain)()
    tracked = TrackedUnaryCall(call, unwatched(registry, CLIENT_STREAM))
    await tracked.write(b"a")
    await tracked.write(b"b")
    await tracked.done_writing()
    assert await tracked == b"count:2"
    assert tracked.done() and await tracked.code() is grpc.StatusCode.OK
    assert counts(registry, CLIENT_STREAM) == (1, 0, 0)


async def test_a_raising_continuation_gives_the_permit_back(
    server: BytesServer,
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))

    class Broken(grpc.aio.UnaryStreamClientInterceptor):
        """Below the breaker: the continuation the breaker calls raises."""

        async def intercept_unary_stream(
            self, continuation: Any, client_call_details: Any, request: Any
        ) -> Any:
            raise RuntimeError("broken below the breaker")

    interceptors = [*breaker_interceptors(registry), Broken()]
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as channel:
        for _ in range(2):  # a kept slot would make the second a RESOURCE_EXHAUSTED rejection
            with pytest.raises(RuntimeError, match="broken below"):
                await server_stream(channel)(b"n:1").read()
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.ignored, snapshot.rejected) == (2, 0)


class _Refuser:
    """Below the breaker: refuses every call with an AioRpcError, as a proxy interceptor may."""

    def __init__(self, details: str = "refused") -> None:
        self.refused = 0
        self._details = details

    def _refuse(self) -> grpc.aio.AioRpcError:
        self.refused += 1
        metadata = grpc.aio.Metadata()
        return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, metadata, metadata, self._details)


class Refusing(_Refuser, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        raise self._refuse()


class RefusingStreams(_Refuser, grpc.aio.UnaryStreamClientInterceptor):
    """A channel files each interceptor under one call kind: one class per kind."""

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        raise self._refuse()


@pytest.mark.parametrize("retried", [False, True], ids=["once", "retried"])
async def test_an_rpc_error_raised_below_the_breaker_is_counted_and_reaches_the_caller(
    server: BytesServer, retried: bool
) -> None:
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    config = CLOSED_CONFIG.replace(retry=fast, idempotent=True) if retried else CLOSED_CONFIG
    registry = BreakerRegistry(config)
    refusing, refusing_streams = Refusing(), RefusingStreams()
    interceptors = [*breaker_interceptors(registry), refusing, refusing_streams]
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(channel)(b"hello")
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "refused",
        )
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await server_stream(channel)(b"n:1").read()
        assert streamed.value.code() is grpc.StatusCode.UNAVAILABLE
    attempts = 3 if retried else 1
    assert counts(registry, UNARY) == (0, attempts, 0)
    assert counts(registry, SERVER_STREAM) == (0, attempts, 0)  # counted, permits given back
    assert (refusing.refused, refusing_streams.refused) == (attempts, attempts)  # none unguarded


async def test_a_balancers_drop_below_counts_as_a_refusal_and_frees_the_slot(
    server: BytesServer,
) -> None:
    # One slot: a permit kept by the first drop would refuse the second with RESOURCE_EXHAUSTED.
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    dropping = Refusing("circuit breaker drop")  # how grpc's xds_cluster_impl words it
    interceptors = [*breaker_interceptors(registry), dropping]
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as channel:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await unary(channel)(b"hello")
            assert raised.value.details() == "circuit breaker drop"
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.failed, snapshot.ignored, snapshot.rejected) == (0, 2, 2)
    assert dropping.refused == 2


class _Untrackable(UnaryUnaryCallResponse):
    """An answer from below in a call object that takes no done-callback (grpc's own raises)."""

    def done(self) -> bool:
        return False


class AnsweringUntrackably(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return _Untrackable(b"answered below")


async def test_a_call_meshbreaker_cannot_track_goes_through_and_frees_its_slot(
    server: BytesServer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    interceptors = [*breaker_interceptors(registry), AnsweringUntrackably()]
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as channel:
        for _ in range(2):  # a kept slot would make the second a RESOURCE_EXHAUSTED rejection
            assert await unary(channel)(b"hello") == b"answered below"
    assert counts(registry, UNARY) == (0, 0, 2)
    assert f"meshbreaker: tracking {UNARY} failed" in caplog.text


async def test_a_unary_call_raising_below_frees_its_permit_before_the_await_returns() -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    error = LookupError("raised below the breaker")
    tracked = TrackedUnaryCall(FailedCall(error), unwatched(registry, UNARY))
    with pytest.raises(LookupError) as raised:
        await tracked
    assert raised.value is error
    assert counts(registry, UNARY) == (0, 0, 1)  # ignored: no status to count


async def test_a_status_not_readable_at_the_done_callback_is_counted_once_it_comes(
    plain: grpc.aio.Channel,
) -> None:
    # grpc runs done-callbacks once the status is in; should one come before it can be read
    # without waiting, the tracker reads it later instead of dropping the outcome.
    registry = BreakerRegistry(CLOSED_CONFIG)
    tracker = unwatched(registry, UNARY)
    call = unary(plain)(b"fail:INTERNAL")
    tracker.on_done(call)  # still in flight: its code() would wait
    assert counts(registry, UNARY) == (0, 0, 0)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    await wait_for(lambda: counts(registry, UNARY) == (0, 1, 0))


# ----- grpc's own calls: their status read where grpc keeps it (CallTracker) ---------------------


def own_calls(plain: grpc.aio.Channel, request: bytes) -> list[Any]:
    """One call of each kind on a channel without interceptors: grpc's own call objects."""
    return [
        unary(plain)(request),
        server_stream(plain)(request),
        client_stream(plain)(iter([request])),
        bidi(plain)(iter([request])),
    ]


async def ended(call: Any) -> None:
    """Reads `call` to its end, whatever its kind and status."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        if isinstance(call, (grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall)):
            async for _ in call:
                pass
        else:
            await call


async def test_grpcs_own_call_classes_are_the_ones_tracked_by_their_status(
    plain: grpc.aio.Channel,
) -> None:
    # Should grpc rename them, GRPC_CALLS would be empty and every status read through code().
    calls = own_calls(plain, b"hello")
    assert {type(call) for call in calls} == GRPC_CALLS
    for call in calls:
        await ended(call)


@pytest.mark.parametrize("request_", [b"hello", b"fail:INTERNAL", b"drop"])
async def test_the_status_a_done_callback_reads_is_the_calls_code_and_details(
    plain: grpc.aio.Channel, request_: bytes
) -> None:
    # CallTracker.on_done reads a grpc call's status from its cython call (no coroutine): set
    # before grpc runs the done-callbacks, and what code() and details() say once it has ended.
    calls = own_calls(plain, request_)
    read: list[tuple[grpc.StatusCode, str]] = []

    def on_done(call: Any) -> None:
        status = call._cython_call._status
        read.append((_CORE_CODES[status.code()], status.details()))

    for call in calls:
        call.add_done_callback(on_done)
    for call in calls:
        await ended(call)
    await wait_for(lambda: len(read) == len(calls))
    assert sorted(read) == sorted([(await call.code(), await call.details()) for call in calls])


async def test_grpc_calls_a_done_callback_at_once_on_a_call_already_done(
    plain: grpc.aio.Channel,
) -> None:
    # CallTracker.watch adds its callback to a grpc call without asking done() first.
    for call in own_calls(plain, b"hello"):
        await ended(call)
        called: list[Any] = []
        call.add_done_callback(called.append)
        assert called == [call]


async def test_a_tracker_counts_grpcs_own_calls_by_their_status(plain: grpc.aio.Channel) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    methods = (UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI)  # the kinds own_calls makes, in order
    for request in (b"hello", b"fail:INTERNAL", b"drop"):
        for method, call in zip(methods, own_calls(plain, request), strict=True):
            unwatched(registry, method).watch(call)
            await ended(call)
    # One success, one failure, and the balancer's drop ignored and counted as a local refusal.
    await wait_for(lambda: all(counts(registry, method) == (1, 1, 1) for method in methods))
    assert [registry.get(method).snapshot().rejected for method in methods] == [1, 1, 1, 1]


async def test_waiting_for_the_connection_of_a_failed_call_raises_its_error(
    connect: Connect,
) -> None:
    channel = connect(BreakerRegistry(CLOSED_CONFIG))
    for call in (
        unary(channel)(b"fail:INTERNAL"),
        server_stream(channel)(b"fail-after:0:INTERNAL"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.wait_for_connection()
        assert raised.value.code() is grpc.StatusCode.INTERNAL


async def test_reading_a_retried_response_stream_returns_the_retry_s_messages(
    connect: Connect,
) -> None:
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(CLOSED_CONFIG.replace(retry=fast, idempotent=True))
    channel = connect(registry)
    stream = server_stream(channel)(b"flaky:1:UNAVAILABLE")  # fails once, then answers
    assert await stream.read() == b"flaky:1:UNAVAILABLE"
    assert await stream.read() is grpc.aio.EOF
    assert counts(registry, SERVER_STREAM) == (1, 1, 0)
    failing = server_stream(channel)(b"fail-after:0:UNAVAILABLE")  # fails every attempt
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await failing.read()
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE  # the last failure, retries spent
    assert counts(registry, SERVER_STREAM) == (1, 4, 0)


async def test_a_tracked_call_in_flight_tells_its_time_remaining(
    plain: grpc.aio.Channel, server: BytesServer
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    server.expect_entries()
    tracked = TrackedUnaryCall(unary(plain)(b"block", timeout=60), unwatched(registry, UNARY))
    await entered(server)
    remaining = tracked.time_remaining()
    assert remaining is not None and 0 < remaining <= 60
    assert not tracked.done() and tracked.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await tracked
    assert tracked.cancelled() and tracked.done()


async def _through(continuation: Any, details: Any, request: Any) -> Any:
    return await continuation(details, request)


async def test_cancelling_a_stream_over_an_interceptor_frees_its_permit_at_once(
    server: BytesServer,
) -> None:
    # Below another interceptor grpc runs the done-callbacks of a cancelled call later: the
    # permit must not wait for them.
    registry = BreakerRegistry(CLOSED_CONFIG)
    interceptors = [*breaker_interceptors(registry), *aio_below(_through)]
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as channel:
        stream = server_stream(channel)(b"forever")
        assert await stream.read() == b"m0"
        assert stream.cancel()
        assert counts(registry, SERVER_STREAM) == (0, 0, 1)


async def test_a_call_raising_below_frees_its_permit_unawaited(server: BytesServer) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    below = RaisingBelow(LookupError("raised below the breaker"))
    interceptors = [*breaker_interceptors(registry), *aio_raising(below)]
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as channel:
        call = unary(channel)(b"hello")  # never awaited: only its done-callback can count it
        await wait_for(lambda: counts(registry, UNARY) == (0, 0, 1))
        assert below.calls == 1 and call.done()


class _LateCallbacks:
    """A lower layer's call that runs its done-callbacks on a later turn of the loop."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def done(self) -> bool:
        return bool(self._call.done())

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_done_callback(self, callback: Any) -> None:
        loop = asyncio.get_running_loop()
        self._call.add_done_callback(lambda _call: loop.call_soon(callback, self))

    def __aiter__(self) -> Any:
        return self._call.__aiter__()


async def test_cancelling_a_stream_frees_its_permit_before_any_done_callback(
    plain: grpc.aio.Channel,
) -> None:
    registry = BreakerRegistry(CLOSED_CONFIG)
    breaker = registry.get(SERVER_STREAM)
    call = _LateCallbacks(server_stream(plain)(b"forever"))
    tracker = CallTracker(Guard(registry), breaker, breaker.acquire())
    tracker.watch(call)
    stream = TrackedStream(call, tracker)
    assert await stream.read() == b"m0"
    assert stream.cancel()
    assert counts(registry, SERVER_STREAM) == (0, 0, 1)  # not on the callback's later turn


async def test_a_layered_guard_frees_its_permit_when_the_call_below_cannot_tell_its_status(
    server: BytesServer,
) -> None:
    # A guarded channel over another: the inner one's call raises where it is used (here its
    # channel is closed), and the outer breaker's done-callback finds no status to count.
    outer = BreakerRegistry(CLOSED_CONFIG.replace(max_concurrent_calls=1))
    closed = grpc.aio.insecure_channel(server.target)
    await closed.close()
    channel = guarded_channel(guarded_channel(closed, BreakerRegistry(CLOSED_CONFIG)), outer)

    def ended() -> int:
        snapshot = outer.get(UNARY).snapshot()
        return snapshot.ignored + snapshot.rejected

    unary(channel)(b"hello")  # never awaited
    await wait_for(lambda: ended() == 1)
    unary(channel)(b"hello")  # a kept slot would refuse it
    await wait_for(lambda: ended() == 2)
    snapshot = outer.get(UNARY).snapshot()
    assert (snapshot.ignored, snapshot.rejected, snapshot.failed) == (2, 0, 0)


def test_should_grpc_rename_its_call_classes_no_status_is_read_from_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Then GRPC_CALLS is empty and the trackers read every status through code().
    from grpc.aio import _call

    monkeypatch.delattr(_call, "UnaryUnaryCall")
    assert _grpc_calls() == (frozenset(), {})


def test_should_grpc_rename_its_cython_call_no_call_is_handed_over_unproxied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # free_done hooks the cython call's done-callbacks: without them, every call is proxied.
    from grpc._cython import cygrpc

    monkeypatch.setattr(cygrpc, "_AioCall", object)
    assert _grpc_calls() == (frozenset(), {})
