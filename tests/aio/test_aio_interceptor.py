"""breaker_interceptors on grpc.aio channels against a real server: issue 3, "Must hold"."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker._adapter.guard import Guard
from meshbreaker.aio import (
    AioBreakerInterceptor,
    GuardedChannel,
    RejectedError,
    breaker_interceptors,
)
from meshbreaker.config import State
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ConfigError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.grpc.broken_registries import BROKEN_REGISTRIES, UnclassifiableRegistry
from tests.grpc.bytes_server import (
    BIDI,
    CLIENT_STREAM,
    CONFIG,
    OTHER,
    PATIENT,
    SERVER_STREAM,
    TRAILER,
    UNARY,
    BytesServer,
)

# The documented defaults, spelled out: a test that read them from the config could not fail.
FAILURE_CODES = {
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "UNKNOWN",
    "DATA_LOSS",
    "RESOURCE_EXHAUSTED",
}


class Client:
    """Multi-callables for the four test methods on one aio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        self.other: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(OTHER)
        self.server_stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            SERVER_STREAM
        )
        self.client_stream: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            CLIENT_STREAM
        )
        self.bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(BIDI)


Connect = Callable[..., Client]
Stream = grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]


@pytest.fixture(params=["interceptors", "guarded_channel"])
async def connect(server: BytesServer, request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """connect(interceptors=None) -> Client on a fresh aio channel to the test server.

    Each test runs twice: with breaker_interceptors on the channel, and with their Guard on a
    GuardedChannel, which must behave exactly alike.
    """
    channels: list[grpc.aio.Channel] = []

    def make(interceptors: Any = None) -> Client:
        guards: set[Guard] = {
            interceptor._guard
            for interceptor in interceptors or ()
            if isinstance(interceptor, AioBreakerInterceptor)
        }
        channel: grpc.aio.Channel
        only_breakers = all(isinstance(i, AioBreakerInterceptor) for i in interceptors or ())
        if request.param == "guarded_channel" and only_breakers and len(guards) == 1:
            channel = GuardedChannel(grpc.aio.insecure_channel(server.target), guards.pop())
        else:
            channel = grpc.aio.insecure_channel(server.target, interceptors=interceptors)
        channels.append(channel)
        return Client(channel)

    yield make
    for channel in channels:
        await channel.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `predicate` while letting the event loop run."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def outcome(fn: Callable[[], Awaitable[Any]]) -> Any:
    """What a caller observes: the value, or the error's code, details and trailers."""
    try:
        return ("ok", await fn())
    except grpc.aio.AioRpcError as error:
        return ("error", error.code(), error.details(), tuple(error.trailing_metadata() or ()))


async def collect(stream: Any) -> list[Any]:
    return [message async for message in stream]


async def trip(client: Client, registry: BreakerRegistry, method: str = UNARY) -> None:
    """Opens the breaker of `method` with two UNAVAILABLE answers."""
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        UNARY: lambda: client.unary(b"fail:UNAVAILABLE"),
        SERVER_STREAM: lambda: collect(client.server_stream(b"fail-after:0:UNAVAILABLE")),
        CLIENT_STREAM: lambda: client.client_stream(iter([b"fail:UNAVAILABLE"])),
        BIDI: lambda: collect(client.bidi(iter([b"fail:UNAVAILABLE"]))),
    }
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await calls[method]()
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    await wait_for(lambda: registry.get(method).state is State.OPEN)


async def entered(server: BytesServer, count: int) -> None:
    """Waits until `count` more calls have entered the server."""
    for _ in range(count):
        assert await asyncio.to_thread(server.entered.acquire, True, 2)


# ----- closed: everything reaches the caller exactly as without the interceptor ----------------


async def call_api(call: Any) -> Any:
    await call
    return (await call.code(), await call.details(), tuple(await call.trailing_metadata()))


async def read_all(call: Any) -> list[Any]:
    return [await call.read() for _ in range(3)]


async def write_then_read(call: Any) -> list[Any]:
    await call.write(b"a")
    first = await call.read()
    await call.done_writing()
    return [first, await call.read(), await call.code()]


async def write_then_await(call: Any) -> Any:
    await call.write(b"a")
    await call.write(b"b")
    await call.done_writing()
    return await call


def scenarios(client: Client) -> list[Callable[[], Awaitable[Any]]]:
    return [
        lambda: client.unary(b"hello"),
        lambda: client.unary(b"fail:NOT_FOUND"),
        lambda: client.unary(b"fail:UNAVAILABLE"),
        lambda: call_api(client.unary(b"hello")),
        lambda: collect(client.server_stream(b"n:3")),
        lambda: collect(client.server_stream(b"fail-after:2:UNAVAILABLE")),
        lambda: read_all(client.server_stream(b"n:2")),
        lambda: client.client_stream(iter([b"a", b"b", b"c"])),
        lambda: client.client_stream(iter([b"a", b"fail:PERMISSION_DENIED"])),
        lambda: write_then_await(client.client_stream()),
        lambda: collect(client.bidi(iter([b"x", b"y"]))),
        lambda: collect(client.bidi(iter([b"x", b"fail:INTERNAL"]))),
        lambda: write_then_read(client.bidi()),
    ]


async def test_closed_breaker_is_invisible_to_the_caller(connect: Connect) -> None:
    plain = connect()
    guarded = connect(breaker_interceptors(BreakerRegistry(PATIENT)))
    expected = [await outcome(fn) for fn in scenarios(plain)]
    observed = [await outcome(fn) for fn in scenarios(guarded)]
    assert observed == expected
    assert ("ok", [b"m0", b"m1", b"m2"]) in observed
    assert ("ok", [b"m0", b"m1", grpc.aio.EOF]) in observed
    assert any(item[0] == "error" and TRAILER in item[3] for item in observed)


async def test_calls_do_not_wait_for_the_server_in_the_interceptor(
    connect: Connect, registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(breaker_interceptors(registry))
    call = client.unary(b"block")
    stream = client.server_stream(b"block")
    await entered(server, 2)
    assert not call.done()
    server.release.set()
    assert await call == b"block"
    assert await collect(stream) == [b"block"]
    snapshot = registry.get(UNARY).snapshot()
    assert snapshot.successful == 1


# ----- outcome by status -----------------------------------------------------------------------


async def test_cancelled_call_is_ignored(
    connect: Connect, registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(breaker_interceptors(registry))
    call = client.unary(b"block")
    await entered(server, 1)
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_for(lambda: registry.get(UNARY).snapshot().ignored == 1)
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.failed, snapshot.successful) == (0, 0)


async def test_codes_from_the_config_and_from_the_interceptor(
    connect: Connect, clock: FakeClock
) -> None:
    by_config = BreakerRegistry(CONFIG, clock=clock)
    by_config.set_policy(
        UNARY, CONFIG.replace(failure_codes={"NOT_FOUND"}, ignored_codes={"ABORTED"})
    )
    by_interceptor = BreakerRegistry(CONFIG, clock=clock)
    clients = [
        connect(breaker_interceptors(by_config)),
        connect(
            breaker_interceptors(
                by_interceptor, failure_codes=["NOT_FOUND"], ignored_codes=[grpc.StatusCode.ABORTED]
            )
        ),
    ]
    for client in clients:
        for request in (b"fail:NOT_FOUND", b"fail:ABORTED", b"fail:UNAVAILABLE"):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.unary(request)
            assert raised.value.code().name == request.decode().removeprefix("fail:")
    for registry in (by_config, by_interceptor):
        snapshot = registry.get(UNARY).snapshot()
        assert (snapshot.failed, snapshot.ignored, snapshot.successful) == (1, 1, 1)


async def test_slow_means_total_time_for_unary_and_first_message_for_streams(
    connect: Connect, registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(breaker_interceptors(registry))
    assert await client.unary(b"tick") == b"tick"  # the server advances the fake clock by 10 s
    assert await client.unary(b"fast") == b"fast"
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.successful, snapshot.slow) == (2, 1)
    stream = client.server_stream(b"long-lived")
    assert await stream.read() == b"m0"
    server.release.set()  # 10 s pass between m0 and m1: a long-lived stream is not slow
    assert await collect(stream) == [b"m1", b"m2"]
    assert (
        registry.get(SERVER_STREAM).snapshot().successful,
        registry.get(SERVER_STREAM).snapshot().slow,
    ) == (1, 0)
    assert await collect(client.server_stream(b"tick-first")) == [b"m0"]
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.successful, snapshot.slow) == (2, 1)


# ----- open: the server is never contacted ------------------------------------------------------


def assert_rejection(error: BaseException, method: str) -> None:
    assert isinstance(error, grpc.aio.AioRpcError)
    assert isinstance(error, CallNotPermittedError)
    assert (error.name, error.state) == (method, State.OPEN)
    assert str(error) == f"circuit breaker '{method}' is OPEN; next probe in 30.000s"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.args, copy.code()) == (type(error), error.args, error.code())
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    details = error.details() or ""
    assert method in details and "OPEN" in details and "30.000s" in details
    assert tuple(error.trailing_metadata()) == (("x-meshbreaker-state", "OPEN"),)


async def test_open_unary_rejects_without_the_server(
    connect: Connect, registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(breaker_interceptors(registry))
    await trip(client, registry)
    before = server.total()
    with pytest.raises(RejectedError) as raised:
        await client.unary(b"hello")
    assert_rejection(raised.value, UNARY)
    call = client.unary(b"hello")
    assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert UNARY in await call.details()
    assert tuple(await call.trailing_metadata()) == (("x-meshbreaker-state", "OPEN"),)
    assert call.done()
    with pytest.raises(CallNotPermittedError):
        await call
    assert server.total() == before
    assert registry.get(UNARY).snapshot().rejected == 2


@pytest.mark.parametrize("method", [SERVER_STREAM, CLIENT_STREAM, BIDI])
async def test_open_streams_raise_on_first_read_without_the_server(
    connect: Connect, registry: BreakerRegistry, server: BytesServer, method: str
) -> None:
    client = connect(breaker_interceptors(registry))
    await trip(client, registry, method)
    before = server.total()
    errors: list[BaseException] = []
    stream: Stream
    for attempt in range(2):
        try:
            if method == SERVER_STREAM:
                stream = client.server_stream(b"n:3")
                await (stream.read() if attempt else collect(stream))
            elif method == CLIENT_STREAM:
                await client.client_stream(iter([b"a"]))
            else:
                stream = client.bidi()
                await stream.read() if attempt else await collect(client.bidi(iter([b"a"])))
        except grpc.aio.AioRpcError as error:
            errors.append(error)
    assert len(errors) == 2
    for rejection in errors:
        assert_rejection(rejection, method)
    assert server.total() == before


# ----- half-open ----------------------------------------------------------------------------------


async def test_half_open_lets_at_most_two_of_twenty_concurrent_probes_through(
    connect: Connect, registry: BreakerRegistry, server: BytesServer, clock: FakeClock
) -> None:
    client = connect(breaker_interceptors(registry))
    await trip(client, registry)
    clock.advance(31)
    before = server.count(UNARY)
    server.expect_entries()
    probes = [asyncio.ensure_future(outcome(lambda: client.unary(b"block"))) for _ in range(20)]
    await entered(server, 2)
    await wait_for(lambda: sum(p.done() for p in probes) == 18)
    assert server.count(UNARY) - before == 2
    server.release.set()
    observed = await asyncio.gather(*probes)
    assert observed.count(("ok", b"block")) == 2
    assert server.count(UNARY) - before == 2
    assert registry.get(UNARY).state is State.CLOSED


# ----- streams ------------------------------------------------------------------------------------


async def test_a_thousand_cancelled_streams_leak_no_permit(
    connect: Connect, registry: BreakerRegistry, clock: FakeClock
) -> None:
    client = connect(breaker_interceptors(registry))
    await trip(client, registry, SERVER_STREAM)
    clock.advance(31)  # half-open: only 2 permits may be in flight, so one leak would block probes
    for _ in range(1000):
        stream = client.server_stream(b"forever")
        assert await stream.read() == b"m0"
        assert stream.cancel()
    breaker = registry.get(SERVER_STREAM)
    snapshot = breaker.snapshot()
    assert snapshot.state is State.HALF_OPEN
    assert (snapshot.half_open_in_flight, snapshot.ignored, snapshot.rejected) == (0, 1000, 0)
    assert await collect(client.server_stream(b"n:1")) == [b"m0"]
    assert breaker.state is State.CLOSED


async def test_abandoned_streams_release_their_permits_when_they_end(
    connect: Connect, registry: BreakerRegistry, clock: FakeClock
) -> None:
    # grpc.aio keeps a stream the caller stops reading running (the channel holds it) until it
    # ends; the permit is held exactly that long. Closing the channel cancels them: ignored.
    client = connect(breaker_interceptors(registry))
    streams = [client.server_stream(b"forever") for _ in range(20)]
    for stream in streams:
        async for _ in stream:
            break
    del stream, streams
    await client.channel.close()
    breaker = registry.get(SERVER_STREAM)
    await wait_for(lambda: breaker.snapshot().ignored == 20)
    assert breaker.snapshot().failed == 0
    client = connect(breaker_interceptors(registry))
    await trip(client, registry, SERVER_STREAM)
    clock.advance(31)
    assert await collect(client.server_stream(b"n:1")) == [b"m0"]
    assert breaker.state is State.CLOSED


# ----- deadlines, isolation, naming ---------------------------------------------------------------


# ----- fallbacks and bulkhead ---------------------------------------------------------------------


async def test_fallbacks_for_rejected_and_failed_calls(
    connect: Connect, registry: BreakerRegistry, server: BytesServer
) -> None:
    seen: list[BaseException] = []

    def fallback(request: Any, error: BaseException) -> bytes:
        seen.append(error)
        return b"cached"

    client = connect(
        breaker_interceptors(registry, fallbacks={UNARY: fallback, CLIENT_STREAM: fallback})
    )
    await trip(client, registry)
    await trip(client, registry, CLIENT_STREAM)
    before = server.total()
    assert await client.unary(b"q") == b"cached"
    call = client.client_stream(iter([b"a"]))
    assert await call == b"cached"
    assert await call.code() is grpc.StatusCode.OK
    assert ("x-meshbreaker-fallback", "rejected") in tuple(await call.trailing_metadata())
    assert server.total() == before
    assert all(isinstance(error, CallNotPermittedError) for error in seen)

    def after_failure(request: bytes, error: BaseException) -> bytes:
        seen.append(error)  # checked outside: the interceptor catches what a fallback raises
        code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "?"
        return b"after " + code.encode()

    on_failure = connect(
        breaker_interceptors(
            BreakerRegistry(PATIENT),
            fallbacks={
                UNARY: after_failure,
                CLIENT_STREAM: lambda r, e: b"stream fallback",
            },
            fallback_on_failure=True,
        )
    )
    assert await on_failure.unary(b"fail:INTERNAL") == b"after INTERNAL"
    assert isinstance(seen[-1], grpc.aio.AioRpcError)
    writer = on_failure.client_stream()
    await writer.write(b"fail:DATA_LOSS")
    await writer.done_writing()
    assert await writer == b"stream fallback"
    assert await writer.code() is grpc.StatusCode.OK
    assert await on_failure.client_stream(iter([b"a"])) == b"count:1"
    with pytest.raises(grpc.aio.AioRpcError) as not_a_failure:
        await on_failure.unary(b"fail:NOT_FOUND")
    assert not_a_failure.value.code() is grpc.StatusCode.NOT_FOUND
    assert await on_failure.unary(b"fine") == b"fine"
    without = connect(breaker_interceptors(BreakerRegistry(CONFIG), fallbacks={UNARY: fallback}))
    answered = len(seen)
    with pytest.raises(grpc.aio.AioRpcError) as unanswered:
        await without.unary(b"fail:INTERNAL")
    assert unanswered.value.code() is grpc.StatusCode.INTERNAL and len(seen) == answered


async def test_fallback_on_failure_never_hides_the_error_when_classifying_fails(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(
        breaker_interceptors(
            UnclassifiableRegistry(CONFIG),
            fallbacks={UNARY: lambda r, e: b"fallback"},
            fallback_on_failure=True,
        )
    )
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.unary(b"fail:INTERNAL")
    assert raised.value.code() is grpc.StatusCode.INTERNAL  # the caller's own error, untouched
    assert any("classifying a failed call failed" in r.getMessage() for r in caplog.records)


async def test_bulkhead_rejects_beyond_max_concurrent_calls(
    connect: Connect, clock: FakeClock, server: BytesServer
) -> None:
    registry = BreakerRegistry(CONFIG.replace(max_concurrent_calls=2), clock=clock)
    client = connect(breaker_interceptors(registry))
    in_flight = [client.unary(b"block") for _ in range(2)]
    await entered(server, 2)
    with pytest.raises(BulkheadFullError) as raised:
        await client.unary(b"x")
    assert isinstance(raised.value, grpc.aio.AioRpcError)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.count(UNARY) == 2
    server.release.set()
    assert [await call for call in in_flight] == [b"block", b"block"]
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.rejected, snapshot.failed, snapshot.successful) == (1, 0, 2)


# ----- meshbreaker's own failures never break the RPC ---------------------------------------------


@pytest.mark.parametrize("registry_class", BROKEN_REGISTRIES)
async def test_bookkeeping_errors_never_change_the_rpc(
    connect: Connect, caplog: pytest.LogCaptureFixture, registry_class: type[BreakerRegistry]
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshbreaker")
    plain = connect()
    guarded = connect(breaker_interceptors(registry_class(CONFIG)))
    expected = [await outcome(fn) for fn in scenarios(plain)]
    assert [await outcome(fn) for fn in scenarios(guarded)] == expected
    assert any(record.name.startswith("meshbreaker") for record in caplog.records)


def test_one_interceptor_per_kind_sharing_one_registry() -> None:
    registry = BreakerRegistry()
    interceptors = breaker_interceptors(registry)
    kinds = [
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    ]
    for interceptor, kind in zip(interceptors, kinds, strict=True):
        assert isinstance(interceptor, kind)
        assert sum(isinstance(interceptor, other) for other in kinds) == 1
        assert isinstance(interceptor, AioBreakerInterceptor)
        assert interceptor.registry is registry
    with pytest.raises(ConfigError, match="fallbacks"):
        breaker_interceptors(fallbacks={"nope": lambda r, e: r})


async def test_every_call_counts_exactly_once_under_concurrency(
    connect: Connect, clock: FakeClock
) -> None:
    registry = BreakerRegistry(PATIENT, clock=clock)
    client = connect(breaker_interceptors(registry))

    async def work(index: int) -> None:
        fail = index % 3 == 0
        await outcome(lambda: client.unary(b"fail:INTERNAL" if fail else b"ok"))
        await outcome(
            lambda: collect(client.server_stream(b"fail-after:1:INTERNAL" if fail else b"n:2"))
        )
        await outcome(lambda: collect(client.bidi(iter([b"fail:INTERNAL" if fail else b"ok"]))))

    await asyncio.gather(*(work(index) for index in range(60)))
    methods = (UNARY, SERVER_STREAM, BIDI)
    # A call's outcome is recorded by its done-callback, which the loop may run after the
    # awaiting task has resumed: wait for the last ones, then check each was counted once.
    # A rejection is no outcome: counting it too, a tripped breaker fails the check below
    # instead of the wait.
    await wait_for(
        lambda: all((s := registry.get(m).snapshot()).total + s.rejected >= 60 for m in methods)
    )
    for method in methods:
        snapshot = registry.get(method).snapshot()
        assert (snapshot.rejected, snapshot.total, snapshot.failed, snapshot.successful) == (
            0,
            60,
            20,
            40,
        )
