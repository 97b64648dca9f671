"""meshbreaker.aio.guarded_channel: what is its own (composition, the channel API, bad input).

Its behaviour as a breaker runs through tests/aio/test_aio_interceptor.py and the contract
suite, both parametrised over the interceptors and the guarded channel.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker._adapter.guard import Guard
from meshbreaker.aio import GuardedChannel, breaker_interceptors, guarded_channel
from meshbreaker.aio.guarded import GuardedUnaryUnary
from meshbreaker.breaker import Permit
from meshbreaker.config import State
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.retry import RetryPolicy
from meshbreaker.testing import FakeClock
from tests.contract.drivers import aio_below
from tests.grpc.bytes_server import (
    BIDI,
    CLIENT_STREAM,
    PATIENT,
    SERVER_STREAM,
    UNARY,
    BytesServer,
)


class Tracing(grpc.aio.UnaryUnaryClientInterceptor):
    """A pass-through interceptor that notes each call it sees."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append(details.method.decode())
        return await continuation(details, request)


async def test_the_channel_s_own_interceptors_run_inside_the_breaker(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    tracing = Tracing()
    inner = grpc.aio.insecure_channel(server.target, interceptors=[tracing])
    async with guarded_channel(inner, registry) as channel:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        assert await unary(b"ok") == b"ok"
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await unary(b"fail:UNAVAILABLE")
        assert registry.get(UNARY).state is State.OPEN
        with pytest.raises(CallNotPermittedError):
            await unary(b"ok")
    assert tracing.seen == [UNARY] * 3  # the rejected call never reached the interceptor


async def test_a_unary_call_the_breaker_admits_freely_makes_no_permit(
    server: BytesServer, registry: BreakerRegistry, permits_made: list[Permit]
) -> None:
    """The hot path's speed trick (admit_free): a Permit only where one is owed something back."""
    async with guarded_channel(grpc.aio.insecure_channel(server.target), registry) as channel:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        for _ in range(3):
            assert await unary(b"a") == b"a"
        assert permits_made == [], "a success admitted freely made a Permit"
        with pytest.raises(grpc.aio.AioRpcError):
            await unary(b"fail:INTERNAL")
        assert len(permits_made) == 1  # made after the call, to report any status but OK by
        registry.get(UNARY).transition_to_half_open()
        assert await unary(b"c") == b"c"  # a probe holds a place: a Permit gives it back
        assert len(permits_made) == 2
        stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            SERVER_STREAM
        )
        assert [message async for message in stream(b"n:1")] == [b"m0"]
        assert len(permits_made) == 3  # a response stream is tracked on a Permit
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.successful, snapshot.failed, snapshot.ignored) == (4, 1, 0)


async def test_the_channel_api_reaches_the_wrapped_channel(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    inner = grpc.aio.insecure_channel(server.target)
    channel = guarded_channel(inner, registry)
    assert isinstance(channel, GuardedChannel) and channel.registry is registry
    await channel.channel_ready()
    assert channel.get_state() is grpc.ChannelConnectivity.READY
    stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(SERVER_STREAM)
    assert [message async for message in stream(b"n:2")] == [b"m0", b"m1"]
    await channel.close()
    assert inner.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def test_what_is_not_an_aio_channel_is_refused(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    sync = grpc.insecure_channel(server.target)
    with pytest.raises(TypeError, match=r"channel must be a grpc\.aio\.Channel, got "):
        guarded_channel(sync, registry)  # type: ignore[arg-type]
    sync.close()


def _on(path: str, target: str, registry: BreakerRegistry, below: Any = ()) -> grpc.aio.Channel:
    """A channel to `target` with the breakers above the interceptors `below`, on `path`."""
    if path == "guarded_channel":
        inner = grpc.aio.insecure_channel(target, interceptors=list(below) or None)
        return guarded_channel(inner, registry)
    interceptors = [*breaker_interceptors(registry), *below]
    return grpc.aio.insecure_channel(target, interceptors=interceptors)


PATHS = pytest.mark.parametrize("path", ["interceptors", "guarded_channel"])


@PATHS
async def test_a_closed_channel_fails_where_the_call_is_used_on_both_paths(
    server: BytesServer, registry: BreakerRegistry, path: str
) -> None:
    channel = _on(path, server.target, registry)
    await channel.close()
    unary: Any = channel.unary_unary(UNARY)
    call = unary(b"x")  # made: grpc.aio raises where the call is used, not here
    with pytest.raises(grpc.aio.UsageError):
        await call
    with pytest.raises(grpc.aio.UsageError):
        await call.code()
    stream: Any = channel.unary_stream(SERVER_STREAM)
    with pytest.raises(grpc.aio.UsageError):
        await stream(b"n:1").read()
    for method in (UNARY, SERVER_STREAM):
        snapshot = registry.get(method).snapshot()
        assert (snapshot.ignored, snapshot.failed) == (1, 0)


class RefusingFirst(grpc.aio.UnaryStreamClientInterceptor):
    """Below the breaker: refuses the first `times` calls with UNAVAILABLE, as a proxy may."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            metadata = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, metadata, metadata, "refused below"
            )
        return await continuation(details, request)


@PATHS
@pytest.mark.parametrize("times", [1, 5])
async def test_a_stream_refused_below_is_retried_alike_on_both_paths(
    server: BytesServer, clock: FakeClock, path: str, times: int
) -> None:
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(PATIENT.replace(retry=fast, idempotent=True), clock=clock)
    below = RefusingFirst(times)
    async with _on(path, server.target, registry, [below]) as channel:
        stream: Any = channel.unary_stream(SERVER_STREAM)
        call = stream(b"n:2")
        if times < 3:
            assert [message async for message in call] == [b"m0", b"m1"]
            assert await call.code() is grpc.StatusCode.OK
        else:  # every attempt refused: the last refusal is what the caller gets
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.details() == "refused below"
            assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert below.calls == min(times + 1, 3)
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.failed, snapshot.successful) == (min(times, 3), 1 if times < 3 else 0)


def _refusing(after: bool) -> list[grpc.aio.ClientInterceptor]:
    """Below the breaker: refuses every call with UNAVAILABLE, before or after making it."""

    async def refuse(continuation: Any, details: Any, request: Any) -> Any:
        if after:
            await continuation(details, request)
        metadata = grpc.aio.Metadata()
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, metadata, metadata, "refused")

    return aio_below(refuse)


@PATHS
@pytest.mark.parametrize("after", [False, True], ids=["before-the-call", "after-the-call"])
@pytest.mark.parametrize("method", [UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI])
async def test_a_call_refused_below_ends_with_its_refusal(
    server: BytesServer, registry: BreakerRegistry, path: str, after: bool, method: str
) -> None:
    """Issue 21's suspected hang: code() after a refusal below must complete on every kind."""
    async with _on(path, server.target, registry, _refusing(after)) as channel:
        if method in (UNARY, SERVER_STREAM):
            multi: Any = getattr(channel, "unary_unary" if method == UNARY else "unary_stream")
            call = multi(method)(b"n:1" if method == SERVER_STREAM else b"hello")
        else:
            multi = getattr(channel, "stream_unary" if method == CLIENT_STREAM else "stream_stream")
            call = multi(method)(iter([b"a"]))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            if method in (UNARY, CLIENT_STREAM):
                await call
            else:
                await call.read()
        assert raised.value.details() == "refused"
        # A generous bound, not a timing check: without it a hang would stall the suite.
        assert await asyncio.wait_for(call.code(), 30) is grpc.StatusCode.UNAVAILABLE
        assert await asyncio.wait_for(call.details(), 30) == "refused"
    snapshot = registry.get(method).snapshot()
    assert (snapshot.failed, snapshot.successful, snapshot.ignored) == (1, 0, 0)


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt or SystemExit raised while the call is being made."""


@pytest.mark.parametrize("slots", [1, None], ids=["one-slot", "admitted-freely"])
async def test_a_base_exception_making_the_call_reaches_the_caller_and_frees_the_slot(
    slots: int | None,
) -> None:
    registry = BreakerRegistry(PATIENT.replace(max_concurrent_calls=slots))

    def interrupted(request: Any, **options: Any) -> Any:  # the channel's multi-callable
        raise Interrupted()

    unary = GuardedUnaryUnary(interrupted, UNARY, Guard(registry))
    for _ in range(2):  # a kept slot would make the second a RESOURCE_EXHAUSTED rejection
        with pytest.raises(Interrupted):
            unary(b"hello")
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.ignored, snapshot.rejected) == (2, 0)


async def _wait(predicate: Any, timeout: float = 30.0) -> None:
    """Polls `predicate` while letting the event loop run."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_a_retried_call_answers_the_call_api_like_grpcs_own(
    server: BytesServer, clock: FakeClock
) -> None:
    # A method with a retry policy: the guarded channel hands over a DeferredCall, whose
    # attempts run in a task; its call API speaks for the attempt that answered.
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(PATIENT.replace(retry=fast, idempotent=True), clock=clock)
    async with _on("guarded_channel", server.target, registry) as channel:
        unary: Any = channel.unary_unary(UNARY)
        answered = unary(b"hello", timeout=60)
        seen: list[Any] = []
        answered.add_done_callback(seen.append)
        assert await answered == b"hello"
        await _wait(lambda: seen == [answered])  # called with the call, once it is over
        assert answered.done() and answered.cancelled() is False
        remaining = answered.time_remaining()  # the answering attempt's
        assert remaining is not None and 0 < remaining <= 60
        assert answered.cancel() is False  # over: grpc's answer
        server.expect_entries()
        blocked = unary(b"block", timeout=60)
        assert await asyncio.to_thread(server.entered.acquire, True, 10)
        assert not blocked.done() and blocked.cancelled() is False
        blocked.add_done_callback(seen.append)
        assert blocked.time_remaining() is None  # not known until an attempt answers
        assert blocked.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert blocked.done() and blocked.cancelled() is True
        await _wait(lambda: seen == [answered, blocked])
        assert blocked.cancel() is False  # over
    async with _on("guarded_channel", server.target, registry, _refusing(False)) as channel:
        refusing: Any = channel.unary_unary(UNARY)
        refused = refusing(b"hello")
        with pytest.raises(grpc.aio.AioRpcError):
            await refused
        assert refused.done() and refused.cancelled() is False and refused.cancel() is False


class _EndedBelow:
    """A call whose status question raises `error`, as a lower layer's call object may."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self._error = error

    async def code(self) -> grpc.StatusCode:
        raise self._error


async def test_a_retried_call_whose_attempt_raised_ends_with_that_error() -> None:
    # The retry loop's AioRpcError is the call's error: a CANCELLED one reads as cancelled.
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(PATIENT.replace(retry=fast, idempotent=True))
    initial, metadata = grpc.aio.Metadata(("x-below", "ended")), grpc.aio.Metadata()
    error = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, initial, metadata, "gone")

    def inner(request: Any, **options: Any) -> Any:  # the channel's multi-callable
        return _EndedBelow(error)

    call: Any = GuardedUnaryUnary(inner, UNARY, Guard(registry))(b"hello")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value is error
    assert call.done() and call.cancelled() is True and call.cancel() is False
    assert await call.code() is grpc.StatusCode.CANCELLED and await call.details() == "gone"
    assert await call.initial_metadata() == initial
    assert registry.get(UNARY).snapshot().ignored == 1  # a cancelled attempt is ignored


class _AnsweredBelow:
    """A lower layer's call that answered OK; counts the waits for its connection."""

    def __init__(self) -> None:
        self.waits = 0

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def wait_for_connection(self) -> None:
        self.waits += 1


async def test_a_retried_call_waits_for_the_connection_of_the_attempt_that_answered() -> None:
    fast = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    registry = BreakerRegistry(PATIENT.replace(retry=fast, idempotent=True))
    below = _AnsweredBelow()

    def inner(request: Any, **options: Any) -> Any:  # the channel's multi-callable
        return below

    call: Any = GuardedUnaryUnary(inner, UNARY, Guard(registry))(b"hello")
    await call.wait_for_connection()
    assert below.waits == 1


@pytest.mark.parametrize("method", [UNARY, SERVER_STREAM])
async def test_a_guarded_call_calls_its_done_callbacks_with_itself_once_over(
    server: BytesServer, registry: BreakerRegistry, method: str
) -> None:
    async with guarded_channel(grpc.aio.insecure_channel(server.target), registry) as channel:
        seen: list[Any] = []
        unary: Any = channel.unary_unary(UNARY)
        stream: Any = channel.unary_stream(SERVER_STREAM)
        if method == UNARY:
            call: Any = unary(b"hello")
            call.add_done_callback(seen.append)
            assert await call == b"hello"
        else:
            call = stream(b"n:1")
            call.add_done_callback(seen.append)
            assert [message async for message in call] == [b"m0"]
        await _wait(lambda: seen == [call])


async def test_the_channel_state_is_read_without_connecting_and_its_changes_awaited(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    async with guarded_channel(grpc.aio.insecure_channel(server.target), registry) as channel:
        idle = grpc.ChannelConnectivity.IDLE
        changed = asyncio.ensure_future(channel.wait_for_state_change(idle))
        for _ in range(3):
            assert channel.get_state() is idle
            await asyncio.sleep(0.01)  # a connection asked for would be under way by now
        assert not changed.done()  # nothing has changed
        channel.get_state(try_to_connect=True)
        await asyncio.wait_for(changed, 30)
        assert channel.get_state() is not idle
