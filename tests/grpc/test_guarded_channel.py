"""guarded_channel: what is its own (composition, the channel API, bad input).

Its behaviour as a breaker runs through tests/grpc/test_sync_interceptor.py and the contract
suite, both parametrised over intercept_channel and guarded_channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from meshbreaker.breaker import Permit
from meshbreaker.config import State
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.grpc import BreakerInterceptor, GuardedChannel, guarded_channel
from meshbreaker.registry import BreakerRegistry
from tests.contract.drivers import RaisingBelow
from tests.grpc.bytes_server import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, BytesServer
from tests.server_support import wait_until


class Tracing(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """A pass-through interceptor that notes each call it sees and tags it with metadata."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _tag(self, details: Any) -> Any:
        self.seen.append(details.method)
        return details._replace(metadata=(*(details.metadata or ()), ("x-trace", "1")))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._tag(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._tag(details), request)


@pytest.fixture
def channel(server: BytesServer) -> Iterator[grpc.Channel]:
    plain = grpc.insecure_channel(server.target)
    yield plain
    plain.close()


def trip(call: Callable[[], object], registry: BreakerRegistry, method: str) -> None:
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            call()
    assert registry.get(method).state is State.OPEN


def test_an_intercepted_channel_runs_inside_the_breaker(
    channel: grpc.Channel, registry: BreakerRegistry, server: BytesServer
) -> None:
    tracing = Tracing()
    guarded = guarded_channel(grpc.intercept_channel(channel, tracing), registry)
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = guarded.unary_unary(UNARY)
    assert unary(b"ok") == b"ok"
    stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = guarded.unary_stream(SERVER_STREAM)
    assert list(stream(b"n:2")) == [b"m0", b"m1"]
    assert tracing.seen == [UNARY, SERVER_STREAM]
    trip(lambda: unary(b"fail:UNAVAILABLE"), registry, UNARY)
    before = server.count(UNARY)
    with pytest.raises(CallNotPermittedError):
        unary(b"ok")
    # The breaker refused before the inner interceptor: it saw no rejected call.
    assert tracing.seen == [UNARY, SERVER_STREAM, UNARY, UNARY]
    assert server.count(UNARY) == before


def test_an_interceptor_around_the_guarded_channel_sees_its_rejections(
    channel: grpc.Channel, registry: BreakerRegistry
) -> None:
    tracing = Tracing()
    outer = grpc.intercept_channel(guarded_channel(channel, registry), tracing)
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = outer.unary_unary(UNARY)
    trip(lambda: unary(b"fail:UNAVAILABLE"), registry, UNARY)
    with pytest.raises(grpc.RpcError) as rejected:
        unary(b"ok")
    assert isinstance(rejected.value, CallNotPermittedError)
    assert rejected.value.code() is grpc.StatusCode.UNAVAILABLE
    assert tracing.seen == [UNARY] * 3


def test_every_calling_form_counts_once(channel: grpc.Channel, registry: BreakerRegistry) -> None:
    guarded = guarded_channel(channel, registry)
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = guarded.unary_unary(UNARY)
    assert unary(b"a") == b"a"
    response, call = unary.with_call(b"b")
    assert (response, call.code()) == (b"b", grpc.StatusCode.OK)
    assert unary.future(b"c").result() == b"c"
    client_stream: grpc.StreamUnaryMultiCallable[bytes, bytes] = guarded.stream_unary(CLIENT_STREAM)
    assert client_stream(iter([b"d"])) is not None
    client_stream.with_call(iter([b"e"]))
    client_stream.future(iter([b"f"])).result()
    stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = guarded.unary_stream(SERVER_STREAM)
    assert list(stream(b"n:3")) == [b"m0", b"m1", b"m2"]
    bidi: grpc.StreamStreamMultiCallable[bytes, bytes] = guarded.stream_stream(BIDI)
    assert list(bidi(iter([b"x", b"y"]))) == [b"x", b"y"]
    counts = {
        method: registry.get(method).snapshot().successful
        for method in (UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI)
    }
    assert counts == {UNARY: 3, CLIENT_STREAM: 3, SERVER_STREAM: 1, BIDI: 1}


def test_a_blocking_call_the_breaker_admits_freely_makes_no_permit(
    channel: grpc.Channel, registry: BreakerRegistry, permits_made: list[Permit]
) -> None:
    """The hot path's speed trick (admit_free): a Permit only where one is owed something back."""
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = guarded_channel(
        channel, registry
    ).unary_unary(UNARY)
    for _ in range(3):
        assert unary(b"a") == b"a"
    assert permits_made == [], "a success admitted freely made a Permit"
    with pytest.raises(grpc.RpcError):
        unary(b"fail:INTERNAL")
    assert len(permits_made) == 1  # made after the call to report a status not OK (permit_for)
    unary.with_call(b"b")  # a call object to hand back: the interceptor's path, with a Permit
    assert len(permits_made) == 2
    registry.get(UNARY).transition_to_half_open()
    assert unary(b"c") == b"c"  # a probe holds a place: a Permit gives it back
    assert len(permits_made) == 3
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.successful, snapshot.failed) == (5, 1)


def test_a_generated_stub_s_registered_methods_are_guarded(
    channel: grpc.Channel, registry: BreakerRegistry
) -> None:
    # Stubs generated by grpcio-tools pass _registered_method=True.
    guarded: Any = guarded_channel(channel, registry)
    unary = guarded.unary_unary(UNARY, None, None, _registered_method=True)
    assert unary(b"hi") == b"hi"
    assert registry.get(UNARY).snapshot().successful == 1


class WithoutRegisteredMethods(grpc.Channel):
    """A channel wrapper written before grpc added `_registered_method` to the four factories."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def unary_unary(self, method: str, serializer: Any = None, deserializer: Any = None) -> Any:
        return self._channel.unary_unary(method, serializer, deserializer)

    def unary_stream(self, method: str, serializer: Any = None, deserializer: Any = None) -> Any:
        return self._channel.unary_stream(method, serializer, deserializer)

    def stream_unary(self, method: str, serializer: Any = None, deserializer: Any = None) -> Any:
        return self._channel.stream_unary(method, serializer, deserializer)

    def stream_stream(self, method: str, serializer: Any = None, deserializer: Any = None) -> Any:
        return self._channel.stream_stream(method, serializer, deserializer)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()


def test_a_channel_wrapper_without_registered_methods_is_guarded(
    channel: grpc.Channel, registry: BreakerRegistry
) -> None:
    # _registered_method is passed on only when a stub sets it: a wrapper may not take it.
    guarded: Any = guarded_channel(WithoutRegisteredMethods(channel), registry)
    assert guarded.unary_unary(UNARY)(b"a") == b"a"
    assert list(guarded.unary_stream(SERVER_STREAM)(b"n:1")) == [b"m0"]
    assert guarded.stream_unary(CLIENT_STREAM)(iter([b"b"])) == b"count:1"
    assert list(guarded.stream_stream(BIDI)(iter([b"c"]))) == [b"c"]
    successful = {
        method: registry.get(method).snapshot().successful
        for method in (UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI)
    }
    assert set(successful.values()) == {1}


def test_the_channel_api_reaches_the_wrapped_channel(
    channel: grpc.Channel, registry: BreakerRegistry
) -> None:
    states: list[grpc.ChannelConnectivity] = []
    with guarded_channel(channel, registry) as guarded:
        assert isinstance(guarded, GuardedChannel) and guarded.registry is registry
        guarded.subscribe(states.append, try_to_connect=True)
        unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = guarded.unary_unary(UNARY)
        assert unary(b"up") == b"up"
        assert wait_until(lambda: grpc.ChannelConnectivity.READY in states)
        guarded.unsubscribe(states.append)
    with pytest.raises(ValueError):  # closed with the guarded one
        closed: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        closed(b"closed")


def test_closing_the_guarded_channel_closes_the_wrapped_one(
    channel: grpc.Channel, registry: BreakerRegistry
) -> None:
    guarded_channel(channel, registry).close()
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
    with pytest.raises(ValueError, match="closed channel"):
        unary(b"closed")


def test_what_is_not_a_channel_is_refused(registry: BreakerRegistry) -> None:
    with pytest.raises(TypeError, match=r"channel must be a grpc\.Channel, got str"):
        guarded_channel("localhost:50051", registry)  # type: ignore[arg-type]


def _both_paths(channel: grpc.Channel, registry: BreakerRegistry) -> list[grpc.Channel]:
    """`channel` guarded through grpc.intercept_channel and through guarded_channel."""
    return [
        grpc.intercept_channel(channel, BreakerInterceptor(registry)),
        guarded_channel(channel, registry),
    ]


def test_what_is_raised_below_comes_back_as_intercept_channel_hands_it(
    channel: grpc.Channel, registry: BreakerRegistry, server: BytesServer
) -> None:
    below = RaisingBelow(LookupError("raised below the breaker"))
    lower = grpc.intercept_channel(channel, below)
    for guarded in _both_paths(lower, registry):
        unary: Any = guarded.unary_unary(UNARY)
        with pytest.raises(LookupError):
            unary(b"x")
        future = unary.future(b"x")
        streams: Any = guarded.unary_stream(SERVER_STREAM)
        stream = streams(b"n:1")
        for call in (future, stream):  # a finished call that says INTERNAL and raises the error
            assert call.done() and call.code() is grpc.StatusCode.INTERNAL
            assert call.details() == "Exception raised while intercepting the RPC"
        assert future.exception() is below.error
        with pytest.raises(LookupError):
            next(stream)
        with pytest.raises(LookupError):
            for _ in stream:  # iterated: the same error
                pass
    assert below.calls == 6 and server.total() == 0
    for method in (UNARY, SERVER_STREAM):
        snapshot = registry.get(method).snapshot()
        assert (snapshot.failed, snapshot.successful) == (0, 0)


def test_a_closed_channel_fails_alike_on_both_paths(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    for path in range(2):
        closed = grpc.insecure_channel(server.target)
        closed.close()
        guarded = _both_paths(closed, registry)[path]
        unary: Any = guarded.unary_unary(UNARY)
        with pytest.raises(ValueError, match="closed channel"):
            unary(b"x")
        future = unary.future(b"x")
        streams: Any = guarded.unary_stream(SERVER_STREAM)
        stream = streams(b"n:1")
        for call in (future, stream):  # grpc's words for an exception raised while intercepting
            assert call.code() is grpc.StatusCode.INTERNAL
            assert call.details() == "Exception raised while intercepting the RPC"
        error = future.exception()
        assert isinstance(error, ValueError)
        assert future.traceback() is error.__traceback__ is not None  # where it was raised
        with pytest.raises(ValueError, match="Channel closed"):
            next(stream)
        with pytest.raises(ValueError, match="Channel closed"):
            for _ in stream:  # iterated: the same error, not a TypeError from iter()
                pass
    unary_snapshot = registry.get(UNARY).snapshot()
    assert (unary_snapshot.ignored, unary_snapshot.failed) == (4, 0)
